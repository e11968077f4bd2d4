"""Writes to MLflow that outlive its outages.

Metrics, tags and artifacts are put in an Outbox and a thread sends them in order, so training never waits on
MLflow; files that take time to make (a sample grid's PNG) are made by that thread too. While MLflow cannot be
reached (no connection, a timeout, a 429 or 5xx answer) they wait (files copied or made aside first), retried with
backoff; a warning says so once, and a line says when MLflow answers again. A write
that retrying cannot mend (a 4xx answer, a local error such as a missing file) is reported once, with what failed,
and set aside; the rest goes on. `close(wait_s)` gives MLflow that long to take what is
left, then keeps it on local disk, under ~/.ganorch/unsent/<run id>/ ($GANORCH_HOME), where `ganorch sync`
sends it later. Nothing secret is written there: no tracking URI, no credentials.
"""

import contextlib
import functools
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

from orchestrator.track import store
from orchestrator.track.redact import redact, redact_value

OPS_FILE = "ops.jsonl"          # what is left to send, in order
REFUSED_FILE = "refused.jsonl"  # writes that failed for good (a bad request, no permission, a missing file)
MAX_BACKOFF_S = 15.0
# MLflow's HTTP settings as the outbox's thread sees them, unless the environment sets them: its retries are the
# thread's business (MLflow's own would hold an op for minutes before saying anything). Other threads see the
# environment as it is.
OWN_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_thread = threading.local()


def unsent_root() -> Path:
    return Path(os.environ.get("GANORCH_HOME") or Path.home() / ".ganorch") / "unsent"


def send(c: Any, run_id: str, op: dict[str, Any], folder: Path, uri: str) -> None:
    """Carry out one op on MLflow client `c` (of tracking URI `uri`); files are relative to `folder`."""
    from mlflow.entities import Metric

    kind = op["op"]
    if kind == "metrics":
        c.log_batch(run_id, metrics=[Metric(k, v, op["timestamp"], op["step"]) for k, v in op["values"].items()])
    elif kind == "tags":
        for key, value in op["tags"].items():
            c.set_tag(run_id, key, value)
    elif kind == "artifacts":
        for name in op["files"]:
            c.log_artifact(run_id, str(folder / name), op["path"])
        if "image" in op and not op.get("image_logged"):  # also in MLflow's image charts, with a step slider
            from PIL import Image

            with Image.open(folder / op["files"][0]) as image:
                c.log_image(run_id, image, synchronous=True, **op["image"])
            op["image_logged"] = True  # a retry of the op logs the image no second time
    elif kind == "model":
        from orchestrator.track import generator_model

        generator_model.log_folder(uri, run_id, folder / op["files"][0], op["name"], op["step"], op["register_as"],
                                   tuple(op["aliases"]), done=op.setdefault("done", {}))
    elif kind == "dataset":
        from mlflow.entities import Dataset, DatasetInput, InputTag

        c.log_inputs(run_id, [DatasetInput(Dataset(**op["record"]), [InputTag("mlflow.data.context", "training")])])
    elif kind == "prune":
        store.prune_checkpoints(c, run_id, op["keep"])
    elif kind == "restart":
        store.record_restart(c, run_id, op["where"], op.get("resize"))
    elif kind == "end":
        c.set_terminated(run_id, op["status"])
    else:
        raise AssertionError(f"unknown op {kind}")


def outage(err: BaseException) -> bool:
    """Whether MLflow could not be reached or asked to be asked again later (429, 5xx), so that the write waits;
    anything else (a 4xx answer, a local error) retrying cannot mend."""
    import requests
    from mlflow.exceptions import RestException

    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, RestException):  # MLflow's answer, its code mapped to an HTTP status
            return err.get_http_status_code() in (429, *range(500, 600))
        if isinstance(err, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                            requests.exceptions.ChunkedEncodingError, ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if type(err).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):  # botocore
            return True
        response = getattr(err, "response", None)  # requests' Response; botocore's ClientError: a dict
        status = (response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(response, dict)
                  else getattr(response, "status_code", None))
        if isinstance(getattr(err, "code", None), int) and status is None:  # google-api-core's errors
            status = err.code
        if isinstance(status, int):
            return status == 429 or status >= 500
        if type(err).__name__ == "OperationalError":  # SQLAlchemy: a store that is locked or cannot be opened
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


