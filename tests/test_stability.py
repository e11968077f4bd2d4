"""The stability monitor on metric streams: each flag raised when its condition holds, once, and not before."""

import math
from types import SimpleNamespace

import pytest

from orchestrator.evaluate.stability import StabilityMonitor

HEALTHY = {"loss_d": 1.2, "loss_g": 0.9, "d_real": 0.6, "d_fake": 0.4, "d_accuracy_real": 0.7,
           "d_accuracy_fake": 0.7, "grad_norm_d": 2.0, "grad_norm_g": 1.5}


def feed(monitor: StabilityMonitor, stream: list[dict[str, float]], start: int = 1) -> list[tuple[int, str]]:
    raised = []
    for step, metrics in enumerate(stream, start=start):
        raised += [(flag.step, flag.name) for flag in monitor.observe(step, {**HEALTHY, **metrics})]
    return raised


def test_healthy_stream_raises_nothing():
    monitor = StabilityMonitor(window=3, loss="nonsaturating")
    noisy = [{"loss_g": 0.9 + 0.3 * (-1) ** i, "d_accuracy_fake": 0.6 + 0.2 * (-1) ** i} for i in range(40)]
    assert feed(monitor, noisy) == []
    assert monitor.observe_eval(40, {"mode_coverage": 0.8}) == []
    assert monitor.observe_eval(80, {"mode_coverage": 0.9}) == []
    assert monitor.raised == {}


def test_non_finite_loss_or_gradient_is_divergence():
    for name in ("loss_d", "loss_g", "grad_norm_d", "grad_norm_g"):
        monitor = StabilityMonitor(window=3, loss="hinge")
        assert feed(monitor, [{}, {}, {name: math.nan}, {name: math.inf}]) == [(3, "diverged")]
        assert name in monitor.raised["diverged"].reason


def test_exploding_loss_is_divergence_but_a_steady_rise_is_not():
    monitor = StabilityMonitor(window=3, loss="wgan-gp")
    rising = [{"loss_d": -2.0 * i, "loss_g": 3.0 * i} for i in range(1, 30)]  # a WGAN critic's growing loss
    assert feed(monitor, rising) == []
    assert feed(monitor, [{"loss_g": 30_000.0}], start=30) == [(30, "diverged")]
    assert "loss_g" in monitor.raised["diverged"].reason


def test_overpowering_needs_a_full_window_in_a_row():
    monitor = StabilityMonitor(window=3, loss="hinge")
    winning = {"d_accuracy_fake": 0.995, "d_accuracy_real": 0.99}
    stream = [winning, winning, {}, winning, winning, winning, winning]
    assert feed(monitor, stream) == [(6, "d_overpowering")]
    assert "steps 4-6" in monitor.raised["d_overpowering"].reason


def test_overpowering_by_mean_fake_output_only_for_bounded_outputs():
    crushed = [{"d_fake": 0.002, "d_accuracy_fake": 0.9, "d_accuracy_real": 0.95}] * 4
    assert feed(StabilityMonitor(window=2, loss="nonsaturating"), crushed) == [(2, "d_overpowering")]
    assert feed(StabilityMonitor(window=2, loss="hinge"), crushed) == []  # a raw score of 0 is D undecided


def test_a_discriminator_that_rejects_everything_is_not_overpowering():
    rejects_all = [{"d_accuracy_fake": 1.0, "d_accuracy_real": 0.1, "d_fake": 0.005}] * 6
    assert feed(StabilityMonitor(window=2, loss="nonsaturating"), rejects_all) == []


def test_mode_collapse_is_a_coverage_drop_from_the_best():
    monitor = StabilityMonitor(window=3, loss="nonsaturating")
    assert monitor.observe_eval(100, {"mode_coverage": 0.3}) == []   # low early on: G still learning
    assert monitor.observe_eval(200, {"mode_coverage": 1.0}) == []
    assert monitor.observe_eval(300, {"mode_coverage": 0.6}) == []
    flags = monitor.observe_eval(400, {"mode_coverage": 0.5})
    assert [(f.step, f.name) for f in flags] == [(400, "mode_collapse")]
    assert "0.50" in flags[0].reason and "1.00" in flags[0].reason
    assert monitor.observe_eval(500, {"mode_coverage": 0.1}) == []  # raised once
    assert monitor.observe_eval(600, {"mode_coverage": math.nan}) == []


REAL = {"real_precision": 0.97, "real_recall": 0.96, "real_manifold_coverage": 0.97}


