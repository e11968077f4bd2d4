"""From a validated JobSpec to a finished Ray Train run recorded in MLflow."""

import dataclasses
import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from orchestrator import checkpoint, tracking
from orchestrator.spec import JobSpec

if TYPE_CHECKING:
    from orchestrator.resume_from import Resumption

# CPUs Ray Data needs beside the training workers to read and decode a `ray-data` source.
DATA_CPUS = 1.0


@dataclass
class RunOutcome:
    run_id: str
    tracking_uri: str
    summary: dict[str, Any]          # rank 0's return value: final step, metrics, state digests
    checkpoint_path: str | None      # the final checkpoint in Ray Train's storage
    skipped_files: list[str] = dataclasses.field(default_factory=list)  # images Ray Data could not decode
    unsent: list[str] = dataclasses.field(default_factory=list)  # host:folder where what MLflow did not take is


def resources_line(spec: JobSpec) -> str:
    r = spec.resources
    gpus = r.gpus_per_worker if r.use_gpu else 0
    line = (f"{r.num_workers} worker(s) x ({r.cpus_per_worker:g} CPU, {gpus:g} GPU) = "
            f"{r.num_workers * r.cpus_per_worker:g} CPU, {r.num_workers * gpus:g} GPU; "
            f"backend {'nccl' if r.use_gpu else 'gloo'}; batch {spec.train.batch_size} "
            f"({spec.batch_per_worker} per worker)")
    if spec.data.source == "ray-data":
        line += f"; Ray Data decodes on the cluster's other CPUs (at least {DATA_CPUS:g})"
    return line


def check_data_cpus(spec: JobSpec) -> None:
    """Ray Data's tasks may only use CPUs the training workers have not reserved: with none left they would
    wait forever. Raises on a cluster without enough; warns on a remote one, whose autoscaler may add nodes."""
    import ray

    total = ray.cluster_resources().get("CPU", 0)
    reserved = spec.resources.num_workers * spec.resources.cpus_per_worker
    if total - reserved >= DATA_CPUS:
        return
    message = (f"resources.cpus_per_worker: data.source 'ray-data' decodes images in Ray Data tasks, which need "
               f"at least {DATA_CPUS:g} CPU besides the training workers'; {ray_target()} has {total:g} CPUs and "
               f"the workers reserve {reserved:g} (resources.num_workers x resources.cpus_per_worker): lower "
               "resources.cpus_per_worker or add CPUs")
    if not os.environ.get("RAY_ADDRESS"):
        raise ValueError(message)
    print(f"ganorch: warning: {message}; going on in case the cluster scales up", file=sys.stderr)


def ray_target() -> str:
    address = os.environ.get("RAY_ADDRESS")
    return f"the Ray cluster at {address}" if address else "a local Ray instance"


def absolute(path: str | None) -> str | None:
    """A URI or None as given, a local path made absolute: Ray Train workers run in directories of their own."""
    if path is None or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def for_workers(spec: JobSpec) -> JobSpec:
    """The spec with its local paths absolute; this is the spec the run records and the workers receive."""
    return dataclasses.replace(
        spec, data=dataclasses.replace(spec.data, path=absolute(spec.data.path)),
        tracking=dataclasses.replace(spec.tracking, storage_path=absolute(spec.tracking.storage_path)),
        eval=dataclasses.replace(spec.eval, cache_dir=absolute(spec.eval.cache_dir),
                                 inception_weights=absolute(spec.eval.inception_weights)))


