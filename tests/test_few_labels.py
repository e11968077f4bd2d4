"""Little labelled data: data.labels_per_class keeps K images per class outside the held-out split, and
`ganorch augment-eval` measures what a generator's samples add to a classifier trained on them."""

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from gan_models import build_models
from orchestrator import cli
from orchestrator.data import splits
from orchestrator.data.sources import ImageFolderDataset, ToModelImage, labelled_subset, load_dataset
from orchestrator.spec import DataSpec, ModelSpec, SpecError, load
from orchestrator.track import generator_model, store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist():
    return load_dataset(DataSpec("mnist5k"), ModelSpec())


def test_labels_per_class_keeps_exactly_k_of_each_class_outside_the_held_out_split(mnist):
    kept = labelled_subset(DataSpec("mnist5k", labels_per_class=7), mnist, seed=0)
    labels = mnist.tensors[1]
    assert torch.bincount(labels[kept]).tolist() == [7] * 10 and len(set(kept.tolist())) == 70
    train, held_out = splits.classifier_split(mnist, seed=0)
    assert set(kept.tolist()) <= set(train.tolist()) and not set(kept.tolist()) & set(held_out.tolist())
    assert torch.equal(labelled_subset(DataSpec("mnist5k", labels_per_class=7), mnist, seed=0), kept), "seeded"
    assert not torch.equal(labelled_subset(DataSpec("mnist5k", labels_per_class=7), mnist, seed=1), kept)
    # a larger K keeps the smaller K's images and more: the rows of a table at several K compare
    assert set(kept.tolist()) <= set(labelled_subset(DataSpec("mnist5k", labels_per_class=20), mnist, seed=0).tolist())
    # every image of the smallest class outside the held-out split, and not one more
    most = min(int((labels[train] == c).sum()) for c in range(10))
    assert len(labelled_subset(DataSpec("mnist5k", labels_per_class=most), mnist, seed=0)) == 10 * most
    with pytest.raises(ValueError, match=rf"data.labels_per_class: got {most + 1}; .* at most {most}"):
        labelled_subset(DataSpec("mnist5k", labels_per_class=most + 1), mnist, seed=0)
    training = splits.keep(mnist, kept)
    assert isinstance(training, TensorDataset) and torch.equal(training.tensors[0], mnist.tensors[0][kept])


def test_g_trains_on_the_kept_images_alone(process_group, mnist):
    """What the per-worker loop draws its batches from is the kept images, not the dataset they were kept from."""
    from orchestrator.train.build import build
    from orchestrator.train.loop import WorkerContext

    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "data.labels_per_class=3"])
    t = build(spec, WorkerContext(torch.device("cpu")), None)
    kept = labelled_subset(spec.data, mnist, spec.seed)
    assert len(kept) == 30 and torch.equal(t.source.dataset.tensors[0], mnist.tensors[0][kept])
    images, labels = next(t.batches)
    rows = {tuple(row.flatten().tolist()) for row in mnist.tensors[0][kept]}
    assert len(images) == 16 and all(tuple(image.flatten().tolist()) in rows for image in images)


def test_over_the_classifiers_limit_k_is_drawn_from_every_image_outside_the_held_out_split(mnist, monkeypatch):
    """Data larger than the domain classifier's subset: the images that subset left out can be kept too."""
    from orchestrator.data.record import dataset_record

    monkeypatch.setattr(splits, "MAX_TRAIN_IMAGES", 3000)
    train, held_out = splits.classifier_split(mnist, seed=0)
    kept = labelled_subset(DataSpec("mnist5k", labels_per_class=300), mnist, seed=0)  # the 2,700 of train: too few
    assert torch.bincount(mnist.tensors[1][kept]).tolist() == [300] * 10
    assert not set(kept.tolist()) & set(held_out.tolist()) and set(kept.tolist()) - set(train.tolist())
    assert set(labelled_subset(DataSpec("mnist5k", labels_per_class=100), mnist, seed=0).tolist()) <= set(kept.tolist())
    # what the run's dataset input says, with K and without
    profile = json.loads(dataset_record(DataSpec("mnist5k", labels_per_class=300), ModelSpec(), mnist, kept)["profile"])
    assert profile == {"images": 3000, "labels_per_class": 300, "classes": 10, "image_shape": [1, 28, 28]}
    assert json.loads(dataset_record(DataSpec("mnist5k"), ModelSpec(), mnist)["profile"]) == \
        {"images": 5000, "classes": 10, "image_shape": [1, 28, 28]}


