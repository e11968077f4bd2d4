"""eval.background: G_ema scored by an evaluator actor while the real per-worker loop (in this process) trains on:
training does not wait for the scores; they are logged at their steps; the best checkpoint holds the evaluated
step's state; a flag they raise stops the run when they arrive. (test_train_e2e compares the scores of an evaluator
actor with those of in-line evaluation on 2 workers.)"""

import math
import time
from pathlib import Path

import pytest
import torch

from orchestrator.evaluate.evaluator import Evaluator
from orchestrator.spec import load
from orchestrator.track import runs, store
from orchestrator.track.tags import TAG_BEST_CHECKPOINT, TAG_BEST_STEP, TAG_CHECKPOINT
from orchestrator.train import checkpoint, loop, ray_init, scoring
from orchestrator.train.loop import WorkerContext, train

REPO = Path(__file__).resolve().parents[1]
RELEASE_WAIT_S = 60.0


def run(spec, uri):
    run_id = runs.start_run(spec, uri)[0]
    summary = train(spec, WorkerContext(device=torch.device("cpu"), tracking_uri=uri, run_id=run_id))
    return summary, store.client(uri), run_id


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def best_state(client, run_id: str, tmp_path: Path) -> dict:
    artifact = client.get_run(run_id).data.tags[TAG_BEST_CHECKPOINT]
    return checkpoint.load(client.download_artifacts(run_id, artifact, str(tmp_path)))


class ScriptedEvaluator:
    """Stands in for EvaluatorActor in its own Ray process: the first evaluation is only scored once the release
    file (in eval.cache_dir) exists, which the training loop writes at a later step. Scores: FID 5 with mode
    coverage 0.9, then FID 7 with mode coverage 0.1 (a collapse), then FID 9; each with `ema_sum`, the sum of the
    G_ema it was given."""

    SCORES = [{"fid": 5.0, "mode_coverage": 0.9}, {"fid": 7.0, "mode_coverage": 0.1}, {"fid": 9.0, "mode_coverage": 0.1}]

    def __init__(self, spec, classes):
        self.release, self.calls = Path(spec.eval.cache_dir) / "release", 0

    def describe(self):
        return {}

    def evaluate(self, generator_state):
        self.calls += 1
        deadline = time.monotonic() + RELEASE_WAIT_S
        while self.calls == 1 and not self.release.exists():
            if time.monotonic() > deadline:  # training waited for the evaluation
                return {"fid": math.nan, "mode_coverage": math.nan}
            time.sleep(0.05)
        return {**self.SCORES[min(self.calls, 3) - 1], "ema_sum": parameter_sum(generator_state)}


def parameter_sum(state: dict) -> float:
    return float(sum(v.double().sum() for v in state.values() if v.is_floating_point()))


def test_training_goes_on_while_the_evaluator_scores_and_late_scores_still_decide(
        ray_session, mlflow_store, tmp_path, monkeypatch, process_group):
    """The evaluation of step 4 is held until training reaches step 6: it would never be scored if training
    waited for it. Its FID (5) stays the best over step 8's (7), whose mode collapse stops the run once it arrives
    (at the latest at the checkpoint of step 16, which waits for it)."""
    monkeypatch.setattr(scoring, "EvaluatorActor", ScriptedEvaluator)

    def workers_score(*args):
        raise AssertionError("a worker scored G_ema in-line")

    monkeypatch.setattr(Evaluator, "evaluate", workers_score)
    steps, release = [0], tmp_path / "release"
    run_phase = loop.run_phase

    def counted(phase, *args):
        yield from run_phase(phase, *args)
        if phase.name == "G":
            steps[0] += 1
            if steps[0] == 6:
                release.touch()

    monkeypatch.setattr(loop, "run_phase", counted)
    spec = load(REPO / "jobs/debug_dcgan.yaml", [
        "resources.num_workers=1", "eval.every=4", "train.steps=16", "tracking.checkpoint_every=16",
        "tracking.samples_every=16", "train.stop_on=[mode_collapse]", f"eval.cache_dir={tmp_path}",
        "eval.background=true", "eval.resources.cpus=0"])
    summary, client, run_id = run(spec, mlflow_store)

    assert history(client, run_id, "fid")[:2] == [(4, 5.0), (8, 7.0)]
    assert summary["stopped"].startswith("mode_collapse at step 8")
    assert 8 <= summary["step"] <= 16
    assert client.get_run(run_id).data.tags[TAG_BEST_STEP] == "4"
    best = best_state(client, run_id, tmp_path / "best")
    assert best["step"] == 4 and summary["best_fid"] == 5.0
    # the state copied at step 4, the G_ema the evaluator was given then, not the networks' state at the stop
    assert parameter_sum(best["generator_ema"]) == history(client, run_id, "ema_sum")[0][1]
    latest = checkpoint.load(client.download_artifacts(run_id, client.get_run(run_id).data.tags[TAG_CHECKPOINT],
                                                       str(tmp_path / "latest")))
    assert latest["step"] == summary["step"] > 4
    assert parameter_sum(latest["generator_ema"]) != parameter_sum(best["generator_ema"])


def test_a_background_evaluator_that_does_not_fit_is_refused_before_the_run(ray_session):
    """The session's Ray has 2 CPUs; debug_dcgan's two workers take both."""
    spec = load(REPO / "jobs/debug_dcgan.yaml", ["eval.every=2", "eval.background=true"])
    with pytest.raises(ValueError, match=r"eval.resources.cpus: eval.background's evaluator reserves "
                                         r"eval.resources.cpus 1 CPU besides the training workers'.* has 2 CPUs"):
        ray_init.check_spare_resources(spec)
    ray_init.check_spare_resources(load(REPO / "jobs/debug_dcgan.yaml", [
        "eval.every=2", "eval.background=true", "eval.resources.cpus=0"]))
