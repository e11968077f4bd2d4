"""The `ray-data` source on real Ray Data and Ray Train: real MNIST digits written as PNG class folders.
Cloud URIs go through the same pyarrow filesystem calls as the local folders here (a file:// URI is tested)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator.data.ray_data import SkippedFiles, StreamedBatches, build_dataset, eval_sample, list_classes, survey
from orchestrator.data.sources import ImageFolderDataset, ToModelImage, load_mnist5k
from orchestrator.spec import parse
from orchestrator.track import store
from orchestrator.track.tags import TAG_CLASSIFIER, TAG_DATA_SKIPPED
from orchestrator.train import launch

PER_CLASS = 12


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """PER_CLASS real digits of each class as PNGs in class folders, one truncated PNG, one text file in a
    class folder and one image beside the class folders (which a class layout leaves out, as `folder` does)."""
    root = tmp_path_factory.mktemp("digits")
    images, labels = load_mnist5k()
    pixels = ((images + 1) * 127.5).round().to(torch.uint8).squeeze(1).numpy()
    for label in range(10):
        (root / str(label)).mkdir()
        for k, index in enumerate(torch.nonzero(labels == label).flatten()[:PER_CLASS].tolist()):
            Image.fromarray(pixels[index]).save(root / str(label) / f"{k}.png")
    (root / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "7" / "notes.txt").write_text("not an image")
    Image.fromarray(pixels[0]).save(root / "stray.png")
    return root


def test_survey_lists_without_decoding(digit_folder):
    found = survey(str(digit_folder))
    assert found.classes == [str(c) for c in range(10)]
    assert found.images == 10 * PER_CLASS + 1, "broken.png has an image suffix; it is found when decoded"
    assert found.other_files == 1
    assert found.describe() == "121 image files in 10 classes; 1 other files not read (streamed by Ray Data)"
    assert list_classes(f"file://{digit_folder}") == found.classes


def test_survey_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="data.path: no such directory"):
        survey(str(tmp_path / "missing"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="data.path: .*a.txt is a file"):
        survey(str(tmp_path / "a.txt"))
    with pytest.raises(ValueError, match="data.path: no image files under"):
        survey(str(tmp_path))
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match=r"no image files under .* in its class folders \(cats\)"):
        survey(str(tmp_path))
    with pytest.raises(ValueError, match="data.path: cannot open nosuch://bucket/x"):
        survey("nosuch://bucket/x")


def test_evaluation_sample_is_seeded_labelled_and_leaves_out_broken_files(digit_folder):
    sample = eval_sample(str(digit_folder), num_samples=10, image_size=28, channels=1, seed=3)
    images, labels = sample.tensors
    assert images.shape == (10 * PER_CLASS, 1, 28, 28), "every class image but broken.png (fewer than 5,000)"
    assert torch.equal(torch.bincount(labels), torch.full((10,), PER_CLASS))
    folder = ImageFolderDataset(digit_folder, ToModelImage(28, 1))
    by_label = {}
    for path, label in zip(folder.files, folder.labels):
        by_label.setdefault(label, []).append(as_pixels(ToModelImage(28, 1)(Image.open(path))[None])[0])
    for image, label in zip(images, labels.tolist()):
        assert as_pixels(image[None])[0] in by_label[label]
    again = eval_sample(f"file://{digit_folder}", num_samples=10, image_size=28, channels=1, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(sample.tensors, again.tensors))


def as_pixels(images: torch.Tensor) -> list[bytes]:
    return [image.numpy().tobytes() for image in images]


def test_stream_decodes_as_folder_does_and_skips_unreadable_images(ray_session, digit_folder):
    spec = parse({"name": "t", "model": {"image_size": 32, "channels": 3},
                  "data": {"source": "ray-data", "path": str(digit_folder)}})
    skipped = ray_session.remote(num_cpus=0)(SkippedFiles).remote()
    rows = build_dataset(spec, skipped).take_all()
    assert len(rows) == 10 * PER_CLASS
    assert all(row["image"].dtype == np.uint8 and row["image"].shape == (3, 32, 32) for row in rows)
    streamed = sorted((int(row["label"]), row["image"].tobytes()) for row in rows)
    folder = ImageFolderDataset(digit_folder, ToModelImage(32, 3))
    expected = sorted((label, ((image + 1) * 127.5).round().to(torch.uint8).numpy().tobytes())
                      for image, label in (folder[i] for i in range(len(folder))))
    assert streamed == expected, "the same images, classes and pixels as data.source 'folder'"
    assert ray_session.get(skipped.read.remote()) == [str(digit_folder / "3" / "broken.png")]


def rows(count: int):
    import ray.data

    return ray.data.from_items([{"image": np.full((1, 2, 2), 255 * (i % 2), np.uint8), "label": i}
                                for i in range(count)])


def test_streamed_batches_cycle_epochs_in_unit_range(ray_session):
    batches = iter(StreamedBatches(rows(8).iterator(), batch_size=4, seed=0, device=torch.device("cpu")))
    seen = [next(batches) for _ in range(5)]  # two batches an epoch: the fifth comes from a third pass
    images = torch.cat([images for images, _ in seen])
    assert images.dtype == torch.float32 and set(images.unique().tolist()) == {-1.0, 1.0}
    labels = [labels for _, labels in seen]
    assert sorted(torch.cat(labels[:2]).tolist()) == list(range(8)) == sorted(torch.cat(labels[2:4]).tolist())


def test_a_smaller_share_of_an_uneven_batch_reads_as_many_batches_an_epoch(ray_session):
    """3 workers sharing a batch of 8 as 3, 3 and 2: each reads batches of 3 and keeps its share, so all take the
    same number of batches an epoch (the epoch ends are a barrier of Ray Data's split)."""
    batches = iter(StreamedBatches(rows(9).iterator(), batch_size=3, seed=0, device=torch.device("cpu"), keep=2))
    seen = [next(batches)[1] for _ in range(4)]  # three batches an epoch, as the ranks that keep 3
    assert [len(labels) for labels in seen] == [2, 2, 2, 2]
    assert len(set(torch.cat(seen[:3]).tolist())) == 6


@pytest.mark.timeout(120)
def test_a_share_smaller_than_a_batch_stops_instead_of_waiting(ray_session):
    batches = iter(StreamedBatches(rows(3).iterator(), batch_size=4, seed=0, device=torch.device("cpu")))
    with pytest.raises(ValueError, match="smaller than its batch of 4"):
        next(batches)


def ray_data_spec(digit_folder, tmp_path, *overrides):
    from orchestrator.spec import apply_overrides

    data = {"name": "ray_data", "seed": 0,
            "model": {"latent_dim": 8, "g_width": 4, "d_width": 4, "conditional": True},
            "data": {"source": "ray-data", "path": str(digit_folder)},
            "train": {"steps": 4, "batch_size": 16, "n_critic": 2},
            "resources": {"num_workers": 2, "cpus_per_worker": 0.5},
            "tracking": {"metrics_every": 2, "samples_every": 4, "checkpoint_every": 4, "num_samples": 10,
                         "storage_path": str(tmp_path / "ray_storage")}}
    assert not apply_overrides(data, list(overrides))
    return parse(data)


def test_two_workers_train_on_the_stream(ray_session, mlflow_store, digit_folder, tmp_path):
    """A conditional DCGAN on 2 DDP workers fed by Ray Data: identical ranks, the skipped image recorded, and
    sample quality evaluated."""
    outcome = launch.run(ray_data_spec(digit_folder, tmp_path, "eval.every=4", "eval.num_samples=40",
                                       f"eval.cache_dir={tmp_path / 'cache'}"), show_progress=False)
    for name, per_rank in outcome.summary["parameter_digests"].items():
        assert len(per_rank) == 2 and len(set(per_rank)) == 1, f"{name} differs across ranks"
    assert outcome.skipped_files == [str(digit_folder / "3" / "broken.png")]
    client = store.client(mlflow_store)
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.source"] == "ray-data" and run.data.params["data.path"] == str(digit_folder)
    assert run.data.tags[TAG_DATA_SKIPPED] == "1"
    listed = Path(client.download_artifacts(outcome.run_id, "data/skipped_files.txt", str(tmp_path))).read_text()
    assert listed == f"{digit_folder / '3' / 'broken.png'}\n"
    assert [m.step for m in client.get_metric_history(outcome.run_id, "loss_d")] == [2, 4]
    # evaluated on a sample of the same files, read into memory
    assert [m.step for m in client.get_metric_history(outcome.run_id, "fid")] == [4]
    assert 0 < outcome.summary["eval"]["mode_coverage"] <= 1 and outcome.summary["best_fid"] > 0
    assert Path(run.data.tags[TAG_CLASSIFIER]).parent == tmp_path / "cache" / "classifiers"
    # 10 classes: one sample row per class
    grid = Image.open(client.download_artifacts(outcome.run_id, "samples/step_000004.png", str(tmp_path)))
    assert grid.size[1] == 10 * 30 + 2


def test_no_cpu_left_for_ray_data_is_refused_before_a_run(ray_session, mlflow_store, digit_folder, tmp_path):
    spec = ray_data_spec(digit_folder, tmp_path, "resources.cpus_per_worker=1")
    with pytest.raises(ValueError, match="resources.cpus_per_worker: .* need at least 1 CPU besides the training "
                                         "workers'; a local Ray instance has 2 CPUs and the workers reserve 2"):
        launch.run(spec, show_progress=False)
    assert store.client(mlflow_store).get_experiment_by_name("ray_data") is None, "no MLflow run was made"


def test_a_sweep_over_a_ray_data_job_streams_to_every_trial(ray_session, mlflow_store, digit_folder, tmp_path):
    """Each trial's TorchTrainer is built as `ganorch run` builds one: with the stream as its dataset, and with the
    spec's checkpoint retention (tracking.keep_checkpoints) and worker restarts."""
    from orchestrator.tune import sweep

    spec = ray_data_spec(digit_folder, tmp_path, "resources.num_workers=1", "tracking.checkpoint_every=2",
                         "tracking.keep_checkpoints=1", "resources.max_failures=1",
                         "tune={space: {optim.g.lr: {choice: [1.0e-4, 2.0e-4]}}, metric: loss_g, num_samples: 2, "
                         "scheduler: none, max_concurrent_trials: 1}")
    outcome = sweep.run(spec, show_progress=False)
    assert [t["status"] for t in outcome.trials] == ["TERMINATED", "TERMINATED"], outcome.trials
    client = store.client(mlflow_store)
    for trial in outcome.trials:
        child = client.get_run(trial["run_id"])
        assert child.info.status == "FINISHED" and child.data.tags[TAG_DATA_SKIPPED] == "1"
        assert [m.step for m in client.get_metric_history(trial["run_id"], "loss_d")] == [2, 4]
        # Ray Train's own checkpoints of the trial's run (checkpoint_<time>; Tune's are checkpoint_<number>)
        kept = list((tmp_path / "ray_storage").glob(f"*-{trial['trial']}/checkpoint_20*"))
        assert len(kept) == 1, kept
