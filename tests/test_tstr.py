"""Train on synthetic, test on real (eval.tstr): a classifier trained on G's labelled samples, scored on the real
held-out digits, beside the same recipe trained on as many real ones."""

import queue
import shutil
from pathlib import Path

import pytest
import torch
from conftest import free_port
from torch import nn

from orchestrator.data import splits
from orchestrator.data.sources import load_dataset
from orchestrator.evaluate import tstr
from orchestrator.evaluate.evaluator import Evaluator
from orchestrator.spec import DataSpec, ModelSpec, SpecError, load, parse

REPO = Path(__file__).resolve().parents[1]
SAMPLES = 500


@pytest.fixture(scope="module")
def mnist():
    return load_dataset(DataSpec("mnist5k"), ModelSpec())


@pytest.fixture
def cache(mnist_classifier, tmp_path):
    """A copy of the session's mnist5k classifier cache, so the TRTR accuracy this test caches is its own."""
    return shutil.copytree(mnist_classifier[1], tmp_path / "cache")


def evaluator(dataset, cache_dir, tstr_samples=SAMPLES, seed=0, generator_classes=10) -> Evaluator:
    return Evaluator(dataset, 10, generator_classes, num_samples=50, latent_dim=8, image_size=28, channels=1,
                     cache_dir=str(cache_dir), seed=seed, device=torch.device("cpu"), tstr_samples=tstr_samples)


class RealDigits(nn.Module):
    """A perfect conditional G: for each z a real training digit of the class asked for."""

    def __init__(self, dataset):
        super().__init__()
        images, labels = splits.read(dataset, splits.classifier_split(dataset, seed=0)[0])
        self.by_class = [images[labels == c] for c in range(10)]

    def forward(self, z, labels):
        pick = (z[:, 0].abs() * 1e4).long()
        return torch.stack([self.by_class[c][i % len(self.by_class[c])] for c, i in zip(labels.tolist(), pick)])


class Noise(nn.Module):
    def forward(self, z, labels):
        return torch.rand(len(z), 1, 28, 28, generator=torch.Generator().manual_seed(int(z[0, 0] * 1e6))) * 2 - 1


def test_tstr_is_near_trtr_for_real_digits_at_chance_for_noise_and_repeats(mnist, cache, monkeypatch):
    scorer = evaluator(mnist, cache)
    real = scorer.train_on_synthetic(RealDigits(mnist))
    assert 0.0 <= real["tstr_accuracy"] <= 1.0 and real["trtr_accuracy"] > 0.8, real
    assert real["tstr_ratio"] == pytest.approx(real["tstr_accuracy"] / real["trtr_accuracy"]) and \
        real["tstr_ratio"] > 0.9, real
    noise = scorer.train_on_synthetic(Noise())
    assert noise["tstr_accuracy"] < 0.13 and noise["trtr_accuracy"] == real["trtr_accuracy"], noise
    torch.manual_seed(12345)  # the global generator elsewhere: dropout's draws are seeded all the same
    assert scorer.train_on_synthetic(RealDigits(mnist)) == real, "seeded: a repeat gives the same numbers"

    # TRTR is cached with the classifier: a second evaluator of the same data and count trains nothing for it
    def no_training(*args, **kwargs):
        raise AssertionError("TRTR was trained again")

    monkeypatch.setattr(tstr, "train_classifier", no_training)
    assert evaluator(mnist, cache).trtr == real["trtr_accuracy"]
    monkeypatch.undo()
    # another seed splits the data otherwise, so its TRTR is its own
    assert evaluator(mnist, cache, seed=1).trtr != real["trtr_accuracy"]
    (classifier_file,) = (cache / "classifiers").glob("*.pt")
    assert set(torch.load(classifier_file, weights_only=True)["trtr"]) == {"seed 0, 500 images", "seed 1, 500 images"}


@pytest.mark.parametrize("limit", [10_000, 3_000])
@pytest.mark.parametrize("wrap", [False, True])
def test_the_classifier_split_holds_out_a_tenth_of_at_most_the_limit_and_reads_the_same_either_way(mnist, monkeypatch,
                                                                                                  limit, wrap):
    """The split TSTR, TRTR and the domain classifier share: disjoint, a tenth held out, of the whole data under the
    classifier's limit and of a seeded subset over it; item-read data reads the same images."""
    monkeypatch.setattr(splits, "MAX_TRAIN_IMAGES", limit)
    dataset = torch.utils.data.Subset(mnist, range(len(mnist))) if wrap else mnist
    train, held_out = splits.classifier_split(dataset, seed=3)
    assert not set(train.tolist()) & set(held_out.tolist())
    assert len(train) + len(held_out) == min(limit, len(mnist)) and len(held_out) == round(min(limit, len(mnist)) / 10)
    assert torch.equal(splits.classifier_split(dataset, seed=3)[1], held_out)
    assert not torch.equal(splits.classifier_split(dataset, seed=4)[1], held_out)
    for indices in (train, held_out):
        images, labels = splits.read(dataset, indices)
        assert torch.equal(images, mnist.tensors[0][indices]) and torch.equal(labels, mnist.tensors[1][indices])


