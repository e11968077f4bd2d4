"""Jobs on a Ray cluster, through Ray's job server: submit a job spec, then watch, stop and list jobs.

A submitted job runs `ganorch run` on the cluster, in a copy of the working directory (the job spec and the
user's own modules) with ganorch's code as it is here. Its id names its Ray Train run, so submitting the same id
again continues the run from its latest checkpoint, in the same MLflow run.

Each submission of an id is an attempt, a Ray job of its own: the first's submission id is the id itself, the
k-th's `ID--attempt-k`. (Reusing a Ray submission id means deleting the old job while Ray's job manager may still
be watching it, and that watcher then fails the new job.) status, logs and stop act on the latest attempt.
"""

import importlib.util
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchestrator import tracking

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # where `ray dashboard cluster.yaml` forwards the head's job server
# Not uploaded with the working directory: local results and stores (Ray also skips what .gitignore and
# .rayignore list).
EXCLUDES = ["mlflow.db", "mlruns/", "mlartifacts/", ".git/", "__pycache__/", "*.pt", ".ganorch/"]
TERMINAL_WAIT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
ENV_PACKAGE, ENV_FILE = "ganorch_submitted_env", "mlflow_env.json"  # MLflow's settings, sent with a job
ATTEMPT = "--attempt-"  # ID--attempt-k: the Ray submission id of an id's k-th attempt
# A Ray job's metadata: the job spec, and the ganorch id and attempt it is.
META_JOB, META_ID, META_ATTEMPT = "ganorch.job", "ganorch.id", "ganorch.attempt"


@dataclass
class Submission:
    job_id: str
    ray_id: str              # this attempt's Ray submission id
    resubmitted: str | None  # the status of the attempt before, when there was one
    entrypoint: str


def address_of(flag: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS or an http RAY_ADDRESS (as Ray's own `ray job` reads them), else
    the local port `ray dashboard` forwards."""
    ray_address = os.environ.get("RAY_ADDRESS", "")
    address = (flag or os.environ.get("RAY_API_SERVER_ADDRESS")
               or (ray_address if ray_address.startswith("http") else None) or DEFAULT_ADDRESS)
    return address if "://" in address else f"http://{address}"


def token() -> tuple[str | None, str]:
    """Ray's token, looked up as Ray does (RAY_AUTH_TOKEN, then the file at RAY_AUTH_TOKEN_PATH, then
    ~/.ray/auth_token), and where it came from. Sent whether or not RAY_AUTH_MODE is set here: the cluster
    decides whether it needs one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), "the token in RAY_AUTH_TOKEN"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if os.environ.get("RAY_AUTH_TOKEN_PATH") and not path.is_file():
        raise ValueError(f"RAY_AUTH_TOKEN_PATH: no token file {path}")
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), f"the token in {path}"
    return None, "no token (none in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"


