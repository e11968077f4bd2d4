"""MLflow: where results go, the run's lifecycle on the driver, and rank 0's logging during training."""

import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from orchestrator.schema import flatten
from orchestrator.spec import JobSpec

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient

    from orchestrator.stability import Flag

# A run's tags that ganorch sets.
TAG_JOB = "ganorch.job"
TAG_CHECKPOINT = "ganorch.checkpoint"            # artifact path of the latest checkpoint in the run
TAG_RAY_CHECKPOINT = "ganorch.ray_checkpoint"    # the final checkpoint in Ray Train's storage (a path or URI)
TAG_STORAGE = "ganorch.storage"                  # where Ray Train keeps the run's checkpoints: storage_path/run name
TAG_DATA_SKIPPED = "ganorch.data_skipped"        # how many images could not be decoded (listed in data/)
TAG_CLASSIFIER = "ganorch.classifier"            # the cached domain classifier behind the eval metrics
TAG_CLASSIFIER_ACCURACY = "ganorch.classifier_accuracy"  # its accuracy on its held-out share of the data
TAG_INCEPTION = "ganorch.inception"              # whether Inception features are used: "on: <weights>" or "off: <why>"
TAG_BEST_CHECKPOINT = "ganorch.best_checkpoint"  # artifact path of the checkpoint with the lowest FID so far
TAG_BEST_FID = "ganorch.best_fid"                # that FID, and the step it was reached at:
TAG_BEST_STEP = "ganorch.best_step"
TAG_UNSTABLE = "ganorch.unstable."               # + flag name: "<flag> at step N: <reason>"
TAG_OUTCOME = "ganorch.outcome"                  # "completed", or "stopped: <flag> at step N: <reason>"
TAG_EVALUATED = "ganorch.evaluated"              # an eval run: the checkpoint it scored
TAG_TRAIN_RUN = "ganorch.train_run"              # the Ray Train run's name (= the submission id of a submitted job)
TAG_RESTARTS = "ganorch.restarts"                # how many times the run was restarted (workers that failed,
                                                 # a resubmitted job, a Tune trial)
TAG_RESTART = "ganorch.restart."                 # + n: what restart n continued from
TAG_RESUMED_FROM = "ganorch.resumed_from"        # the checkpoint the latest start of the workers continued from
TAG_PASSED_OVER = "ganorch.passed_over"          # corrupted checkpoints a start of the workers passed over, and why
TAG_WORKERS = "ganorch.workers"                  # where each rank ran: "rank 0: node ... (host, device); ..."
BEST_CHECKPOINT_DIR = "checkpoints/best"


# Keys whose values are never logged (param values, spec.yaml): they name secrets.
SECRET_KEY = re.compile(r"token|key|secret|password|passwd|credential", re.IGNORECASE)


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded default: an SQLite store in the working directory.
    Absolute, because Ray Train workers run in directories of their own."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def environment() -> dict[str, str]:
    """This process's MLflow settings (MLFLOW_*: tracking URI, credentials, TLS, timeouts), for the processes that
    log on other machines. They hold secrets, so they travel as task arguments (train_loop_config, a trial's
    parameters) and never in Ray's runtime environment, whose every value Ray's runtime-env agent writes to its
    log; nor into params, tags, artifacts or output."""
    return {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}


def adopt(env: dict[str, str] | None) -> None:
    """Take the driver's MLflow settings (`environment()`) in a worker or trial process."""
    os.environ.update(env or {})


def is_local_store(uri: str) -> bool:
    """An SQLite database or a folder of files: a store on this machine's disk, not a server."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def client(uri: str):
    import logging

    from mlflow import MlflowClient

    # The first use of an SQLite store runs schema migrations that log at INFO.
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(uri)


def start_run(spec: JobSpec, uri: str) -> tuple[str, str]:
    """Create the job's run (experiment made if missing) with the resolved spec as params and as `spec.yaml`.
    Returns the run's id and name."""
    c = client(uri)
    experiment = c.get_experiment_by_name(spec.experiment)
    experiment_id = experiment.experiment_id if experiment else c.create_experiment(spec.experiment)
    run_name = default_run_name(spec)
    return create_run(spec, uri, experiment_id, run_name), run_name


def default_run_name(spec: JobSpec) -> str:
    """The job's name and the time: names both the MLflow run and the Ray Train run."""
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def create_run(spec: JobSpec, uri: str, experiment_id: str, run_name: str, tags: dict[str, str] | None = None,
               params: dict[str, Any] | None = None) -> str:
    """A run holding the spec's keys (and `params`) as params and the spec as `spec.yaml`; returns its id.
    A tag `mlflow.parentRunId` nests it under that run."""
    from mlflow.entities import Param

    c = client(uri)
    run = c.create_run(experiment_id, run_name=run_name, tags={TAG_JOB: spec.name, **(tags or {})})
    values = {**flatten(spec.to_dict()), **(params or {})}
    items = [Param(k, redact_value(k, v)) for k, v in values.items()]
    for start in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=items[start:start + 100])
    c.log_text(run.info.run_id, spec_text(spec), "spec.yaml")
    return run.info.run_id


