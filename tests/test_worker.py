"""The per-worker loop in the test process (a one-process gloo group): no Ray, no MLflow."""

from pathlib import Path

import pytest
import torch

from orchestrator.spec import load
from orchestrator.train.checkpoint import load as load_checkpoint
from orchestrator.train.loop import WorkerContext, train
from orchestrator.train.periodic import Throughput

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
                                       "grad_norm_d", "grad_norm_g", "lr_g", "lr_d", "images_per_sec", "images_seen", "num_workers",
                                       "skipped_d", "skipped_g"}
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


def checkpoints_of(spec, resume=None):
    """Train `spec` in this process (from `resume`, a checkpoint state); returns its summary and its checkpoint
    states by step."""
    states = {}

    def report(metrics, checkpoint=None):
        states[metrics["step"]] = load_checkpoint(checkpoint.path)

    return train(spec, WorkerContext(device=torch.device("cpu"), resume=resume), report=report), states


TIMING = ("images_per_sec",)


@pytest.mark.parametrize("recipe", [
    [],
    ["train.loss=wgan-gp", "model.d_norm=none", "train.r1_gamma=1", "train.r1_every=2", "train.precision=fp16"],
])
def test_resuming_a_checkpoint_gives_the_uninterrupted_run(process_group, recipe):
    """Stopped at step 3 and resumed to 6 = trained to 6: weights, EMA, D, Adam moments, data position, noise,
    the gradient penalty's RNG, lazy R1's counter and fp16's loss scale all carry over."""
    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "tracking.checkpoint_every=3", *recipe])
    full, states = checkpoints_of(spec)
    assert sorted(states) == [3, 6] and states[3]["loop"]["data_position"] == 3 * 2
    resumed, _ = checkpoints_of(spec, states[3])
    assert resumed["step"] == 6
    assert resumed["parameter_digests"] == full["parameter_digests"]
    assert {k: v for k, v in resumed["metrics"].items() if k not in TIMING} == \
        {k: v for k, v in full["metrics"].items() if k not in TIMING}


def test_a_resume_runs_with_the_learning_rates_of_its_own_spec(process_group):
    """What a PBT exploit does: the donor's checkpoint, continued under new rates (not the donor's)."""
    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "tracking.checkpoint_every=3"])
    _, states = checkpoints_of(spec)
    assert states[3]["optimizer_g"]["param_groups"][0]["lr"] == 2e-4
    changed = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "optim.g.lr=1e-3", "optim.d.lr=5e-5",
                                                     "optim.d.betas=[0.0, 0.99]"])
    summary, resumed_states = checkpoints_of(changed, states[3])
    assert summary["metrics"]["lr_g"] == 1e-3 and summary["metrics"]["lr_d"] == 5e-5
    group = resumed_states[6]["optimizer_d"]["param_groups"][0]
    assert group["lr"] == 5e-5 and tuple(group["betas"]) == (0.0, 0.99)
    assert resumed_states[6]["images_seen"] == 6 * 16 * 2 and resumed_states[6]["step"] == 6


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
    from orchestrator.train.precision import Precision

    cpu = torch.device("cpu")
    assert Precision("fp32", cpu).new_scaler() is None and Precision("bf16", cpu).new_scaler() is None
    assert isinstance(Precision("fp16", cpu).new_scaler(), torch.amp.GradScaler)
    with Precision("bf16", cpu).autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with Precision("fp32", cpu).autocast():
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_conditional_grid_has_one_row_per_class():
    from orchestrator.train.networks import fixed_samples

    spec = load(REPO / "jobs/debug_dcgan.yaml", ["tracking.num_samples=64"])
    z, labels, columns = fixed_samples(spec, 10, torch.device("cpu"))
    assert columns == 6 and z.shape == (60, spec.model.latent_dim)
    assert labels.tolist() == [c for c in range(10) for _ in range(6)]
    z, labels, columns = fixed_samples(spec, 0, torch.device("cpu"))
    assert labels is None and columns == 8 and len(z) == 64


def test_conditional_training_logs_a_grid_per_class(process_group, mlflow_store, tmp_path):
    from PIL import Image

    from orchestrator.track import runs, store

    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "train.steps=2", "model.conditional=true",
                                                 "tracking.num_samples=20"])
    run_id, _ = runs.start_run(spec, mlflow_store)
    summary = train(spec, WorkerContext(device=torch.device("cpu"), tracking_uri=mlflow_store, run_id=run_id))
    assert summary["metrics"]["grad_norm_g"] > 0
    client = store.client(mlflow_store)
    grid = Image.open(client.download_artifacts(run_id, "samples/step_000002.png", str(tmp_path)))
    assert grid.size == (2 * 30 + 2, 10 * 30 + 2), "10 classes x 2 samples: one row per class"
    from orchestrator.spec import parse
    from orchestrator.train import checkpoint
    from orchestrator.train.networks import build_networks

    state = checkpoint.load(client.download_artifacts(run_id, "checkpoints/step_000002/checkpoint.pt", str(tmp_path)))
    assert state["num_classes"] == 10
    G, _ = build_networks(parse(state["spec"]), state["num_classes"])
    G.load_state_dict(state["generator_ema"])


