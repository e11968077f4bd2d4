"""From a validated JobSpec to a finished Ray Train run recorded in MLflow."""

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from orchestrator import tracking
from orchestrator.spec import JobSpec


@dataclass
class RunOutcome:
    run_id: str
    tracking_uri: str
    summary: dict[str, Any]          # rank 0's return value: final step, metrics, state digests
    checkpoint_path: str | None      # the final checkpoint in Ray Train's storage


def resources_line(spec: JobSpec) -> str:
    r = spec.resources
    gpus = r.gpus_per_worker if r.use_gpu else 0
    return (f"{r.num_workers} worker(s) x ({r.cpus_per_worker:g} CPU, {gpus:g} GPU) = "
            f"{r.num_workers * r.cpus_per_worker:g} CPU, {r.num_workers * gpus:g} GPU; "
            f"backend {'nccl' if r.use_gpu else 'gloo'}; batch {spec.train.batch_size} "
            f"({spec.batch_per_worker} per worker)")


def ray_target() -> str:
    address = os.environ.get("RAY_ADDRESS")
    return f"the Ray cluster at {address}" if address else "a local Ray instance"


def storage_path(spec: JobSpec) -> str | None:
    """Ray Train's storage: a URI as given, a local path made absolute (workers run in other directories)."""
    path = spec.tracking.storage_path
    if path is None or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def init_ray() -> None:
    """Join the cluster at RAY_ADDRESS, or start a local instance; keep Ray's worker logs out of the terminal."""
    import ray

    if ray.is_initialized():
        return
    # Workers run in directories of their own: let them import what the driver imports from its
    # working directory (a model.generator in the user's project, say).
    pythonpath = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    ray.init(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})


def run(spec: JobSpec, loop: Callable[[dict], Any] | None = None, show_progress: bool = True) -> RunOutcome:
    """Train `spec` on Ray Train and record it in MLflow. `loop` replaces the per-worker function (tests wrap it)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from orchestrator.progress import ProgressBoard, ProgressView
    from orchestrator.worker import train_loop_per_worker

    init_ray()  # an unreachable cluster fails here, before an MLflow run exists
    uri = tracking.tracking_uri()
    run_id, run_name = tracking.start_run(spec, uri)
    status, tags = "FAILED", {}
    try:
        board = ProgressBoard.remote()
        r = spec.resources
        per_worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
        trainer = TorchTrainer(
            loop or train_loop_per_worker,
            train_loop_config={"spec": spec.to_dict(), "tracking_uri": uri, "run_id": run_id, "progress": board},
            scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=per_worker),
            torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
            run_config=RunConfig(name=run_name, storage_path=storage_path(spec),
                                 checkpoint_config=CheckpointConfig(num_to_keep=None)),
        )
        if show_progress:
            with ProgressView(board, spec.train.steps, spec.name):
                result = trainer.fit()
        else:
            result = trainer.fit()
        checkpoint_path = result.checkpoint.path if result.checkpoint else None
        if checkpoint_path:
            tags[tracking.TAG_RAY_CHECKPOINT] = checkpoint_path
        status = "FINISHED"
        return RunOutcome(run_id, uri, result.return_value or {}, checkpoint_path)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracking.end_run(uri, run_id, status, tags)