@functools.cache
def scope_http_settings() -> None:
    """MLflow reads its HTTP settings from the environment at every request: give the outbox's thread (and a
    block under `own_http_settings`) its own."""
    from mlflow import environment_variables

    def reader(read: Callable[[], str | None], value: str) -> Callable[[], str | None]:
        def get_raw() -> str | None:
            found = read()
            return value if found is None and getattr(_thread, "outbox", False) else found
        return get_raw

    for name, value in OWN_HTTP_SETTINGS.items():
        setting = getattr(environment_variables, name)
        setting.get_raw = reader(setting.get_raw, value)


@contextlib.contextmanager
def own_http_settings() -> Iterator[None]:
    """Requests of this thread meanwhile fail at once while MLflow cannot be reached, as the outbox's do: for
    reads on the training path that have a fallback."""
    scope_http_settings()
    before, _thread.outbox = getattr(_thread, "outbox", False), True
    try:
        yield
    finally:
        _thread.outbox = before


def describe(op: dict[str, Any]) -> str:
    """What an op writes, in a few words."""
    kind = op["op"]
    if kind == "artifacts":
        return f"artifacts {', '.join(name.partition('/')[2] for name in op['files'])} under {op['path']}/"
    if kind == "tags":
        return f"tags {', '.join(op['tags'])}"
    if kind == "metrics":
        return f"metrics of step {op['step']}"
    if kind == "model":
        return f"model {op['name']} of step {op['step']}"
    if kind == "dataset":
        return f"dataset input {op.get('record', {}).get('name', '')}".strip()
    return kind


