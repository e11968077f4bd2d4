"""Jobs on a Ray cluster, through Ray's job server: submit a job spec, then watch, stop and list jobs.

A submitted job runs `ganorch run` on the cluster, in a copy of the working directory (the job spec and the
user's own modules) with ganorch's code as it is here. Its submission id names its Ray Train run, so
submitting the same id again continues the run from its latest checkpoint, in the same MLflow run.
"""

import importlib.util
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import tracking

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # where `ray dashboard cluster.yaml` forwards the head's job server
# Not uploaded with the working directory: local results and stores (Ray also skips what .gitignore and
# .rayignore list).
EXCLUDES = ["mlflow.db", "mlruns/", "mlartifacts/", ".git/", "__pycache__/", "*.pt", ".ganorch/"]
TERMINAL_WAIT_S = 60.0
ENV_PACKAGE, ENV_FILE = "ganorch_submitted_env", "mlflow_env.json"  # MLflow's settings, sent with a job


@dataclass
class Submission:
    submission_id: str
    resubmitted: str | None  # the earlier job of that id's status, when it was submitted again
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
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as err:
        reason = str(err).splitlines()[0]
        raise ValueError(f"Ray's job server at {address} refused {source} ({reason}); get the cluster's token "
                         "with `ray get-auth-token` on its head and put it in RAY_AUTH_TOKEN or ~/.ray/auth_token") \
            from None
    except ConnectionError:
        raise ValueError(f"cannot reach Ray's job server at {address}: is the cluster up, and for cluster.yaml is "
                         "`ray dashboard cluster.yaml` forwarding its port 8265 here? (--address, or "
                         "RAY_API_SERVER_ADDRESS, names another)") from None
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{address} does not answer as Ray's job server: {err}") from None


def submit(client: Any, job: str, overrides: list[str], submission_id: str) -> Submission:
    """Send `job` (validated here already) to run as `ganorch run` under `submission_id`. An earlier job of that
    id that has ended is replaced, and its run continues; one still running is refused."""
    job_path = Path(job).expanduser().resolve()
    workdir = Path.cwd().resolve()
    if not job_path.is_relative_to(workdir):
        raise ValueError(f"{job}: the job spec must be inside the working directory ({workdir}), which is what "
                         "is sent to the cluster; run ganorch submit from a folder that holds it")
    previous = status_of(client, submission_id)
    if previous is not None and not previous.is_terminal():
        raise ValueError(f"--id: job {submission_id} is {previous.value}; stop it first (ganorch stop "
                         f"{submission_id}), then submit it again to continue from its latest checkpoint")
    command = ["python3", "-m", "orchestrator.cli", "run", job_path.relative_to(workdir).as_posix(),
               *(arg for override in overrides for arg in ("--set", override)), "--run-name", submission_id]
    entrypoint = shlex.join(command)
    if previous is not None:  # Ray keeps ids unique; the log file (appended to) keeps the earlier attempts
        client.delete_job(submission_id)
    with tempfile.TemporaryDirectory(prefix="ganorch-submit-") as tmp:
        client.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env(workdir, tmp),
                          metadata={"ganorch.job": job_path.relative_to(workdir).as_posix()})
    return Submission(submission_id, previous.value if previous is not None else None, entrypoint)


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


def status_of(client: Any, submission_id: str) -> Any:
    """The job's JobStatus, or None when the server has no job of that id."""
    try:
        return client.get_job_status(submission_id)
    except RuntimeError as err:
        if "404" in str(err) or "does not exist" in str(err):
            return None
        raise


def require(client: Any, submission_id: str) -> Any:
    status = status_of(client, submission_id)
    if status is None:
        raise ValueError(f"no job {submission_id} on this cluster (ganorch list shows its jobs)")
    return status


def describe(client: Any, submission_id: str) -> str:
    require(client, submission_id)
    info = client.get_job_info(submission_id)
    lines = [f"job {submission_id}: {info.status.value}",
             f"  entrypoint: {info.entrypoint}",
             f"  started:    {stamp(info.start_time)}" + (f"   ended: {stamp(info.end_time)}" if info.end_time else "")]
    if info.message:  # a failed job's message goes on with its last logs: `ganorch logs` shows them
        lines.append(f"  message:    {info.message.splitlines()[0]}")
    if info.driver_exit_code is not None:
        lines.append(f"  exit code:  {info.driver_exit_code}")
    return "\n".join(lines)


def logs(client: Any, submission_id: str, follow: bool) -> None:
    """Print the job's output so far; with `follow`, go on until the job ends."""
    import asyncio

    require(client, submission_id)
    if not follow:
        print(client.get_job_logs(submission_id), end="")
        return

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            print(chunk, end="", flush=True)

    asyncio.run(tail())


def stop(client: Any, submission_id: str, wait_s: float = TERMINAL_WAIT_S) -> str:
    """Ask the job to stop (its driver ends its MLflow run as KILLED) and wait until it has; its final status."""
    status = require(client, submission_id)
    if status.is_terminal():
        return status.value
    client.stop_job(submission_id)
    deadline = time.monotonic() + wait_s
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.get_job_status(submission_id)
    return status.value


def listing(client: Any) -> str:
    jobs = sorted((j for j in client.list_jobs() if j.submission_id), key=lambda j: j.start_time or 0)
    if not jobs:
        return "no jobs"
    rows = [f"{'id':<32} {'status':<10} {'started':<19}  job"]
    for job in jobs:
        name = (job.metadata or {}).get("ganorch.job") or f"(not ganorch) {job.entrypoint[:40]}"
        rows.append(f"{job.submission_id:<32} {job.status.value:<10} {stamp(job.start_time):<19}  {name}")
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
