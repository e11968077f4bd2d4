"""The alternation on real DDP modules (a one-process gloo group): each phase steps its own network only."""

import copy

import pytest
import torch

from gan_models import build_loss, build_models
from orchestrator.distributed import collectives, ddp
from orchestrator.train.phases import build_phases, run_phase


def make(process_group, n_critic=2):
    torch.manual_seed(0)
    G, D = build_models("dcgan", latent_dim=8, image_size=28, channels=1, g_width=4, d_width=4)
    cpu = torch.device("cpu")
    # DDP itself, though one rank trains without it: its reducer is what a partial backward would break.
    G_ddp, D_ddp = ddp.data_parallel(G, cpu), ddp.data_parallel(D, cpu)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-2, fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-2, fused=True)
    phases = build_phases(G_ddp, D_ddp, opt_g, opt_d, build_loss("nonsaturating"), n_critic)
    real = iter(lambda: (torch.rand(6, 1, 28, 28) * 2 - 1, torch.zeros(6, dtype=torch.long)), None)
    return G, D, phases, real, lambda: (torch.randn(6, 8), None)


def params(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


def test_d_phase_steps_d_only(process_group):
    G, D, phases, real, draw_z = make(process_group)
    g_before, d_before = params(G), params(D)
    stats = run_phase(phases[0], real, draw_z)
    assert len(stats) == 2
    assert all(bool(applied) for _, applied in stats)
    assert set(stats[0][0]) == {"loss_d", "d_real", "d_fake", "d_accuracy_real", "d_accuracy_fake", "grad_norm_d"}
    assert not any(changed(g_before, G)), "the D phase must not touch G"
    assert all(p.grad is None for p in G.parameters())
    assert all(changed(d_before, D))


def test_g_phase_steps_g_only_and_leaves_no_d_gradients(process_group):
    G, D, phases, real, draw_z = make(process_group)
    run_phase(phases[0], real, draw_z)
    for p in D.parameters():
        p.grad = None
    g_before, d_before = params(G), params(D)
    stats = run_phase(phases[1], real, draw_z)
    assert set(stats[0][0]) == {"loss_g", "grad_norm_g"}
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in G.parameters()]))
    torch.testing.assert_close(stats[0][0]["grad_norm_g"], expected)
    assert not any(changed(d_before, D)), "the G phase must not step D"
    assert all(p.grad is None for p in D.parameters()), "the G phase must not compute or all-reduce D gradients"
    assert all(changed(g_before, G))


def test_alternation_runs_repeatedly_without_ddp_errors(process_group):
    """A partial backward through a DDP module would fail at the next forward; many rounds prove it does not."""
    G, D, phases, real, draw_z = make(process_group, n_critic=3)
    for _ in range(4):
        for phase, module, repeats in zip(phases, (D, G), (3, 1)):
            before = params(module)
            stats = run_phase(phase, real, draw_z)
            assert len(stats) == repeats and all(bool(applied) for _, applied in stats), phase.name  # none skipped
            assert all(changed(before, module)), f"the {phase.name} phase did not step its network"
    assert [(p.name, p.steps_taken, p.skipped.counts()) for p in phases] == [("D", 12, [0, 0, 0]), ("G", 4, [0, 0, 0])]


def test_stats_reduce_means_and_clears():
    stats = collectives.StatsAccumulator(torch.device("cpu"))
    stats.add({"a": torch.tensor(1.0), "b": torch.tensor([2.0, 4.0])})
    stats.add({"a": torch.tensor(3.0)})
    assert stats.reduce() == {"a": 2.0, "b": 3.0}
    assert stats.reduce() == {}


def test_digest_sees_every_bit():
    torch.manual_seed(0)
    G, _ = build_models("dcgan", latent_dim=8, image_size=28, channels=1, g_width=4, d_width=4)
    twin = copy.deepcopy(G)
    assert ddp.state_digest(G) == ddp.state_digest(twin)
    with torch.no_grad():
        p = next(twin.parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(1.0))
    assert ddp.state_digest(G) != ddp.state_digest(twin)
    assert ddp.state_digest(G, parameters_only=True) != ddp.state_digest(twin, parameters_only=True)
    twin2 = copy.deepcopy(G)
    next(b for b in twin2.buffers() if b.is_floating_point()).add_(1)
    assert ddp.state_digest(G) != ddp.state_digest(twin2)
    assert ddp.state_digest(G, parameters_only=True) == ddp.state_digest(twin2, parameters_only=True)


@pytest.mark.parametrize("settings", [
    [], ["train.precision=fp16", "train.r1_gamma=1.0", "train.r1_every=1", "model.d_norm=none"],
    ["train.precision=fp16", "train.loss=wgan-gp", "model.d_norm=none"],
    ["train.augment.policy=[color,translation,cutout]", "train.augment.target=0.6", "tracking.checkpoint_every=24",
     "train.r1_gamma=1.0", "train.r1_every=2", "model.d_norm=none"]], ids=["fp32", "fp16-r1", "fp16-gp", "ada-r1"])
def test_a_training_step_reads_nothing_back_from_the_device(process_group, monkeypatch, settings):
    """Between interval ends the loop never waits on the device: no .item(), .tolist(), bool(), int() or float() of
    a tensor in the phases or the G_ema update (a host sync each, a stalled CUDA queue on a GPU); under fp16 the
    penalties' loss scale is not read back either."""
    from pathlib import Path

    import orchestrator.train.loop as loop
    from gan_models import GeneratorEMA
    from orchestrator.spec import load
    from orchestrator.train.loop import WorkerContext, train

    reads, inside, calls = [], [], [0]
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        real = getattr(torch.Tensor, name)

        def read(tensor, *args, _real=real, _name=name):
            if inside and calls[0] > 2:  # after the first iteration, whose first batch shuffles the epoch on the host
                reads.append(_name)
            return _real(tensor, *args)

        monkeypatch.setattr(torch.Tensor, name, read)

    def within(function, phase: bool):
        def wrapped(*args, **kwargs):
            calls[0] += phase  # D and G phases: two calls an iteration
            inside.append(True)
            try:
                return function(*args, **kwargs)
            finally:
                inside.pop()
        return wrapped

    monkeypatch.setattr(loop, "run_phase", within(loop.run_phase, phase=True))
    monkeypatch.setattr(GeneratorEMA, "update", within(GeneratorEMA.update, phase=False))
    spec = load(Path(__file__).resolve().parents[1] / "jobs/debug_dcgan.yaml",
                ["resources.num_workers=1", "train.steps=24", "tracking.metrics_every=24", *settings])
    summary = train(spec, WorkerContext(device=torch.device("cpu")))
    assert summary["step"] == 24 and summary["metrics"]["loss_d"] == summary["metrics"]["loss_d"]  # steps applied
    assert reads == [], f"host reads in the training steps: {reads}"