def test_what_the_end_of_a_run_cannot_log_is_said_and_the_run_ends_as_trained(process_group, mlflow_store,
                                                                               monkeypatch, capsys):
    """The training is done and checkpointed when its models are logged: a failure there is a warning."""
    import orchestrator.train.loop as loop
    from orchestrator.track import runs, store

    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(loop, "log_generators", broken)
    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "train.steps=2"])
    run_id, _ = runs.start_run(spec, mlflow_store)
    summary = train(spec, WorkerContext(device=torch.device("cpu"), tracking_uri=mlflow_store, run_id=run_id))
    assert summary["step"] == 2 and summary["unsent"] is None
    assert "warning: the run's end was not all logged (OSError: No space left on device)" in capsys.readouterr().out
    artifacts = {a.path for a in store.client(mlflow_store).list_artifacts(run_id, "samples")}
    assert "samples/training.gif" in artifacts  # what was logged before the failure still went


def test_conditional_needs_classes(process_group, tmp_path):
    from PIL import Image

    for i in range(20):
        Image.new("L", (28, 28)).save(tmp_path / f"{i}.png")
    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "model.conditional=true",
                                                 "data.source=folder", f"data.path={tmp_path}"])
    with pytest.raises(ValueError, match="model.conditional: the data has a single class"):
        train(spec, WorkerContext(device=torch.device("cpu")))


def test_ranks_agree_on_stopping_only_where_a_flag_can_change(process_group, monkeypatch):
    """Stability flags are raised by metrics and evaluations: the ranks agree on rank 0's stop decision at those
    steps (one broadcast each), not at every iteration."""
    from orchestrator.distributed import collectives

    calls = []
    real_agree = collectives.agree
    monkeypatch.setattr(collectives, "agree", lambda value, device: calls.append(value) or real_agree(value, device))
    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "train.steps=6", "tracking.metrics_every=3",
                                                 "train.stop_on=[oscillation]"])
    summary = train(spec, WorkerContext(device=torch.device("cpu")))
    assert summary["step"] == 6 and summary["stopped"] is None
    assert len(calls) == 2, calls  # at steps 3 and 6


def test_a_rank_whose_monitor_saw_nothing_stops_with_rank_0(process_group, monkeypatch):
    """Rank 0's monitor raised a stop_on flag that this rank's did not: this rank stops at the same step, by the
    agreed flag, instead of looking up a flag it does not hold."""
    from orchestrator.distributed import collectives

    monkeypatch.setattr(collectives, "agree", lambda value, device: 0)  # rank 0 says: the first of stop_on
    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "train.steps=6", "tracking.metrics_every=3",
                                                 "train.stop_on=[diverged]"])
    summary = train(spec, WorkerContext(device=torch.device("cpu")))
    assert summary["step"] == 3
    assert summary["stopped"] == "diverged at step 3: raised by rank 0's stability monitor", summary["stopped"]


def test_rank_0_makes_no_mlflow_client_and_draws_no_grid_before_its_first_step(process_group, mlflow_store,
                                                                                monkeypatch):
    """Importing MLflow and drawing the step-0 grid (torchvision's import) took rank 0 seconds before its first step
    while the other ranks waited at DDP's first broadcast: its logger sends from the first step on, and grids are
    drawn by the outbox's thread. Everything is still logged."""
    import threading
    import time

    from orchestrator.track import run_logger, runs, store
    from orchestrator.train import loop

    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "train.steps=2", "eval.every=0"])
    run_id, _ = runs.start_run(spec, mlflow_store)
    events = []
    client, run_phase, image_grid = store.client, loop.run_phase, run_logger.image_grid

    def first_phase(*args):
        if "phase" not in events:
            time.sleep(0.3)  # time enough for a thread that does not wait to make its client first
            events.append("phase")
        yield from run_phase(*args)

    monkeypatch.setattr(store, "client", lambda uri: events.append("client") or client(uri))
    monkeypatch.setattr(loop, "run_phase", first_phase)
    monkeypatch.setattr(run_logger, "image_grid", lambda *a: events.append(threading.current_thread().name)
                        or image_grid(*a))
    train(spec, WorkerContext(device=torch.device("cpu"), tracking_uri=mlflow_store, run_id=run_id,
                              started_at=time.time()))
    assert events[0] == "phase" and "client" in events, events
    assert {e for e in events if e not in ("phase", "client")} == {"ganorch-outbox-rank0"}, events
    run = client(mlflow_store).get_run(run_id)
    assert run.data.metrics["startup_s"] > 0 and run.data.metrics["loss_d"] > 0
    assert {a.path for a in client(mlflow_store).list_artifacts(run_id, "samples")} == {
        "samples/step_000000.png", "samples/step_000002.png", "samples/training.gif", "samples/interpolation.png"}