def scaling(spec: JobSpec) -> dict[str, Any]:
    """The TorchTrainer arguments that come from resources: its ScalingConfig and TorchConfig."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig

    r = spec.resources
    per_worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
    return {"scaling_config": ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                            resources_per_worker=per_worker),
            "torch_config": TorchConfig(backend="nccl" if r.use_gpu else "gloo")}


# Ray's switch for single-machine instances (its default on macOS and Windows): with it off, Ray gives the node the
# loopback address, and its servers (GCS, raylet, workers, dashboard, job server) listen on 127.0.0.1 only.
MULTI_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_local() -> None:
    """Without RAY_ADDRESS the Ray instance ganorch starts is this machine's alone: nothing of it listens beyond
    127.0.0.1. Ray reads the switch when it is imported, so this comes first; Ray's processes inherit it. Not when
    a `ray start` cluster runs here, which ray.init() joins as it is."""
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"  # where Ray looks, on Linux and macOS
    running = Path(temp, "ray", "ray_current_cluster").exists()
    if not os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules and not running:
        os.environ.setdefault(MULTI_NODE, "0")


def init_ray() -> None:
    """Join the cluster at RAY_ADDRESS, or start a local instance (on loopback); keep Ray's worker logs out of the
    terminal."""
    keep_local()
    import ray

    if ray.is_initialized():
        return
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # A submitted job's driver: its runtime environment (working directory, ganorch's code) is the workers'
        # already. Another one here would make Ray unpack the working directory again, under this process's feet.
        ray.init(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
        return
    # Workers run in directories of their own: let them import what the driver imports from its
    # working directory (a model.generator in the user's project, say).
    pythonpath = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    ray.init(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})


def check_tracking_store(uri: str) -> None:
    """A local MLflow store (SQLite, files) is only shared by workers on this machine: refuse a cluster with
    nodes on other hosts, where rank 0 would write to a store of its own."""
    import ray

    if not tracking.is_local_store(uri):
        return
    here = ray.util.get_node_ip_address()
    hosts = {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
    if hosts - {here}:
        raise ValueError(f"MLFLOW_TRACKING_URI: the run would be tracked in {tracking.redact(uri)}, a store on this "
                         f"machine, but {ray_target()} has nodes on other hosts ({', '.join(sorted(hosts - {here}))})"
                         "; set MLFLOW_TRACKING_URI to an MLflow server they all reach (cluster.yaml runs one)")


def run(spec: JobSpec, loop: Callable[[dict], Any] | None = None, show_progress: bool = True,
        run_name: str | None = None, resume: "Resumption | None" = None) -> RunOutcome:
    """Train `spec` on Ray Train and record it in MLflow. `loop` replaces the per-worker function (tests wrap it).
    A `run_name` that Ray Train ran before under the same storage path (a resubmitted job) continues from that
    run's latest checkpoint, in the same MLflow run. `resume` (`ganorch run --resume`) continues from its
    checkpoint, in the MLflow run it came from when it names one."""
    keep_local()
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.progress import ProgressBoard, ProgressView, WorkerFailures
    from orchestrator.worker import train_loop_per_worker

    init_ray()  # an unreachable cluster fails here, before an MLflow run exists
    spec = for_workers(spec)
    datasets, skipped = None, None
    if spec.data.source == "ray-data":  # checked and opened before a run exists, like an unreachable cluster
        from orchestrator import ray_images

        check_data_cpus(spec)
        skipped = ray.remote(num_cpus=0)(ray_images.SkippedFiles).remote()
        datasets = {"train": ray_images.build_dataset(spec, skipped)}
    uri = tracking.tracking_uri()
    tracking.check_reachable(uri)
    check_tracking_store(uri)
    run_name = run_name or tracking.default_run_name(spec)
    if resume is not None and resume.run_id:
        run_id = resume.run_id
        tracking.reopen_run(uri, run_id, spec, f"resumed (ganorch run --resume) from step {resume.state['step']}: "
                                               f"{resume.origin}; Ray Train run {run_name}")
        tracking.client(uri).set_tag(run_id, tracking.TAG_TRAIN_RUN, run_name)
    else:
        run_id, _ = tracking.job_run(spec, uri, run_name)
    handed_over = {"resume_state": resume.state, "resume_origin": resume.origin} if resume else {}
    status, tags = "FAILED", {}
    try:
        board = ProgressBoard.remote()
        # After a worker fails, Ray Train restarts the worker group from the latest checkpoint it registered.
        run_config = RunConfig(name=run_name, storage_path=spec.tracking.storage_path,
                               checkpoint_config=CheckpointConfig(num_to_keep=spec.tracking.keep_checkpoints),
                               failure_config=FailureConfig(max_failures=spec.resources.max_failures),
                               callbacks=[WorkerFailures(board)])
        tracking.client(uri).set_tag(run_id, tracking.TAG_STORAGE, f"{run_config.storage_path.rstrip('/')}/{run_name}")
        trainer = TorchTrainer(
            loop or train_loop_per_worker,
            train_loop_config={"spec": spec.to_dict(), "tracking_uri": uri, "run_id": run_id, "progress": board,
                               "mlflow_env": tracking.environment(), **handed_over},
            **scaling(spec),
            datasets=datasets,
            run_config=run_config,
        )
        if show_progress:
            with ProgressView(board, spec.train.steps, spec.name):
                result = trainer.fit()
        else:
            result = trainer.fit()
        checkpoint_path = checkpoint.location(result.checkpoint) if result.checkpoint else None
        if checkpoint_path:
            tags[tracking.TAG_RAY_CHECKPOINT] = checkpoint_path
        outcome = RunOutcome(run_id, uri, result.return_value or {}, checkpoint_path)
        stopped = outcome.summary.get("stopped")
        tags[tracking.TAG_OUTCOME] = f"stopped: {stopped}" if stopped else "completed"
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C; SIGTERM (`ganorch stop`), which Ray's driver turns into exit
        status = "KILLED"
        raise
    finally:
        skipped_files = ray.get(skipped.read.remote()) if skipped is not None else []
        kept = tracking.end_run(uri, run_id, status, tags, skipped_files, spec.tracking.outage_wait_s)
    outcome.skipped_files = skipped_files
    outcome.unsent = [where for where in (outcome.summary.get("unsent"), f"{socket.gethostname()}:{kept}" if kept
                                          else None) if where]
    return outcome
