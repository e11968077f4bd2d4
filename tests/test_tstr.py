"""Train on synthetic, test on real (eval.tstr): a classifier trained on G's labelled samples, scored on the real
held-out digits, beside the same recipe trained on as many real ones."""

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

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


def evaluator(dataset, cache_dir, tstr_samples=SAMPLES) -> Evaluator:
    return Evaluator(dataset, 10, 10, num_samples=50, latent_dim=8, image_size=28, channels=1,
                     cache_dir=str(cache_dir), seed=0, device=torch.device("cpu"), tstr_samples=tstr_samples)


class RealDigits(nn.Module):
    """A perfect conditional G: for each z a real training digit of the class asked for."""

    def __init__(self, dataset):
        super().__init__()
        split = tstr.real_split(dataset, seed=0)
        self.by_class = [split.train_images[split.train_labels == c] for c in range(10)]

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
    assert scorer.train_on_synthetic(RealDigits(mnist)) == real, "seeded: a repeat gives the same numbers"

    # TRTR is cached with the classifier: a second evaluator of the same data and count trains nothing for it
    def no_training(*args, **kwargs):
        raise AssertionError("TRTR was trained again")

    monkeypatch.setattr(tstr, "train_classifier", no_training)
    assert evaluator(mnist, cache).tstr_real[1] == real["trtr_accuracy"]


def test_every_evaluation_of_a_conditional_run_scores_tstr_above_chance(process_group, mnist_classifier):
    """300 steps of the conditional quickstart at half width already draw digits a classifier learns something
    from; the scores come with the other eval metrics."""
    from orchestrator.train.loop import WorkerContext, train

    spec = load(REPO / "jobs/quickstart.yaml", [
        "resources.num_workers=1", "model.g_width=16", "model.d_width=16", "train.steps=300",
        "train.condition_ramp=[0,200]", "tracking.metrics_every=50", "tracking.samples_every=300",
        "tracking.checkpoint_every=300", "tracking.num_samples=10", "eval.every=300", "eval.num_samples=200",
        f"eval.cache_dir={mnist_classifier[1]}", "eval.tstr=true", f"eval.tstr_samples={SAMPLES}"])
    scores = train(spec, WorkerContext(device=torch.device("cpu")))["eval"]
    # chance is 0.1 (noise scores 0.064); this run scored 0.22 on 2026-12-04
    assert scores["tstr_accuracy"] > 0.17 and 0 < scores["tstr_ratio"] <= 1.2, scores


def test_tstr_is_refused_with_its_key_where_it_cannot_run():
    base = {"name": "t", "model": {"conditional": True}, "eval": {"every": 10, "tstr": True}}
    parse(base)
    cases = [({"model": {"conditional": False}}, "eval.tstr", "needs a class-conditional G"),
             ({"eval": {"every": 0, "tstr": True}}, "eval.tstr", "needs evaluations"),
             ({"eval": {"every": 10}, "tune": {"metric": "tstr_ratio", "mode": "max",
                                               "space": {"optim.g.lr": {"choice": [1.0e-4]}}}},
              "tune.metric", "measured with eval.tstr")]
    for change, key, message in cases:
        with pytest.raises(SpecError) as info:
            parse({**base, **change})
        assert any(p.startswith(f"{key}: ") and message in p for p in info.value.problems), info.value.problems
