"""The run's best checkpoint, decided by the real per-worker loop (in this process) on evaluations whose FIDs the test
sets, written to a real MLflow SQLite store: it holds the lowest finite FID so far, not the latest evaluation."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from orchestrator.spec import load
from orchestrator.track import runs, store
from orchestrator.track.run_logger import RunLogger
from orchestrator.track.tags import (
    BEST_CHECKPOINT_DIR,
    TAG_BEST_CHECKPOINT,
    TAG_BEST_FID,
    TAG_BEST_STEP,
    TAG_CHECKPOINT,
)
from orchestrator.train import checkpoint, scoring
from orchestrator.train.loop import WorkerContext, train

REPO = Path(__file__).resolve().parents[1]
NAN, INF = math.nan, math.inf


def run_with_fids(fids: dict[int, float], mlflow_store, monkeypatch, steps: int = 6, run_id: str | None = None,
                  resume: dict | None = None):
    """debug_dcgan for `steps` steps on one process (from `resume`, in run `run_id`, when given), evaluated every 2
    steps with FID `fids[step]`; returns the loop's summary, the (step, FID) of each write of the best checkpoint,
    the MLflow client and the run's id."""
    spec = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1", "eval.every=2", f"train.steps={steps}"])
    scores = iter(fids[step] for step in sorted(fids))
    monkeypatch.setattr(scoring, "build_evaluator",
                        lambda *args: (SimpleNamespace(evaluate=lambda G: {"fid": next(scores)}), {}))
    writes, log_best = [], RunLogger.log_best_checkpoint

    def logged_best(logger, step, path, fid):
        writes.append((step, fid))
        log_best(logger, step, path, fid)

    monkeypatch.setattr(RunLogger, "log_best_checkpoint", logged_best)
    run_id = run_id or runs.start_run(spec, mlflow_store)[0]
    summary = train(spec, WorkerContext(device=torch.device("cpu"), tracking_uri=mlflow_store, run_id=run_id,
                                        resume=resume, resumed_from="a checkpoint" if resume else None))
    assert next(scores, None) is None, "fewer evaluations than FIDs"
    return summary, writes, store.client(mlflow_store), run_id


def checkpoint_of(client, run_id: str, artifact: str, tmp_path: Path) -> dict:
    return checkpoint.load(client.download_artifacts(run_id, artifact, str(tmp_path / artifact.replace("/", "_"))))


def test_a_worse_evaluation_after_the_best_leaves_the_best_checkpoint_alone(
        mlflow_store, tmp_path, monkeypatch, process_group):
    """FID 7 at step 2, 5 at step 4, 9 at step 6: the best is step 4's, neither the first nor the latest."""
    summary, writes, client, run_id = run_with_fids({2: 7.0, 4: 5.0, 6: 9.0}, mlflow_store, monkeypatch)
    tags = client.get_run(run_id).data.tags
    assert writes == [(2, 7.0), (4, 5.0)]
    assert (tags[TAG_BEST_STEP], tags[TAG_BEST_FID]) == ("4", "5.0000")
    assert summary["best_fid"] == 5.0
    assert tags[TAG_BEST_CHECKPOINT] == f"{BEST_CHECKPOINT_DIR}/checkpoint.pt"
    best = checkpoint_of(client, run_id, tags[TAG_BEST_CHECKPOINT], tmp_path)
    latest = checkpoint_of(client, run_id, tags[TAG_CHECKPOINT], tmp_path)
    assert (best["step"], latest["step"]) == (4, 6)
    assert any(not torch.equal(best["generator_ema"][k], latest["generator_ema"][k]) for k in best["generator_ema"])


@pytest.mark.parametrize("fids, best_step", [
    ({2: NAN, 4: 5.0, 6: NAN}, 4),   # NaN as the first evaluation (no best yet), and after a finite one
    ({2: INF, 4: 5.0, 6: INF}, 4),
    ({2: NAN, 4: INF, 6: NAN}, None),
])
def test_a_nonfinite_fid_never_becomes_best(fids, best_step, mlflow_store, tmp_path, monkeypatch, process_group):
    summary, writes, client, run_id = run_with_fids(fids, mlflow_store, monkeypatch)
    assert writes == ([(best_step, 5.0)] if best_step else [])
    tags = client.get_run(run_id).data.tags
    checkpoints = [f.path for f in client.list_artifacts(run_id, "checkpoints")]
    if best_step is None:
        assert summary["best_fid"] is None
        assert not {TAG_BEST_STEP, TAG_BEST_FID, TAG_BEST_CHECKPOINT} & set(tags)
        assert BEST_CHECKPOINT_DIR not in checkpoints
        return
    assert (tags[TAG_BEST_STEP], tags[TAG_BEST_FID], summary["best_fid"]) == (str(best_step), "5.0000", 5.0)
    assert checkpoint_of(client, run_id, tags[TAG_BEST_CHECKPOINT], tmp_path)["step"] == best_step


def test_a_resumed_run_replaces_the_best_checkpoint_only_with_a_better_one(
        mlflow_store, tmp_path, monkeypatch, process_group):
    """FID 7 at step 2 and 5 at step 4, then the run resumes from step 4's checkpoint: 9 at step 6 is no best."""
    _, _, client, run_id = run_with_fids({2: 7.0, 4: 5.0}, mlflow_store, monkeypatch, steps=4)
    state = checkpoint_of(client, run_id, client.get_run(run_id).data.tags[TAG_CHECKPOINT], tmp_path)
    assert state["step"] == 4
    summary, writes, _, _ = run_with_fids({6: 9.0}, mlflow_store, monkeypatch, run_id=run_id, resume=state)
    assert writes == []
    tags = client.get_run(run_id).data.tags
    assert (tags[TAG_BEST_STEP], tags[TAG_BEST_FID], summary["best_fid"]) == ("4", "5.0000", 5.0)
    assert checkpoint_of(client, run_id, tags[TAG_BEST_CHECKPOINT], tmp_path / "after")["step"] == 4
