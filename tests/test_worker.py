"""The per-worker loop in the test process (a one-process gloo group): no Ray, no MLflow."""

from pathlib import Path

import pytest
import torch

from orchestrator.spec import load
from orchestrator.worker import Throughput, WorkerContext, train

REPO = Path(__file__).resolve().parents[1]


def run_debug(*overrides):
    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "train.steps=3", *overrides])
    return train(spec, WorkerContext(device=torch.device("cpu")))


def test_same_spec_and_seed_give_identical_parameters_on_cpu(process_group):
    first, second = run_debug(), run_debug()
    assert first["parameter_digests"] == second["parameter_digests"]
    timing = {"images_per_sec"}
    assert {k: v for k, v in first["metrics"].items() if k not in timing} == \
        {k: v for k, v in second["metrics"].items() if k not in timing}
    other_seed = run_debug("seed=1")
    assert other_seed["parameter_digests"]["generator"] != first["parameter_digests"]["generator"]


def test_summary_holds_reduced_metrics(process_group):
    summary = run_debug()
    assert summary["step"] == 3
    assert set(summary["metrics"]) == {"loss_d", "loss_g", "d_real", "d_fake", "d_accuracy_real", "d_accuracy_fake",
                                       "grad_norm_d", "grad_norm_g", "lr_g", "lr_d", "images_per_sec", "images_seen"}
    assert summary["metrics"]["lr_g"] == 2e-4
    assert 0 <= summary["metrics"]["d_accuracy_real"] <= 1 and summary["metrics"]["grad_norm_d"] > 0
    assert summary["metrics"]["images_seen"] == 3 * 16 * 2  # steps x global batch x n_critic


def test_throughput_counts_images_since_restart():
    speed = Throughput(images_per_step=10)
    speed.start_time -= 2.0
    assert 9 < speed.rate(2) <= 10
    speed.restart(2)
    speed.start_time -= 1.0
    assert 19 < speed.rate(4) <= 20


def test_user_networks_train(process_group):
    summary = run_debug("model.generator=user_networks:MLPGenerator", "model.discriminator=user_networks:MLPDiscriminator")
    assert summary["metrics"]["grad_norm_g"] > 0 and summary["metrics"]["grad_norm_d"] > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("recipe", [
    ["train.loss=nonsaturating"],
    ["train.loss=wgan-gp", "model.d_norm=none", "train.r1_gamma=1", "train.r1_every=2", "train.n_critic=2"],
])
def test_mixed_precision_trains_on_cpu(process_group, precision, recipe):
    """CPU autocast supports bf16 and fp16 (with a CPU gradient scaler), so these run here, not only on GPU."""
    summary = run_debug(f"train.precision={precision}", "train.channels_last=true", *recipe)
    metrics = summary["metrics"]
    assert all(v == v and abs(v) != float("inf") for v in metrics.values()), metrics
    assert metrics["grad_norm_d"] > 0 and metrics["grad_norm_g"] > 0


def test_precision_is_autocast_only_for_mixed_modes():
    from orchestrator.precision import Precision

    cpu = torch.device("cpu")
    assert Precision("fp32", cpu).new_scaler() is None and Precision("bf16", cpu).new_scaler() is None
    assert isinstance(Precision("fp16", cpu).new_scaler(), torch.amp.GradScaler)
    with Precision("bf16", cpu).autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with Precision("fp32", cpu).autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
