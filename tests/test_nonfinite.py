"""A step whose loss or gradient is not finite is never applied: skipped and counted, or the run stops as
diverged, per train.nonfinite. D networks from tests/user_networks.py score NaN at chosen calls."""

import math
import sys
from pathlib import Path

import torch

from orchestrator.spec import load
from orchestrator.track import store
from orchestrator.train import launch
from orchestrator.train.loop import WorkerContext, train

REPO = Path(__file__).resolve().parents[1]


def poisoned(discriminator: str, *overrides: str):
    return load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "train.n_critic=1", "train.steps=5",
                                                 "tracking.metrics_every=1", f"model.discriminator={discriminator}",
                                                 *overrides])


def finite_networks(summary_states: dict) -> bool:
    return all(torch.isfinite(v).all() for net in ("generator", "discriminator")
               for v in summary_states[net].values() if v.is_floating_point())


def train_keeping_last_state(spec):
    states = {}

    def report(metrics, checkpoint=None):
        from orchestrator.train.checkpoint import load as load_checkpoint

        states["last"] = load_checkpoint(checkpoint.path)

    return train(spec, WorkerContext(device=torch.device("cpu")), report=report), states["last"]


def test_a_non_finite_step_is_skipped_and_counted(process_group):
    # One metrics interval over all 5 steps, so the one logged holds the poisoned steps.
    summary, state = train_keeping_last_state(poisoned("user_networks:NaNDiscriminator", "tracking.metrics_every=5"))
    assert summary["step"] == 5 and summary["stopped"] is None
    assert summary["metrics"]["skipped_d"] == 1 and summary["metrics"]["skipped_g"] == 1
    assert finite_networks(state)
    # The skipped steps' NaN losses are not averaged into the logged ones.
    assert all(math.isfinite(summary["metrics"][k]) for k in ("loss_d", "loss_g", "grad_norm_d", "grad_norm_g"))


def test_with_nonfinite_stop_the_first_one_ends_the_run_as_diverged(process_group):
    summary, state = train_keeping_last_state(poisoned("user_networks:NaNDiscriminator", "train.nonfinite=stop"))
    assert summary["step"] == 3
    assert summary["stopped"].startswith("diverged at step 3: 1 D step(s) in a row had a non-finite loss"), \
        summary["stopped"]
    assert finite_networks(state) and state["step"] == 3  # the final checkpoint holds no NaN


def test_under_fp16_a_non_finite_loss_is_a_skip_not_an_overflow(process_group):
    """The scaler skips the step either way; a loss that is not finite is still counted as one, and stops the run."""
    summary, state = train_keeping_last_state(poisoned("user_networks:NaNDiscriminator", "train.nonfinite=stop",
                                                       "train.precision=fp16"))
    assert summary["step"] == 3 and summary["stopped"].startswith("diverged at step 3: 1 D step(s) in a row had a "
                                                                  "non-finite loss"), summary["stopped"]
    assert finite_networks(state)


def test_skipping_stops_as_diverged_when_nothing_can_be_learnt(process_group):
    summary, state = train_keeping_last_state(poisoned("user_networks:NaNFromStepTwo", "train.steps=100"))
    assert summary["step"] == 21 and "20 D step(s) in a row" in summary["stopped"], summary["stopped"]
    assert finite_networks(state)


def test_a_loss_not_finite_on_one_rank_is_skipped_on_both(ray_session, mlflow_store, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec = poisoned("user_networks:NaNOnRankOne", "resources.num_workers=2", "tracking.checkpoint_every=5",
                    f"tracking.storage_path={tmp_path / 'ray_storage'}")
    outcome = launch.run(spec, show_progress=False)
    digests = outcome.summary["parameter_digests"]
    assert all(len(set(per_rank)) == 1 for per_rank in digests.values()), digests
    history = store.client(mlflow_store).get_metric_history(outcome.run_id, "skipped_d")
    assert [(m.step, m.value) for m in history] == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]


def test_fp16_overflows_are_the_scalers_to_skip_not_divergence(process_group):
    """The gradient scaler's first steps overflow (its initial scale is too large): they are skipped and counted,
    and leave no infinite gradient norm in the interval's stats for the stability monitor to read as divergence."""
    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "train.precision=fp16",
                                                 "train.stop_on=[diverged]", "tracking.metrics_every=1"])
    summary = train(spec, WorkerContext(device=torch.device("cpu")))
    assert summary["stopped"] is None and summary["step"] == spec.train.steps, summary["stopped"]
    assert summary["metrics"]["overflow_d"] + summary["metrics"]["overflow_g"] >= 1, "no overflow happened"
    assert all(math.isfinite(v) for v in summary["metrics"].values())


def test_fp16_overflows_stop_as_diverged_only_after_many_in_a_row():
    from orchestrator.train.periodic import nonfinite_stop
    from orchestrator.train.phases import Phase, Streak

    def phases(in_a_row: int) -> list[Phase]:
        return [Phase("D", None, None, None, 1, True, None, overflowed=Streak(in_a_row, in_a_row, in_a_row)),
                Phase("G", None, None, None, 1, False, None)]

    assert nonfinite_stop(phases(1), "stop", 7) is None  # even train.nonfinite 'stop' leaves overflows be
    assert nonfinite_stop(phases(19), "skip", 7) is None
    flag = nonfinite_stop(phases(20), "skip", 7)
    assert flag.name == "diverged" and flag.step == 7 and "20 D step(s) in a row" in flag.reason
