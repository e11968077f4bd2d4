"""Where results go: the tracking URI (the embedded SQLite default, or a server), an MLflow client on it, and the
two writes that read the run first (counting a restart, pruning checkpoints)."""

import contextlib
import functools
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from orchestrator.track.redact import masked, redact, redact_value
from orchestrator.track.tags import TAG_RESIZE, TAG_RESIZES, TAG_RESTART, TAG_RESTARTS

if TYPE_CHECKING:
    from mlflow import MlflowClient

TEXT_SUFFIXES = {".txt", ".yaml", ".yml", ".json", ".jsonl", ".csv", ".md", ".log", ".html"}


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
    """ganorch's MLflow client on `uri`, whose model registry is that of `uri` too (not the process's registry
    URI): every param, tag and text artifact it writes is redacted."""
    import logging

    # The first use of an SQLite store runs schema migrations that log at INFO.
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return _redacting_client()(uri, registry_uri=uri)


_PROCESS_URIS = threading.RLock()  # held by process_uris


@contextlib.contextmanager
def process_uris(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking and registry URIs are `uri` meanwhile, for MLflow's functions that take no
    client (`download_artifacts` of a `models:/` URI, the registry's resolving of a model's source); then they, and
    the environment variables MLflow sets with them, are as they were. Process-wide: ganorch's threads that use it
    (an outbox's, `ganorch sample`'s) take turns; code of one's own that reads MLflow's URIs on another thread
    meanwhile sees `uri`."""
    with _PROCESS_URIS:
        yield from _process_uris(uri)


def _process_uris(uri: str) -> Iterator[None]:
    import mlflow
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = tracking._tracking_uri, registry._registry_uri, {name: os.environ.get(name) for name in names}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking.set_tracking_uri(before[0])  # MLflow's setter: its tracer provider follows the URI back
        registry._registry_uri = before[1]
        for name, value in before[2].items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@functools.cache
def _redacting_client() -> type:
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    class RedactingClient(MlflowClient):
        def create_run(self, experiment_id, start_time=None, tags=None, run_name=None):
            tags = {k: redact_value(k, v) for k, v in (tags or {}).items()}
            return super().create_run(experiment_id, start_time, tags, run_name)

        def set_tag(self, run_id, key, value, synchronous=None):
            return super().set_tag(run_id, key, redact_value(key, value), synchronous=synchronous)

        def log_param(self, run_id, key, value, synchronous=None):
            return super().log_param(run_id, key, redact_value(key, value), synchronous=synchronous)

        def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
            params = [Param(p.key, redact_value(p.key, p.value)) for p in params]
            tags = [RunTag(t.key, redact_value(t.key, t.value)) for t in tags]
            return super().log_batch(run_id, metrics, params, tags, synchronous=synchronous)

        def log_text(self, run_id, text, artifact_file):
            return super().log_text(run_id, redact(text), artifact_file)

        def log_dict(self, run_id, dictionary, artifact_file):
            return super().log_dict(run_id, masked(dictionary), artifact_file)

        def log_artifact(self, run_id, local_path, artifact_path=None):
            with redacted_copy(Path(local_path)) as path:
                return super().log_artifact(run_id, str(path), artifact_path)

        def log_artifacts(self, run_id, local_dir, artifact_path=None):
            for path in sorted(Path(local_dir).rglob("*")):
                if path.is_file():
                    where = path.parent.relative_to(local_dir).as_posix()
                    inner = "/".join(p for p in (artifact_path, "" if where == "." else where) if p)
                    self.log_artifact(run_id, str(path), inner or None)

    return RedactingClient


@contextlib.contextmanager
def redacted_copy(path: Path) -> Iterator[Path]:
    """`path`, or for a text file holding secrets a redacted copy of it with the same name."""
    if path.suffix.lower() not in TEXT_SUFFIXES or not path.is_file():
        yield path
        return
    text = path.read_text(errors="replace")
    if redact(text) == text:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ganorch-redacted-") as tmp:
        copy = Path(tmp) / path.name
        copy.write_text(redact(text))
        yield copy


def check_before_start(uri: str) -> None:
    """What can be known of a tracking store before Ray starts, without importing MLflow (seconds) where that can be
    done: an SQLite file must open as a database (one that does not exist yet, MLflow makes), a server must answer
    on its port; other stores MLflow opens (`check_reachable`). ValueError naming MLFLOW_TRACKING_URI if not.
    MLflow itself opens the store while Ray starts (ray_init.start_ray_beside)."""
    import sqlite3
    from urllib.parse import quote

    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") and "?" not in uri else None
    if path is None or path in ("", ":memory:"):
        return check_reachable(uri)
    database = Path(path)
    try:
        if not database.exists():  # MLflow makes it, and the folders above it
            return
        with contextlib.closing(sqlite3.connect(f"file:{quote(str(database))}?mode=ro", uri=True)) as db:
            db.execute("PRAGMA schema_version")
    except (sqlite3.Error, OSError) as err:
        raise ValueError(f"MLFLOW_TRACKING_URI: cannot open the MLflow tracking store {redact(uri)}: "
                         f"{redact(str(err))[:300]}") from None


def check_reachable(uri: str, timeout_s: float = 10.0) -> None:
    """A tracking server must answer before a run starts; ValueError naming MLFLOW_TRACKING_URI if not."""
    import socket
    from urllib.parse import urlsplit

    if not uri.startswith(("http://", "https://")):
        try:
            client(uri).search_experiments(max_results=1)  # an unsupported scheme, a store that cannot be opened
        except Exception as err:
            raise ValueError(f"MLFLOW_TRACKING_URI: cannot open the MLflow tracking store {redact(uri)}: "
                             f"{redact(str(err)).strip().splitlines()[0][:300]}") from None
        return
    parts = urlsplit(uri)
    try:
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
    except (OSError, ValueError) as err:
        raise ValueError(f"MLFLOW_TRACKING_URI: cannot reach the MLflow tracking server at {redact(uri)} "
                         f"({err}); is it up, and is the address right?") from None


def ui_hint(uri: str, page: str = "") -> str:
    """How to look at the results in a browser; `page`, a path of MLflow's UI (runs.ui_hint's)."""
    if uri.startswith("sqlite:///"):
        return f"see it with: mlflow ui --backend-store-uri {uri}   (then http://127.0.0.1:5000{page})"
    return f"see it at {redact(uri).rstrip('/')}{page}" if uri.startswith("http") else f"tracking store: {redact(uri)}"


def record_restart(c: "MlflowClient", run_id: str, where: str, resize: str | None = None) -> int:
    """Count one more restart of the run (returned) and say in its tag what it continues from; a restart at another
    number of workers is also counted as a resize, and `resize` says it."""
    tags = c.get_run(run_id).data.tags
    start = int(tags.get(TAG_RESTARTS, 0)) + 1
    c.set_tag(run_id, TAG_RESTARTS, str(start))
    c.set_tag(run_id, f"{TAG_RESTART}{start}", where)
    if resize is not None:
        n = int(tags.get(TAG_RESIZES, 0)) + 1
        c.set_tag(run_id, TAG_RESIZES, str(n))
        c.set_tag(run_id, f"{TAG_RESIZE}{n}", resize)
    return start


def prune_checkpoints(c: "MlflowClient", run_id: str, keep: int) -> None:
    """Delete all but the latest `keep` of the run's periodic checkpoints (`checkpoints/step_N/`)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    periodic = sorted((a.path for a in c.list_artifacts(run_id, "checkpoints")
                       if a.is_dir and a.path.rpartition("/")[2].removeprefix("step_").isdigit()),
                      key=lambda path: int(path.rpartition("_")[2]))  # by step: step_1000000 comes after step_999999
    if len(periodic) <= keep:
        return
    repo = get_artifact_repository(c.get_run(run_id).info.artifact_uri, tracking_uri=c.tracking_uri)
    for old in periodic[:-keep]:
        repo.delete_artifacts(old)
