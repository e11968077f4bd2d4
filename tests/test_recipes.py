"""The recipes in jobs/ for the first projects people try: each holds the settings it promises and trains end to
end at toy size, on data files written here (nothing is downloaded)."""

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.spec import load

REPO = Path(__file__).resolve().parents[1]
TOY = ["resources.num_workers=1", "resources.use_gpu=false", "resources.cpus_per_worker=1", "model.g_width=4",
       "model.d_width=4", "train.steps=4", "tracking.metrics_every=2", "tracking.samples_every=2",
       "tracking.checkpoint_every=2", "tracking.num_samples=10", "eval.every=2", "eval.num_samples=40",
       "eval.inception=\"off\""]


def real_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n of mnist5k's digits as uint8 (n, 28, 28), balanced over the classes, and their labels."""
    from orchestrator.data.sources import load_mnist5k

    images, labels = load_mnist5k()
    order = torch.argsort(torch.arange(len(labels)) % 500 * 10 + labels)[:n]  # class 0, 1, ..., 9, 0, 1, ...
    pixels = ((images[order, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return pixels, labels[order].numpy()


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: magic (0, 0, dtype 0x08, ndim), big-endian sizes, then uint8 data."""
    import struct

    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def no_download(*args, **kwargs):
    raise AssertionError(f"a test must not download: {args}")


def train_toy(path: Path, overrides: list[str]) -> dict:
    from orchestrator.train.loop import WorkerContext, train

    spec = load(path, TOY + overrides)
    return train(spec, WorkerContext(device=torch.device("cpu")))


@pytest.mark.parametrize("ramp_end, strength_at_2, best_step", [(3, 0.5, 4), (2, 1.0, 2)])
def test_quickstart_ramps_its_conditioning_in_and_trains(process_group, tmp_path, monkeypatch, ramp_end,
                                                         strength_at_2, best_step):
    """jobs/quickstart.yaml is class-conditional with transitional training, and R1 on D for its short ramp: at
    each checkpoint G, G_ema and D condition at the ramp's strength for that step, 1 from its end on; the best
    generator is chosen among evaluations from the ramp's end on, its last step included.
    jobs/digits_unconditional.yaml has the same data, rates and D without classes."""
    from gan_models.conditioning import ramp
    from orchestrator.evaluate.evaluator import Evaluator
    from orchestrator.train import checkpoint

    spec, unconditional = load(REPO / "jobs/quickstart.yaml"), load(REPO / "jobs/digits_unconditional.yaml")
    assert spec.model.conditional and not unconditional.model.conditional
    assert (spec.data, spec.optim, spec.model.d_norm) == (unconditional.data, unconditional.optim, "spectral")
    start, end = spec.train.condition_ramp
    assert 0 < start < end <= spec.train.steps and spec.eval.every > 0 and "mode_collapse" in spec.train.stop_on
    assert spec.train.r1_gamma > 0 and not unconditional.train.r1_gamma
    seen = []  # (step, network, strength) as each checkpoint is built: its tensors are the networks' own
    keys = {"generator": "input.strength", "generator_ema": "input.strength", "discriminator": "projection.strength"}
    real_build = checkpoint.build

    def build(**kwargs):
        state = real_build(**kwargs)
        seen.extend((state["step"], net, float(state[net][key])) for net, key in keys.items())
        return state

    monkeypatch.setattr(checkpoint, "build", build)
    real_evaluate, fids = Evaluator.evaluate, []

    def evaluate(self, G):  # step 2's FID the best of the run, as a half-conditioned G's may be
        scores = real_evaluate(self, G)
        fids.append(scores["fid"])
        return {**scores, "fid": 0.0} if len(fids) == 1 else scores

    monkeypatch.setattr(Evaluator, "evaluate", evaluate)
    summary = train_toy(REPO / "jobs/quickstart.yaml",
                        [f"train.condition_ramp=[1,{ramp_end}]", f"eval.cache_dir={tmp_path}"])
    assert summary["step"] == 4 and math.isfinite(summary["eval"]["fid"]), summary
    assert {step for step, _, _ in seen} == {2, 4}
    for step, net, strength in seen:
        assert strength == ramp(step, 1, ramp_end) == {2: strength_at_2, 4: 1.0}[step], (step, net)
    # the best generator is a fully conditioned one: step 2's evaluation is a candidate only if the ramp has ended
    assert len(fids) == 2 and summary["best_step"] == best_step, (fids, summary)
    assert summary["best_fid"] == (0.0 if best_step == 2 else fids[1]), (fids, summary)
    assert summary["metrics"]["condition_strength"] == 1.0, summary


def test_a_run_without_a_ramp_resumed_from_a_checkpoint_taken_during_one_conditions_at_full_strength(
        process_group, tmp_path, monkeypatch):
    from orchestrator.train import checkpoint
    from orchestrator.train.loop import WorkerContext, train

    states, real_build = [], checkpoint.build

    def build(**kwargs):
        state = real_build(**kwargs)
        networks = ("generator", "generator_ema", "discriminator")  # their tensors are the live networks'
        states.append({**state, **{net: {k: v.clone() for k, v in state[net].items()} for net in networks}})
        return state

    monkeypatch.setattr(checkpoint, "build", build)
    overrides = ["eval.every=0", "train.stop_on=[]"]
    train_toy(REPO / "jobs/quickstart.yaml", [*overrides, "train.condition_ramp=[3,4]"])
    during = next(state for state in states if state["step"] == 2)
    assert float(during["generator"]["input.strength"]) == 0.0
    states.clear()
    spec = load(REPO / "jobs/quickstart.yaml", TOY + [*overrides, "train.condition_ramp=null"])
    train(spec, WorkerContext(device=torch.device("cpu"), resume=during))
    assert [state["step"] for state in states] == [4]
    for net, key in (("generator", "input.strength"), ("generator_ema", "input.strength"),
                     ("discriminator", "projection.strength")):
        assert float(states[0][net][key]) == 1.0, net


def test_fashion_recipe_trains_on_fashion_mnist_files_with_a_classifier_of_its_own(process_group, tmp_path,
                                                                                    monkeypatch):
    """jobs/fashion.yaml reads torchvision's FashionMNIST with download: true; where the idx files are already
    under data.path, torchvision downloads nothing. Evaluation trains a domain classifier for this dataset."""
    import torchvision.datasets.mnist

    spec = load(REPO / "jobs/fashion.yaml")
    assert (spec.data.source, spec.data.dataset, spec.data.download) == ("torchvision", "FashionMNIST", True)
    assert spec.eval.every > 0 and spec.resources.num_workers == 2 and not spec.resources.use_gpu
    for split, n in (("train", 200), ("t10k", 20)):
        images, labels = real_digits(n)
        write_idx(tmp_path / "FashionMNIST/raw" / f"{split}-images-idx3-ubyte", images)
        write_idx(tmp_path / "FashionMNIST/raw" / f"{split}-labels-idx1-ubyte", labels)
    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", no_download)
    cache = tmp_path / "cache"
    summary = train_toy(REPO / "jobs/fashion.yaml", [f"data.path={tmp_path}", f"eval.cache_dir={cache}"])
    assert summary["step"] == 4 and math.isfinite(summary["eval"]["fid"]), summary
    assert len(list((cache / "classifiers").glob("*.pt"))) == 1


def write_cifar10(root: Path, per_batch: int) -> None:
    """CIFAR-10's python batches (5 training batches, a test batch, the class names), of random pixels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [i % 10 for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))


def test_cifar10_sngan_recipe_is_the_papers_and_trains(process_group, tmp_path, monkeypatch):
    """jobs/cifar10_sngan.yaml is SNGAN's CIFAR-10 recipe (Miyato et al., 2018) for a GPU; at toy size, on CPU, on
    CIFAR-10 files written here (torchvision's checksums are skipped: the pixels are random), it trains and
    evaluates."""
    import torchvision.datasets.cifar

    spec = load(REPO / "jobs/cifar10_sngan.yaml")
    assert (spec.model.family, spec.model.d_norm, spec.train.loss, spec.train.n_critic) == \
        ("resnet", "spectral", "hinge", 5)
    assert (spec.model.image_size, spec.model.channels, spec.train.batch_size) == (32, 3, 64)
    for adam in (spec.optim.g, spec.optim.d):
        assert adam.lr == 2e-4 and tuple(adam.betas) == (0.0, 0.9)
    assert (spec.data.dataset, spec.data.download, spec.resources.use_gpu) == ("CIFAR10", True, True)
    assert spec.eval.inception == "auto"
    write_cifar10(tmp_path, per_batch=20)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_download)
    summary = train_toy(REPO / "jobs/cifar10_sngan.yaml", [f"data.path={tmp_path}", f"eval.cache_dir={tmp_path}"])
    assert summary["step"] == 4 and math.isfinite(summary["eval"]["fid"]), summary


def test_workers_opening_a_missing_torchvision_dataset_together_download_it_once(tmp_path, monkeypatch):
    """The workers of a node open the dataset at once: one downloads, under a lock in data.path; the others wait
    and find it there."""
    import threading
    import time

    import torchvision.datasets

    from orchestrator.data.sources import load_dataset
    from orchestrator.spec import DataSpec, ModelSpec

    downloads = []

    def download(self):  # torchvision's own order: nothing to do when the files are there
        if self._check_exists():
            return
        downloads.append(threading.current_thread().name)
        time.sleep(0.5)
        for split, n in (("train", 20), ("t10k", 10)):
            images, labels = real_digits(n)
            write_idx(Path(self.raw_folder) / f"{split}-images-idx3-ubyte", images)
            write_idx(Path(self.raw_folder) / f"{split}-labels-idx1-ubyte", labels)

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", download)
    data = DataSpec("torchvision", path=str(tmp_path / "data"), dataset="FashionMNIST", download=True)
    sizes = []
    workers = [threading.Thread(target=lambda: sizes.append(len(load_dataset(data, ModelSpec())))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sizes == [20, 20, 20] and len(downloads) == 1, downloads


def test_a_download_into_a_folder_that_cannot_be_written_names_data_path(tmp_path):
    from orchestrator.data.sources import load_dataset
    from orchestrator.spec import DataSpec, ModelSpec

    (tmp_path / "file").write_text("not a folder")
    data = DataSpec("torchvision", path=str(tmp_path / "file" / "data"), dataset="FashionMNIST", download=True)
    with pytest.raises(ValueError, match="data.path: cannot download torchvision FashionMNIST into .*file/data"):
        load_dataset(data, ModelSpec())