class Outbox:
    """One process's writes to one MLflow run (rank 0's, the driver's), sent in order by a thread."""

    def __init__(self, uri: str, run_id: str, name: str, notify: Callable[[str], None] | None = None,
                 held: bool = False):
        self.uri, self.client = uri, None  # the client is made by the thread: importing MLflow takes seconds
        self.where = redact(uri)
        self.run_id, self.name = run_id, name
        self.tagged: set[str] = set()  # the tags this outbox was given: an earlier start's kept value is older
        self.notify = notify or (lambda line: print(f"ganorch: {line}", flush=True))
        self.files = Path(tempfile.mkdtemp(prefix="ganorch-outbox-"))  # op files wait here until sent
        self.pending: deque[dict[str, Any]] = deque()
        self.kept_aside: list[dict[str, Any]] = []  # ops MLflow refused: kept on disk at close
        self.lock = threading.Condition()
        self.closing = False
        self.give_up = False
        self.sending = False
        self.held = held  # until release(), or close(): the thread neither sends nor imports MLflow
        self.down_since: float | None = None
        self.serial = 0
        self.thread = threading.Thread(target=self._run, name=f"ganorch-outbox-{name}", daemon=True)
        self.thread.start()

    # What the training loop calls: none of these waits on MLflow.
    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._put({"op": "metrics", "step": step, "timestamp": int(time.time() * 1000),
                   "values": {k: float(v) for k, v in values.items()}})

    # Redacted as they are put in, since what MLflow does not take is kept on disk.
    def tags(self, tags: dict[str, Any]) -> None:
        self.tagged.update(tags)
        self._put({"op": "tags", "tags": {k: redact_value(k, v) for k, v in tags.items()}})

    def artifacts(self, paths: list[Path], artifact_path: str) -> None:
        """Files to log under `artifact_path`; they are copied (or linked) aside at once, so the caller may
        delete them."""
        self.serial += 1
        folder = self.files / f"{self.serial:06d}"  # a folder each: MLflow names an artifact by its file name
        folder.mkdir()
        for path in paths:
            with store.redacted_copy(path) as source:
                try:
                    os.link(source, folder / path.name)
                except OSError:
                    shutil.copy2(source, folder / path.name)
        self._put({"op": "artifacts", "files": [f"{folder.name}/{p.name}" for p in paths], "path": artifact_path})

    def render(self, name: str, write: Callable[[Path], None], artifact_path: str,
               image_key: str | None = None, step: int | None = None) -> None:
        """A file that the thread makes, when it comes to it, by `write(path)` (a PNG that takes an import and an
        encoding, say), then logs under `artifact_path` as `name`; with `image_key`, an image that is also logged
        as MLflow's image `image_key` at `step`."""
        self.serial += 1
        folder = self.files / f"{self.serial:06d}"
        folder.mkdir()
        image = {"image": {"key": image_key, "step": step, "timestamp": int(time.time() * 1000)}} if image_key else {}
        self._put({"op": "artifacts", "files": [f"{folder.name}/{name}"], "path": artifact_path, **image,
                   "write": functools.partial(write, folder / name)})

    def model(self, built: Path, name: str, step: int, register_as: str | None = None,
              aliases: tuple[str, ...] = ()) -> None:
        """The MLflow model folder `built` (moved here at once), to log as model `name` of the run at `step` (and
        register as a version of `register_as`, with `aliases`)."""
        self.serial += 1
        folder = self.files / f"{self.serial:06d}"
        folder.mkdir()
        shutil.move(built, folder / "model")
        self._put({"op": "model", "files": [f"{folder.name}/model"], "name": name, "step": step,
                   "register_as": register_as, "aliases": list(aliases)})

    def dataset(self, record: Callable[[], dict[str, Any]]) -> None:
        """The run's training dataset as an MLflow input: `record()` (name, digest, source type, source, profile),
        called by the thread when it comes to it (a digest reads the data)."""
        op: dict[str, Any] = {"op": "dataset"}

        def write() -> None:  # its name and source are paths, which may carry a token in a query string
            op["record"] = {k: redact(v) if k in ("name", "source") else v for k, v in record().items()}

        op["write"] = write
        self._put(op)

    def release(self) -> None:
        """Start sending, for an outbox made `held`."""
        with self.lock:
            self.held = False
            self.lock.notify_all()

    def prune(self, keep: int) -> None:
        self._put({"op": "prune", "keep": keep})

    def restart(self, where: str, resize: str | None = None) -> None:
        self._put({"op": "restart", "where": redact(where), "resize": resize and redact(resize)})

    def end(self, status: str) -> None:
        self._put({"op": "end", "status": status})

    def _put(self, op: dict[str, Any]) -> None:
        with self.lock:
            assert not self.closing, "the outbox is closed"
            self.pending.append(op)
            self.lock.notify_all()

    def _run(self) -> None:
        _thread.outbox = True
        backoff = 1.0
        while True:
            with self.lock:
                while (not self.pending or self.held) and not self.closing:
                    self.lock.wait()
                if self.give_up or not self.pending:  # closed: gone past its wait, or all sent
                    return
                op = self.pending[0]
                self.sending = True
            draw(op)
            if "refused" in op:
                with self.lock:
                    self.sending = False
                    if self.pending and self.pending[0] is op:
                        self.pending.popleft()
                        self.kept_aside.append(op)
                        self.notify(f"warning: could not make {describe(op)}: {op['refused']}; the run goes on")
                    self.lock.notify_all()
                continue
            try:
                if self.client is None:
                    scope_http_settings()
                    self.client = store.client(self.uri)
                send(self.client, self.run_id, op, self.files, self.uri)
            except Exception as err:
                with self.lock:
                    self.sending = False
                    if not outage(err):  # retrying cannot mend it: set aside (kept on disk), the rest goes on
                        if self.pending and self.pending[0] is op:  # else close() has kept it already
                            self.pending.popleft()
                            self.kept_aside.append({**op, "refused": redact(first_line(err))})
                        self.notify(f"warning: could not write {describe(op)} to MLflow at {self.where} "
                                    f"({type(err).__name__}: {first_line(err)}); it is set aside, kept on local disk "
                                    "at the end of the run, and the run goes on")
                        continue
                    if self.down_since is None:
                        self.down_since = time.time()
                        self.notify(f"warning: MLflow at {self.where} cannot be reached ({first_line(err)}); "
                                    "training goes on, and what it logs waits to be sent")
                    undrawn = [waiting for waiting in self.pending if "write" in waiting]
                for waiting in undrawn:  # what waits for MLflow waits on disk, not in memory
                    if self.give_up:  # close() has stopped waiting: it draws the rest itself
                        break
                    draw(waiting)
                with self.lock:
                    self.lock.wait(backoff)  # woken early by close()
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            with self.lock:
                self.sending = False
                if self.pending and self.pending[0] is op:  # else close() has kept it already
                    self.pending.popleft()
                for name in op.get("files", []):
                    shutil.rmtree(self.files / name.partition("/")[0], ignore_errors=True)
                if self.down_since is not None:
                    self.notify(f"MLflow at {self.where} answers again after {time.time() - self.down_since:.0f} s; "
                                "sending what waited")
                    self.down_since = None
                backoff = 1.0
                self.lock.notify_all()

    def wait_sent(self, timeout_s: float) -> bool:
        """Wait until everything put so far is sent (or set aside), unless MLflow cannot be reached; at most
        `timeout_s`. Whether it was all sent."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            self.held = False
            self.lock.notify_all()
            while (self.pending or self.sending) and self.down_since is None and time.monotonic() < deadline:
                self.lock.wait(min(1.0, max(deadline - time.monotonic(), 0.01)))
            return not (self.pending or self.sending)

    def close(self, wait_s: float) -> Path | None:
        """Send everything; while MLflow cannot be reached, wait up to `wait_s` for it to come back. Keep what it
        did not take on local disk and return that folder (None when all was sent)."""
        deadline = time.monotonic() + wait_s
        with self.lock:
            self.closing = True
            self.lock.notify_all()
            while (self.pending or self.sending) and (self.down_since is None or time.monotonic() < deadline):
                self.lock.wait(min(1.0, max(deadline - time.monotonic(), 0.01)))
            self.give_up = True
            self.lock.notify_all()
        self.thread.join(timeout=float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", 30)) + 5)
        with self.lock:
            left = [*self.kept_aside, *self.pending]
            self.pending.clear()
        for op in left:
            if op.get("drawing"):  # the thread, stuck, is still making its file: kept as refused, not half-made
                op["refused"] = "its file was still being made when the run ended"
            draw(op)
        if not left:
            shutil.rmtree(self.files, ignore_errors=True)
            return None
        return self._keep(left)

    def _keep(self, ops: list[dict[str, Any]]) -> Path:
        folder = unsent_root() / self.run_id / self.name
        folder.mkdir(parents=True, exist_ok=True)
        renamed: dict[str, str] = {}  # an op's file folder -> its name here, beside those an earlier start kept
        for op in ops:
            if "files" not in op:
                continue
            names = []
            for name in op["files"]:
                serial, _, rest = name.partition("/")
                if serial not in renamed:
                    renamed[serial] = free_name(folder, serial)
                names.append(f"{renamed[serial]}/{rest}")
                if (self.files / name).exists():
                    (folder / names[-1]).parent.mkdir(exist_ok=True)
                    shutil.move(self.files / name, folder / names[-1])
            op["files"] = names
        waiting, refused = [op for op in ops if "refused" not in op], [op for op in ops if "refused" in op]
        if waiting:  # after what an earlier start of the run kept here; whole or not at all, if this process is killed
            _rewrite(folder / OPS_FILE, [*read_ops(folder / OPS_FILE), *waiting])
        if refused:  # for people to read
            with open(folder / REFUSED_FILE, "a") as f:
                f.writelines(json.dumps(op) + "\n" for op in refused)
        (folder / "run.json").write_text(json.dumps({"run_id": self.run_id, "host": socket.gethostname()}))
        shutil.rmtree(self.files, ignore_errors=True)
        return folder


def free_name(folder: Path, name: str) -> str:
    """`name`, or `name`.1, .2, ... if `folder` holds it already."""
    taken, n = name, 0
    while (folder / taken).exists():
        n += 1
        taken = f"{name}.{n}"
    return taken


def draw(op: dict[str, Any]) -> None:
    """Write the file of an op that `Outbox.render` put, once. If that fails, the op is refused (set aside and kept
    with the reason, like a write MLflow refused)."""
    write = op.pop("write", None)
    if write is None:
        return
    op["drawing"] = True
    try:
        write()
    except Exception as err:
        op["refused"] = redact(f"{type(err).__name__}: {first_line(err)}")
    finally:
        op.pop("drawing", None)


def first_line(err: BaseException) -> str:
    text = redact(str(err)).strip().splitlines()  # redacted before it is cut
    return (text[0] if text else type(err).__name__)[:200]


def sync(folder: Path, uri: str, newer_tags: frozenset[str] | set[str] = frozenset()) -> tuple[str, int]:
    """Send what a run kept in `folder` (ops.jsonl and its files) to MLflow at `uri`, in order; metric points
    already there are not sent twice, nor tags in `newer_tags` (set since by a later start of the run); an op
    MLflow refuses is set aside in refused.jsonl, and the rest go on. Returns the run id and how many ops were
    sent. The folder is removed once all of it is sent."""
    meta = json.loads((folder / "run.json").read_text())
    ops_file = folder / OPS_FILE
    ops = read_ops(ops_file)
    c = store.client(uri)
    run = c.get_run(meta["run_id"])
    logged: dict[str, set[int]] = {}
    for key in run.data.metrics:
        logged[key] = {m.step for m in c.get_metric_history(meta["run_id"], key)}
    refused = 0
    for i, op in enumerate(ops):
        if op["op"] == "metrics":
            op = {**op, "values": {k: v for k, v in op["values"].items() if op["step"] not in logged.get(k, set())}}
            if not op["values"]:
                continue
        if op["op"] == "tags":
            op = {**op, "tags": {k: v for k, v in op["tags"].items() if k not in newer_tags}}
            if not op["tags"]:
                continue
        try:
            send(c, meta["run_id"], op, folder, uri)
            if op["op"] == "metrics":  # two starts may have kept the same step
                for key in op["values"]:
                    logged.setdefault(key, set()).add(op["step"])
        except Exception as err:
            if outage(err):
                _rewrite(ops_file, ops[i:])  # with what the failed op made already, so that the next sync skips it
                raise
            with open(folder / REFUSED_FILE, "a") as f:  # for people to read; the ops after it go on
                f.write(json.dumps({**op, "refused": redact(first_line(err))}) + "\n")
            _rewrite(ops_file, ops[i + 1:])
            refused += 1
            continue
        if op["op"] in ("model", "artifacts"):  # what a sync that stops later must not send again
            _rewrite(ops_file, ops[i + 1:])
    if (folder / REFUSED_FILE).exists():  # kept for people to read; the rest is done
        for item in folder.iterdir():
            if item.name not in (REFUSED_FILE, "run.json"):
                shutil.rmtree(item) if item.is_dir() else item.unlink()
    else:
        shutil.rmtree(folder)
        if folder.parent.parent == unsent_root():
            with contextlib.suppress(OSError):  # the run's folder, once the last of its writers' is sent
                folder.parent.rmdir()
    return meta["run_id"], len(ops) - refused


def read_ops(ops_file: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ops_file.read_text().splitlines() if line.strip()] if ops_file.exists() else []


def _rewrite(ops_file: Path, ops: list[dict[str, Any]]) -> None:
    temporary = ops_file.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(op) + "\n" for op in ops))
    os.replace(temporary, ops_file)