@pytest.mark.parametrize("scores, signal", [
    ({"precision": 1.0, "recall": 0.0, "class_spread": 0.0}, "class_spread 0.000"),  # one image per class
    ({"precision": 1.0, "recall": 0.05, "class_spread": 0.57}, "recall 0.050 at precision 1.000"),  # a few per class
])
def test_mode_collapse_is_also_realistic_images_that_do_not_vary(scores, signal):
    """A conditional G covers every class by construction: its collapse shows in its variety, not its classes."""
    monitor = StabilityMonitor(window=3, loss="nonsaturating")
    flags = monitor.observe_eval(1000, {"mode_coverage": 1.0, **REAL, **scores})
    assert [(f.step, f.name) for f in flags] == [(1000, "mode_collapse")]
    assert signal in flags[0].reason, flags[0].reason


@pytest.mark.parametrize("scores", [
    {"precision": 0.74, "recall": 0.72, "class_spread": 0.9},     # the quickstart early on
    {"precision": 0.64, "recall": 0.002, "class_spread": 0.38},   # blurred digits: poor, but varied
    {"precision": 0.0, "recall": 0.0, "class_spread": 0.29},      # noise
    {"precision": 1.0, "recall": 0.0, "class_spread": math.nan},  # no yardstick, no class to measure
    {"precision": 1.0, "recall": 0.0, "class_spread": 0.0, "mode_coverage": 0.1},  # untrained: one blur
], ids=["healthy", "blurred", "noise", "unmeasured", "untrained"])
def test_poor_but_varied_images_are_not_a_mode_collapse(scores):
    monitor = StabilityMonitor(window=3, loss="nonsaturating")
    unmeasured = math.isnan(scores["class_spread"])
    assert monitor.observe_eval(1000, {"mode_coverage": 1.0, **({} if unmeasured else REAL), **scores}) == []


def test_oscillation_is_repeated_swings_of_the_balance():
    monitor = StabilityMonitor(window=2, loss="nonsaturating")
    swings = [{"d_accuracy_fake": a} for a in (0.95, 0.5, 0.05, 0.95, 0.05, 0.97)]
    assert feed(monitor, swings) == [(5, "oscillation")]
    # two swings, then calm: not oscillating
    monitor = StabilityMonitor(window=2, loss="nonsaturating")
    assert feed(monitor, [{"d_accuracy_fake": a} for a in (0.95, 0.05, 0.95, 0.6, 0.7, 0.6, 0.7, 0.6)]) == []


def decide(monitor: StabilityMonitor, step: int, flags: list, stop_on: list[str], skipped_d_in_a_row: int = 0):
    """periodic.stop_decision on one rank, with train.nonfinite 'stop'; returns the stop and the flags logged."""
    import torch

    from orchestrator.train.periodic import stop_decision
    from orchestrator.train.phases import Phase, Streak

    class Logger:
        def __init__(self):
            self.logged = []

        def log_flag(self, name, step, description):
            self.logged.append(description)

    phases = [Phase("D", None, None, None, 1, True, None,
                    skipped=Streak(skipped_d_in_a_row, skipped_d_in_a_row, skipped_d_in_a_row)),
              Phase("G", None, None, None, 1, False, None)]
    t = SimpleNamespace(phases=phases, spec=SimpleNamespace(train=SimpleNamespace(nonfinite="stop")), step=step,
                        device=torch.device("cpu"))
    logger = Logger()
    return stop_decision(t, monitor, stop_on, flags, logger), logger.logged


def test_the_stop_names_the_flag_that_stopped_the_run_not_an_earlier_one():
    # d_overpowering is raised first and only logged; oscillation, in stop_on, stops the run later.
    monitor = StabilityMonitor(window=2, loss="nonsaturating")
    crushed = [{"d_accuracy_fake": 1.0, "d_accuracy_real": 0.9}] * 2
    assert decide(monitor, 2, monitor.observe(2, {**HEALTHY, **crushed[1]}), ["oscillation"])[0] is None
    for step, accuracy in enumerate((0.95, 0.05, 0.95, 0.05), start=3):
        flags = monitor.observe(step, {**HEALTHY, "d_accuracy_fake": accuracy})
        stopped, _ = decide(monitor, step, flags, ["oscillation"])
    assert (stopped.name, stopped.step) == ("oscillation", 6), stopped
    assert stopped.reason == monitor.raised["oscillation"].reason

    # A loss explodes at step 3 (diverged, not in stop_on: logged); at step 9 a step is not finite and
    # train.nonfinite 'stop' ends the run: the stop is that one, at step 9, with its reason.
    monitor = StabilityMonitor(window=2, loss="nonsaturating")
    feed(monitor, [{}, {}, {"loss_d": 1.0e6}])
    assert decide(monitor, 3, [], [])[0] is None
    stopped, logged = decide(monitor, 9, [], [], skipped_d_in_a_row=1)
    assert (stopped.name, stopped.step) == ("diverged", 9), stopped.describe()
    assert "non-finite loss or gradient" in stopped.reason and logged == [stopped.describe()]