def redact_value(key: str, value: Any) -> str:
    """A param's value fit to log: masked when its key names a secret, credentials masked in a URI."""
    if SECRET_KEY.search(key.rpartition(".")[2]):
        return "***"
    return redact(value) if isinstance(value, str) and "://" in value else str(value)


def spec_text(spec: JobSpec) -> str:
    """The spec as YAML, with what `redact_value` masks masked."""
    import yaml

    def masked(data: dict[str, Any]) -> dict[str, Any]:
        return {k: masked(v) if isinstance(v, dict) else
                (redact_value(k, v) if SECRET_KEY.search(k) or (isinstance(v, str) and "://" in v) else v)
                for k, v in data.items()}

    return yaml.safe_dump(masked(spec.to_dict()), sort_keys=False, default_flow_style=None)


def job_run(spec: JobSpec, uri: str, run_name: str) -> tuple[str, int]:
    """The run of Ray Train run `run_name`, and how many times it was started before. A first start creates it;
    a later one (a resubmitted job, which Ray Train continues from its latest checkpoint) reopens it."""
    c = client(uri)
    experiment = c.get_experiment_by_name(spec.experiment)
    experiment_id = experiment.experiment_id if experiment else c.create_experiment(spec.experiment)
    found = c.search_runs([experiment_id], filter_string=f"tags.`{TAG_TRAIN_RUN}` = '{run_name}'")
    if not found:
        return create_run(spec, uri, experiment_id, run_name, tags={TAG_TRAIN_RUN: run_name}), 0
    run_id = found[0].info.run_id
    return run_id, reopen_run(uri, run_id, spec, f"resubmitted: Ray Train run {run_name} continues from its "
                                                 "latest checkpoint")


def reopen_run(uri: str, run_id: str, spec: JobSpec, where: str) -> int:
    """Mark a run RUNNING again for restart n (returned): tags say what it continues from, and the spec it now
    runs is `restarts/<n>/spec.yaml` (params, logged at the first start, cannot change)."""
    c = client(uri)
    start = record_restart(c, run_id, where)
    c.log_text(run_id, spec_text(spec), f"restarts/{start}/spec.yaml")
    c.update_run(run_id, status="RUNNING")
    return start


def record_restart(c: "MlflowClient", run_id: str, where: str) -> int:
    """Count one more restart of the run (returned) and say in its tag what it continues from."""
    start = int(c.get_run(run_id).data.tags.get(TAG_RESTARTS, 0)) + 1
    c.set_tag(run_id, TAG_RESTARTS, str(start))
    c.set_tag(run_id, f"{TAG_RESTART}{start}", where)
    return start


def redact(uri: str) -> str:
    """A URI fit to print or log: credentials in it (https://user:password@host) are masked."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def ui_hint(uri: str) -> str:
    """How to look at the results in a browser."""
    if uri.startswith("sqlite:///"):
        return f"see it with: mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000)"
    return f"see it at {redact(uri)}" if uri.startswith("http") else f"tracking store: {redact(uri)}"


def end_run(uri: str, run_id: str, status: str, tags: dict[str, str] | None = None,
            skipped_files: list[str] | None = None, wait_s: float = 60.0) -> Path | None:
    """The driver's last writes: `tags`, the training images that could not be decoded (a count tag and
    `data/skipped_files.txt`), and the run's status. MLflow gets `wait_s` to take them; returns where what it
    did not take was kept."""
    from orchestrator.outbox import Outbox

    outbox = Outbox(uri, run_id, "driver")
    if skipped_files:
        tags = {**(tags or {}), TAG_DATA_SKIPPED: str(len(skipped_files))}
    outbox.tags(tags or {})
    if skipped_files:
        with tempfile.TemporaryDirectory(prefix="ganorch-skipped-") as tmp:
            listing = Path(tmp) / "skipped_files.txt"
            listing.write_text("".join(f"{p}\n" for p in skipped_files))
            outbox.artifacts([listing], "data")
    outbox.end(status)
    return outbox.close(wait_s)


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """A tracking server must answer before a run starts; ValueError naming MLFLOW_TRACKING_URI if not."""
    import socket
    from urllib.parse import urlsplit

    if not uri.startswith(("http://", "https://")):
        try:
            client(uri).search_experiments(max_results=1)  # an unsupported scheme, a store that cannot be opened
        except Exception as err:
            raise ValueError(f"MLFLOW_TRACKING_URI: cannot open the MLflow tracking store {redact(uri)}: "
                             f"{str(err).strip().splitlines()[0][:300]}") from None
        return
    parts = urlsplit(uri)
    try:
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
    except (OSError, ValueError) as err:
        raise ValueError(f"MLFLOW_TRACKING_URI: cannot reach the MLflow tracking server at {redact(uri)} "
                         f"({err}); is it up, and is the address right?") from None


def image_grid(images: "torch.Tensor", nrow: int) -> np.ndarray:
    """Images in [-1, 1], shape (N, C, H, W) -> one uint8 HxWxC grid."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


