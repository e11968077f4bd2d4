"""From a validated JobSpec to a finished Ray Train run recorded in MLflow."""

import contextlib
import dataclasses
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from orchestrator.spec import JobSpec
from orchestrator.track import runs, store
from orchestrator.track.tags import TAG_OUTCOME, TAG_RAY_CHECKPOINT, TAG_STORAGE, TAG_TRAIN_RUN
from orchestrator.train import checkpoint, failures
from orchestrator.train.ray_init import (
    check_spare_resources,
    check_tracking_store,
    init_ray_and_store,
    keep_local,
    on_this_node,
)
from orchestrator.train.trainer import for_workers, ray_datasets, ray_train_settings, torch_trainer

if TYPE_CHECKING:
    from orchestrator.train.resume_from import Resumption

IMPORTED_AT = time.time()


@dataclass
class RunOutcome:
    run_id: str
    tracking_uri: str
    summary: dict[str, Any]          # rank 0's return value: final step, metrics, state digests
    checkpoint_path: str | None      # the final checkpoint in Ray Train's storage
    skipped_files: list[str] = dataclasses.field(default_factory=list)  # images Ray Data could not decode
    unsent: list[str] = dataclasses.field(default_factory=list)  # host:folder where what MLflow did not take is


def run(spec: JobSpec, loop: Callable[[dict], Any] | None = None, show_progress: bool = True,
        run_name: str | None = None, resume: "Resumption | None" = None,
        started_at: float | None = None) -> RunOutcome:
    """Train `spec` on Ray Train and record it in MLflow. `loop` replaces the per-worker function (tests wrap it).
    A `run_name` that Ray Train ran before under the same storage path (a resubmitted job) continues from that
    run's latest checkpoint, in the same MLflow run. `resume` (`ganorch run --resume`) continues from its
    checkpoint, in the MLflow run it came from when it names one. `started_at` (Unix time; by default the call's)
    is what the metric `startup_s` counts from: `ganorch run` passes its process's start."""
    started_at = started_at or time.time()
    keep_local()
    import ray

    uri = store.tracking_uri()
    init_ray_and_store(uri)  # an unreachable cluster or store fails here, before an MLflow run exists
    spec = for_workers(spec)
    check_spare_resources(spec)  # before a run exists, like an unreachable cluster
    datasets, skipped = ray_datasets(spec)
    check_tracking_store(uri)
    run_name = run_name or runs.default_run_name(spec)
    run_id = open_run(spec, uri, run_name, resume)
    handed_over = {"resume_state": resume.state, "resume_origin": resume.origin} if resume else {}
    status, tags, summary = "FAILED", {}, {}
    try:
        result = fit(spec, uri, run_id, run_name, loop, datasets, {**handed_over, "started_at": started_at},
                     show_progress)
        checkpoint_path = checkpoint.location(result.checkpoint) if result.checkpoint else None
        if checkpoint_path:
            tags[TAG_RAY_CHECKPOINT] = checkpoint_path
        outcome = RunOutcome(run_id, uri, result.return_value or {}, checkpoint_path)
        summary = outcome.summary
        stopped = outcome.summary.get("stopped")
        tags[TAG_OUTCOME] = f"stopped: {stopped}" if stopped else "completed"
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C; SIGTERM (`ganorch stop`), which Ray's driver turns into exit
        status = "KILLED"
        raise
    except failures.TrainingFailed as err:
        tags[TAG_OUTCOME] = f"failed after step {err.step or 0}: {err.what}"
        raise
    finally:
        tags.update(runs.description_tag(spec, summary, tags.get(TAG_OUTCOME) or status.lower(),
                                         time.time() - started_at))
        skipped_files = ray.get(skipped.read.remote()) if skipped is not None else []
        kept = runs.end_run(uri, run_id, status, tags, skipped_files, spec.tracking.outage_wait_s)
    outcome.skipped_files = skipped_files
    outcome.unsent = [where for where in (outcome.summary.get("unsent"), f"{socket.gethostname()}:{kept}" if kept
                                          else None) if where]
    return outcome


def open_run(spec: JobSpec, uri: str, run_name: str, resume: "Resumption | None") -> str:
    """The MLflow run this start goes to: the one `--resume` names (reopened), or the run of Ray Train run
    `run_name` (created at its first start)."""
    if resume is not None and resume.run_id:
        runs.reopen_run(uri, resume.run_id, spec, f"resumed (ganorch run --resume) from step "
                                                  f"{resume.state['step']}: {resume.origin}; Ray Train run {run_name}")
        store.client(uri).set_tag(resume.run_id, TAG_TRAIN_RUN, run_name)
        return resume.run_id
    return runs.job_run(spec, uri, run_name)[0]


def fit(spec: JobSpec, uri: str, run_id: str, run_name: str, loop: Callable[[dict], Any] | None,
        datasets: dict[str, Any] | None, handed_over: dict[str, Any], show_progress: bool) -> Any:
    """Build the run's TorchTrainer and fit it, with the progress line drawn while it trains; Ray Train's Result."""
    import ray
    from ray.train import TrainingFailedError

    from orchestrator.track.progress import ProgressBoard, ProgressView

    board = ProgressBoard.options(**on_this_node()).remote()
    trainer = torch_trainer(spec, {"spec": spec.to_dict(), "tracking_uri": uri, "run_id": run_id, "progress": board,
                                   "mlflow_env": store.environment(), **handed_over},
                            name=run_name, callbacks=[failures.FailureWatch(board)], datasets=datasets, loop=loop)
    store.client(uri).set_tag(run_id, TAG_STORAGE, f"{trainer.run_config.storage_path.rstrip('/')}/{run_name}")
    view = ProgressView(board, spec.train.steps, spec.name) if show_progress else contextlib.nullcontext()
    try:
        with ray_train_settings(spec), view:
            return trainer.fit()
    except TrainingFailedError as err:  # in words, without Ray's report (in its log files)
        raise failures.explain(err, run_id, ray.get(board.read.remote())) from None


def process_started_at() -> float:
    """When this process started, as Unix time: from /proc on Linux (the start in clock ticks after boot), else
    when orchestrator.train.launch was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return IMPORTED_AT
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