def test_a_folders_labels_are_read_without_decoding_its_images(tmp_path, monkeypatch):
    from PIL import Image

    for label, count in (("cat", 6), ("dog", 3)):
        (tmp_path / label).mkdir()
        for i in range(count):
            Image.new("L", (8, 8), color=i * 20).save(tmp_path / label / f"{i}.png")
    folder = ImageFolderDataset(tmp_path, ToModelImage(8, 1))
    monkeypatch.setattr(ImageFolderDataset, "__getitem__", lambda *_: pytest.fail("an image was decoded"))
    kept = labelled_subset(DataSpec("folder", path=str(tmp_path), labels_per_class=2), folder, seed=0)
    assert sorted(folder.labels[i] for i in kept) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="data.labels_per_class: got 3; .*class dog has 2"):
        labelled_subset(DataSpec("folder", path=str(tmp_path), labels_per_class=3), folder, seed=0)
    (tmp_path / "flat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="data.labels_per_class: the data has a single class"):
        labelled_subset(DataSpec("folder", path=str(tmp_path / "flat"), labels_per_class=1),
                        ImageFolderDataset(tmp_path / "flat", ToModelImage(8, 1)), seed=0)


def test_too_many_labels_per_class_stop_the_run_before_it_starts_with_exit_2(capsys):
    assert cli.main(["run", str(REPO / "jobs/quickstart.yaml"), "--dry-run", "--set", "data.labels_per_class=500"]) == 2
    assert "data.labels_per_class: got 500;" in capsys.readouterr().err
    with pytest.raises(SpecError, match="data.labels_per_class.*ray-data"):
        load(REPO / "jobs/quickstart.yaml", ["data.source=ray-data", "data.path=/tmp", "data.labels_per_class=5"])
    with pytest.raises(SpecError, match="data.labels_per_class"):
        load(REPO / "jobs/quickstart.yaml", ["data.labels_per_class=0"])


def logged_generator(uri: str, tmp_path: Path, labels_per_class: int | None) -> str:
    """A run holding a tiny conditional generator model trained (so its metadata says) on mnist5k with
    `labels_per_class`; the run's id."""
    spec = load(REPO / "jobs/quickstart.yaml", [f"data.labels_per_class={labels_per_class or 'null'}"])
    torch.manual_seed(0)
    G, _ = build_models("dcgan", latent_dim=spec.model.latent_dim, image_size=28, channels=1, g_width=4, d_width=4,
                        num_classes=10)
    client = store.client(uri)
    run_id = client.create_run(client.create_experiment(f"gan-{tmp_path.name}")).info.run_id
    folder = generator_model.save(G.eval(), tmp_path / "model", latent_dim=spec.model.latent_dim, num_classes=10,
                                  image_shape=(1, 28, 28), metadata={"spec": spec.to_dict(), "step": 9})
    generator_model.log_folder(uri, run_id, folder, generator_model.MODEL_NAME, 9)
    return run_id


def test_augment_eval_writes_a_run_nested_under_the_generators_with_both_accuracies(tmp_path, mlflow_store, capsys):
    run_id = logged_generator(mlflow_store, tmp_path, labels_per_class=5)
    args = ["--synthetic-per-class", "6", "--seeds", "2", "--steps", "15"]
    assert cli.main(["augment-eval", run_id, *args]) == 0
    out = capsys.readouterr().out
    assert "5 real images per class, + 6 synthetic; 2 seeds (the same real images" in out, out
    client = store.client(mlflow_store)
    (run,) = client.search_runs([client.get_run(run_id).info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
    assert f"MLflow run {run.info.run_id} nested under {run_id}" in out
    metrics, params = run.data.metrics, run.data.params
    what, result = run.data.tags["mlflow.note.content"].splitlines()
    assert what.startswith("A classifier trained on 5 real images per class, and on them plus 6 per class of "
                           "models:/") and "(step 9; by count), 2 seeds of 15 steps, scored on 500" in what, what
    assert result == (f"Real only {metrics['real_only_accuracy_mean']:.4f} +- {metrics['real_only_accuracy_std']:.4f}; "
                      f"real + synthetic {metrics['augmented_accuracy_mean']:.4f} +- "
                      f"{metrics['augmented_accuracy_std']:.4f} ({metrics['accuracy_gain']:+.4f}).")
    for arm in ("real_only", "augmented"):
        history = client.get_metric_history(run.info.run_id, f"{arm}_accuracy_by_seed")
        assert [m.step for m in history] == [0, 1] and all(0 <= m.value <= 1 for m in history), history
        assert metrics[f"{arm}_accuracy_mean"] == pytest.approx(sum(m.value for m in history) / 2)
        assert metrics[f"{arm}_accuracy_std"] >= 0
    assert metrics["accuracy_gain"] == pytest.approx(metrics["augmented_accuracy_mean"]
                                                     - metrics["real_only_accuracy_mean"])
    assert (params["labels_per_class"], params["gan_labels_per_class"], params["synthetic_per_class"]) == \
        ("5", "5", "6") and "real_fraction" not in params and "truncation" not in params
    results = json.loads(Path(client.download_artifacts(run.info.run_id, "augment_eval.json", tmp_path)).read_text())
    assert len(results["real_only_accuracy"]) == len(results["augmented_accuracy"]) == 2

    # a set mix, and a K of its own; a generator trained on every image needs --labels-per-class
    assert cli.main(["augment-eval", run_id, *args, "--real-fraction", "0.5", "--labels-per-class", "3"]) == 0
    assert "3 real images per class (50% of each batch), + 6 synthetic" in capsys.readouterr().out
    every = logged_generator(mlflow_store, tmp_path / "every", labels_per_class=None)
    assert cli.main(["augment-eval", every, *args]) == 2
    assert "--labels-per-class: the generator trained on every labelled image" in capsys.readouterr().err
    assert cli.main(["augment-eval", every, *args, "--labels-per-class", "2"]) == 0
    assert "note: the generator trained on every image, the held-out ones the classifiers are scored on included" in \
        capsys.readouterr().out
    (every_run,) = client.search_runs([client.get_run(every).info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{every}'")
    assert every_run.data.params["held_out_seen_by_generator"] == "True"
    assert run.data.params["held_out_seen_by_generator"] == "False"
    for flag, value, message in (("--real-fraction", "1", "between 0 and 1"), ("--seeds", "0", "between 1 and 100"),
                                 ("--labels-per-class", "500", "--labels-per-class: got 500;"),
                                 ("--set", "data.labels_per_class=3", "--set data.labels_per_class: the generator "
                                                                      "trained with 5")):
        assert cli.main(["augment-eval", run_id, *args, flag, value]) == 2
        assert message in capsys.readouterr().err
    # the data here must keep the images the run trained on, which its artifact lists
    trained_on = labelled_subset(DataSpec("mnist5k", labels_per_class=5), load_dataset(DataSpec("mnist5k"),
                                                                                       ModelSpec()), seed=0).tolist()
    client.log_text(run_id, json.dumps({"labels_per_class": 5, "seed": 0, "indices": trained_on}),
                    "data/labelled_indices.json")
    assert cli.main(["augment-eval", run_id, *args, "--seeds", "1"]) == 0
    client.log_text(run_id, json.dumps({"labels_per_class": 5, "seed": 0, "indices": list(range(50))}),
                    "data/labelled_indices.json")
    assert cli.main(["augment-eval", run_id, *args]) == 2
    assert "data: this data keeps other images for data.labels_per_class 5 than the generator's run trained on" in \
        capsys.readouterr().err


class RealDigits(torch.nn.Module):
    """A perfect conditional G: for each z a real digit of the class asked for, from the training side of the split
    (never a held-out one)."""

    def __init__(self, dataset):
        super().__init__()
        images, labels = splits.read(dataset, splits.classifier_split(dataset, seed=0)[0])
        self.by_class = [images[labels == c] for c in range(10)]

    def forward(self, z, labels):
        pick = (z[:, 0].abs() * 1e4).long()
        return torch.stack([self.by_class[c][i % len(self.by_class[c])] for c, i in zip(labels.tolist(), pick)])


def test_samples_as_good_as_real_digits_raise_the_accuracy_of_a_classifier_with_two_labels_a_class(mnist):
    from orchestrator.generate import augment_eval
    from orchestrator.generate.generator_source import Generator

    spec = load(REPO / "jobs/quickstart.yaml", ["data.labels_per_class=2"])
    G = Generator(RealDigits(mnist), spec.model.latent_dim, 10, (1, 28, 28), 0, "real digits", spec.to_dict())
    settings = augment_eval.Settings(synthetic_per_class=40, seeds=2, steps=150)
    out = augment_eval.evaluate(G, spec, settings, torch.device("cpu"))
    gain = out.metrics()["accuracy_gain"]
    # 20 real digits, then 400 more as "samples": on 2026-12-04 real only scored 0.612 and 0.530, with them 0.948 and
    # 0.938
    assert gain > 0.15 and min(out.augmented) > max(out.real_only), out
    with pytest.raises(ValueError, match="--set seed: the generator trained with 0"):
        augment_eval.evaluate(G, load(REPO / "jobs/quickstart.yaml", ["data.labels_per_class=2", "seed=1"]),
                              settings, torch.device("cpu"))