class RunLogger:
    """Rank 0's handle on the run the driver created. Reads happen at once; writes go through an Outbox, so an
    MLflow outage never stops training (`close` says where what could not be sent was kept)."""

    def __init__(self, uri: str, run_id: str, notify: Callable[[str], None] | None = None):
        from orchestrator.outbox import Outbox

        self.client = client(uri)
        self.run_id = run_id
        self.outbox = Outbox(uri, run_id, "rank0", notify)
        self.logged_through: dict[str, int] = {}  # metric -> the last step logged before a resume
        self.floor = -1                            # when those could not be read: the checkpoint's step

    def resuming(self, step: int) -> None:
        """Training goes on from the checkpoint of `step`, so it takes again steps that may have been logged after
        it: those are not logged twice. On the same hardware a resume retakes them exactly. (With MLflow out of
        reach, only the steps up to the checkpoint's are known to be logged.)"""
        try:
            for key in self.client.get_run(self.run_id).data.metrics:
                history = self.client.get_metric_history(self.run_id, key)
                self.logged_through[key] = max((m.step for m in history), default=-1)
        except Exception:
            self.floor = step

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        fresh = {k: v for k, v in metrics.items() if step > max(self.logged_through.get(k, -1), self.floor)}
        if fresh:
            self.outbox.metrics(step, fresh)

    def log_samples(self, step: int, images: "torch.Tensor", columns: int) -> None:
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="ganorch-samples-") as tmp:
            path = Path(tmp) / f"step_{step:06d}.png"
            Image.fromarray(image_grid(images, columns)).save(path)
            self.outbox.artifacts([path], "samples")

    def log_checkpoint(self, step: int, path: Path, keep: int | None = None) -> str:
        """Log the checkpoint (and its checksum) as `checkpoints/step_N/`; with `keep`, delete all but the latest
        `keep` of those. Returns the checkpoint's artifact path."""
        artifact_dir = f"checkpoints/step_{step:06d}"
        self.outbox.artifacts(sorted(path.parent.iterdir()), artifact_dir)
        if keep is not None:
            self.outbox.prune(keep)
        return f"{artifact_dir}/{path.name}"

    def log_best_checkpoint(self, step: int, path: Path, fid: float) -> None:
        """Replace the run's best checkpoint (`checkpoints/best/`) and say which step and FID it holds."""
        self.outbox.artifacts(sorted(path.parent.iterdir()), BEST_CHECKPOINT_DIR)
        self.outbox.tags({TAG_BEST_CHECKPOINT: f"{BEST_CHECKPOINT_DIR}/{path.name}", TAG_BEST_FID: f"{fid:.4f}",
                          TAG_BEST_STEP: step})

    def log_flag(self, flag: "Flag") -> None:
        """A stability flag: metric `unstable.<flag>` = 1 at its step, and a tag with the reason."""
        self.log_metrics(flag.step, {f"unstable.{flag.name}": 1.0})
        self.set_tag(TAG_UNSTABLE + flag.name, flag.describe())

    def record_restart(self, where: str) -> None:
        self.outbox.restart(where)

    def set_tag(self, key: str, value: Any) -> None:
        self.outbox.tags({key: value})

    def close(self, wait_s: float) -> Path | None:
        """Send what is left, waiting up to `wait_s` for MLflow; returns where what it did not take was kept."""
        return self.outbox.close(wait_s)


def prune_checkpoints(c: "MlflowClient", run_id: str, keep: int) -> None:
    """Delete all but the latest `keep` of the run's periodic checkpoints (`checkpoints/step_N/`)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    periodic = sorted(a.path for a in c.list_artifacts(run_id, "checkpoints")
                      if a.is_dir and a.path.rpartition("/")[2].startswith("step_"))
    if len(periodic) <= keep:
        return
    repo = get_artifact_repository(c.get_run(run_id).info.artifact_uri, tracking_uri=c.tracking_uri)
    for old in periodic[:-keep]:
        repo.delete_artifacts(old)