def test_a_cache_that_cannot_be_written_is_only_read(mnist, cache, monkeypatch):
    (classifier_file,) = (cache / "classifiers").glob("*.pt")
    before = classifier_file.read_bytes()

    def read_only(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(tstr, "open", read_only, raising=False)  # what opening a file there raises
    assert 0.8 < evaluator(mnist, cache).trtr <= 1.0
    assert classifier_file.read_bytes() == before and not list((cache / "classifiers").glob("*.tmp*"))


def score_on_a_rank(rank: int, port: int, cache_dir: str, results) -> None:
    """One rank of a 2-process gloo group scoring RealDigits' TSTR."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    dataset = load_dataset(DataSpec("mnist5k"), ModelSpec())
    results.put((rank, evaluator(dataset, cache_dir).train_on_synthetic(RealDigits(dataset))))
    dist.barrier()


def test_two_workers_score_what_one_does(mnist, cache):
    """Each rank draws its share of the samples; rank 0 trains on all of them and every rank gets its scores."""
    import torch.multiprocessing as mp

    alone = evaluator(mnist, cache).train_on_synthetic(RealDigits(mnist))
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=score_on_a_rank, args=(r, port, str(cache), results)) for r in range(2)]
    for p in processes:
        p.start()
    found = {}
    try:
        while len(found) < 2:
            rank, scores = results.get(timeout=120)
            found[rank] = scores
    except queue.Empty:
        pass
    finally:
        for p in processes:
            p.join(timeout=30)
            p.kill()
    assert found == {0: alone, 1: alone}, (found, alone)


def test_every_evaluation_of_a_conditional_run_scores_tstr_above_chance(process_group, cache):
    """600 steps of the conditional quickstart at a quarter width already draw digits a classifier learns something
    from; the scores come with the other eval metrics."""
    from orchestrator.train.loop import WorkerContext, train

    spec = load(REPO / "jobs/quickstart.yaml", [
        "resources.num_workers=1", "model.g_width=16", "model.d_width=16", "train.steps=600",
        "train.condition_ramp=[0,200]", "tracking.metrics_every=50", "tracking.samples_every=600",
        "tracking.checkpoint_every=600", "tracking.num_samples=10", "eval.every=600", "eval.num_samples=200",
        f"eval.cache_dir={cache}", "eval.tstr=true", f"eval.tstr_samples={SAMPLES}"])
    scores = train(spec, WorkerContext(device=torch.device("cpu")))["eval"]
    # Chance is 0.1 (noise scores 0.064). On 2026-12-04 with torch 2.14.1 this run scored 0.268 (seeds 1 and 2:
    # 0.372, 0.196); 300 steps, which had scored 0.22 under an earlier install's torch, scored 0.112.
    assert scores["tstr_accuracy"] > 0.15 and 0 < scores["tstr_ratio"] <= 1.2, scores


def test_tstr_is_refused_with_its_key_where_it_cannot_run(mnist, cache):
    for kwargs, message in (({"generator_classes": 5}, "eval.tstr: the generator draws 5 classes, the data has 10"),
                            ({"tstr_samples": 9}, "eval.tstr_samples: got 9; fewer than the data's 10 classes")):
        with pytest.raises(ValueError, match=message):
            evaluator(mnist, cache, **kwargs)
    base = {"name": "t", "model": {"conditional": True}, "eval": {"every": 10, "tstr": True}}
    parse(base)
    cases = [({"model": {"conditional": False}}, "eval.tstr", "needs a class-conditional G"),
             ({"eval": {"every": 0, "tstr": True}}, "eval.tstr", "needs evaluations"),
             ({"eval": {"every": 10}, "tune": {"metric": "tstr_ratio", "mode": "max",
                                               "space": {"optim.g.lr": {"choice": [1.0e-4]}}}},
              "tune.metric", "measured with eval.tstr"),
             ({"tune": {"metric": "tstr_accuracy", "space": {"optim.g.lr": {"choice": [1.0e-4]}}}},
              "tune.mode", "is an accuracy: set tune.mode max"),
             ({"eval": {"every": 10, "tstr_samples": 1000}}, "eval.tstr_samples", "is not used with eval.tstr false")]
    for change, key, message in cases:
        with pytest.raises(SpecError) as info:
            parse({**base, **change})
        assert any(p.startswith(f"{key}: ") and message in p for p in info.value.problems), info.value.problems