def connect(address: str) -> Any:
    """A JobSubmissionClient that reached the job server and was let in; ValueError saying why not."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    secret, source = token()
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    unreachable = ValueError(f"cannot reach Ray's job server at {address}: is the cluster up, and for cluster.yaml "
                             "is `ray dashboard cluster.yaml` forwarding its port 8265 here? (--address, or "
                             "RAY_API_SERVER_ADDRESS, names another)")
    try:  # Ray's client would wait on an address that never answers for as long as TCP does
        parts = urlsplit(address)
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError):
        raise unreachable from None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as err:
        reason = str(err).splitlines()[0]
        raise ValueError(f"Ray's job server at {address} refused {source} ({reason}); get the cluster's token "
                         "with `ray get-auth-token` on its head and put it in RAY_AUTH_TOKEN or ~/.ray/auth_token") \
            from None
    except ConnectionError:
        raise unreachable from None
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{address} does not answer as Ray's job server: {err}") from None


def submit(client: Any, job: str, overrides: list[str], job_id: str) -> Submission:
    """Send `job` (validated here already) to run as `ganorch run` under `job_id`. When the id's latest attempt
    has ended, this is its next attempt and the run continues; one still running is refused."""
    job_path = Path(job).expanduser().resolve()
    workdir = Path.cwd().resolve()
    if not job_path.is_relative_to(workdir):
        raise ValueError(f"{job}: the job spec must be inside the working directory ({workdir}), which is what "
                         "is sent to the cluster; run ganorch submit from a folder that holds it")
    if not job_id or ATTEMPT in job_id or "/" in job_id:
        raise ValueError(f"--id: {job_id!r} cannot name a job (not empty, no '/', no '{ATTEMPT}')")
    earlier = attempts(client, job_id)
    previous = earlier[-1] if earlier else None
    if previous is not None and not previous.status.is_terminal():
        raise ValueError(f"--id: job {job_id} is {previous.status.value}; stop it first (ganorch stop "
                         f"{job_id}), then submit it again to continue from its latest checkpoint")
    attempt = attempt_of(previous) + 1 if previous is not None else 1
    ray_id = job_id if attempt == 1 else f"{job_id}{ATTEMPT}{attempt}"
    command = ["python3", "-m", "orchestrator.cli", "run", job_path.relative_to(workdir).as_posix(),
               *(arg for override in overrides for arg in ("--set", override)), "--run-name", job_id]
    entrypoint = shlex.join(command)
    metadata = {META_JOB: job_path.relative_to(workdir).as_posix(), META_ID: job_id, META_ATTEMPT: str(attempt)}
    with tempfile.TemporaryDirectory(prefix="ganorch-submit-") as tmp:
        try:
            client.submit_job(entrypoint=entrypoint, submission_id=ray_id, runtime_env=runtime_env(workdir, tmp),
                              metadata=metadata)
        except RuntimeError as err:
            if "already exists" not in str(err):
                raise
            raise ValueError(f"--id: {ray_id} was submitted meanwhile, from elsewhere; see ganorch status "
                             f"{job_id}") from None
    return Submission(job_id, ray_id, previous.status.value if previous is not None else None, entrypoint)


def runtime_env(workdir: Path, scratch: str) -> dict[str, Any]:
    """The working directory; ganorch's packages as they are here (unless the working directory holds them); and
    this environment's MLflow settings and credentials, as a package written in `scratch`. Not as env_vars: Ray's
    runtime-env agent logs those, and its dashboard shows them."""
    packages = [Path(importlib.util.find_spec(name).submodule_search_locations[0])
                for name in ("orchestrator", "gan_models")]
    modules = [str(p) for p in packages if not p.is_relative_to(workdir)]
    if tracking.environment():
        package = Path(scratch, ENV_PACKAGE)
        package.mkdir()
        (package / "__init__.py").write_text('"""MLflow settings that `ganorch submit` sent with a job."""\n')
        (package / ENV_FILE).write_text(json.dumps(tracking.environment()))
        modules.append(str(package))
    env: dict[str, Any] = {"working_dir": str(workdir), "excludes": EXCLUDES}
    if modules:
        env["py_modules"] = modules
    return env


def adopt_submitted_environment() -> None:
    """In a submitted job's driver: take the MLflow settings `ganorch submit` sent (over the cluster's own)."""
    found = importlib.util.find_spec(ENV_PACKAGE)
    if found is not None and found.submodule_search_locations:
        tracking.adopt(json.loads(Path(found.submodule_search_locations[0], ENV_FILE).read_text()))


def attempts(client: Any, job_id: str) -> list[Any]:
    """The Ray jobs (JobDetails) submitted under `job_id`, first attempt first; a job submitted to Ray directly
    under that submission id counts as one."""
    found = [j for j in client.list_jobs() if j.submission_id == job_id or (j.metadata or {}).get(META_ID) == job_id]
    return sorted(found, key=attempt_of)


def attempt_of(job: Any) -> int:
    return int((job.metadata or {}).get(META_ATTEMPT) or 1)


def latest(client: Any, job_id: str) -> Any:
    found = attempts(client, job_id)
    if not found:
        raise ValueError(f"no job {job_id} on this cluster (ganorch list shows its jobs)")
    return found[-1]


def describe(client: Any, job_id: str) -> str:
    found = attempts(client, job_id)
    info = latest(client, job_id)
    lines = [f"job {job_id}: {info.status.value}",
             f"  entrypoint: {info.entrypoint}",
             f"  started:    {stamp(info.start_time)}" + (f"   ended: {stamp(info.end_time)}" if info.end_time else "")]
    if len(found) > 1:
        lines.append(f"  attempt:    {attempt_of(info)} (Ray job {info.submission_id}); before it: "
                     + ", ".join(f"{j.submission_id} {j.status.value}" for j in found[:-1]))
    if info.message:  # a failed job's message goes on with its last logs: `ganorch logs` shows them
        lines.append(f"  message:    {info.message.splitlines()[0]}")
    if info.driver_exit_code is not None:
        lines.append(f"  exit code:  {info.driver_exit_code}")
    return "\n".join(lines)


def logs(client: Any, job_id: str, follow: bool) -> str:
    """Print the output of the job's attempts so far; with `follow`, go on until the latest ends. Returns the
    latest attempt's status then."""
    import asyncio

    found = attempts(client, job_id)
    if not found:
        raise ValueError(f"no job {job_id} on this cluster (ganorch list shows its jobs)")
    for job in found if not follow else found[-1:]:
        if len(found) > 1:
            print(f"=== {job_id}, attempt {attempt_of(job)} (Ray job {job.submission_id}) ===", flush=True)
        if not follow:
            print(client.get_job_logs(job.submission_id), end="")
    if follow:
        async def tail() -> None:
            async for chunk in client.tail_job_logs(found[-1].submission_id):
                print(chunk, end="", flush=True)

        asyncio.run(tail())
    return client.get_job_status(found[-1].submission_id).value


def stop(client: Any, job_id: str, wait_s: float = TERMINAL_WAIT_S) -> str:
    """Ask the job to stop (its driver ends its MLflow run as KILLED) and wait until it has; its final status."""
    ray_id = latest(client, job_id).submission_id
    status = client.get_job_status(ray_id)
    if status.is_terminal():
        return status.value
    client.stop_job(ray_id)
    deadline = time.monotonic() + wait_s
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(ray_id)
    return status.value


def listing(client: Any) -> str:
    """One row per job id (its latest attempt), oldest first."""
    by_id: dict[str, list[Any]] = {}
    for job in client.list_jobs():
        if job.submission_id:
            by_id.setdefault((job.metadata or {}).get(META_ID) or job.submission_id, []).append(job)
    if not by_id:
        return "no jobs"
    rows = [f"{'id':<32} {'status':<10} {'attempts':>8}  {'started':<19}  job"]
    for job_id, jobs in sorted(by_id.items(), key=lambda item: min(j.start_time or 0 for j in item[1])):
        last = max(jobs, key=attempt_of)
        name = (last.metadata or {}).get(META_JOB) or f"(not ganorch) {last.entrypoint[:40]}"
        rows.append(f"{job_id:<32} {last.status.value:<10} {len(jobs):>8}  {stamp(last.start_time):<19}  {name}")
    return "\n".join(rows)


def stamp(milliseconds: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(milliseconds / 1000)) if milliseconds else "-"


def warn_local_tracking() -> None:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        print("ganorch: note: MLFLOW_TRACKING_URI is not set here; the job is tracked where the cluster's "
              "MLFLOW_TRACKING_URI points (cluster.yaml: its MLflow server)", file=sys.stderr)
    elif tracking.is_local_store(uri):
        print(f"ganorch: warning: MLFLOW_TRACKING_URI is a local store ({tracking.redact(uri)}); the job writes to "
              "that path on the cluster's machines, not to this one", file=sys.stderr)
