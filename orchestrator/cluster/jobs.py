"""Jobs on a Ray cluster, through Ray's job server: submit a job spec, then watch, stop and list jobs.

A submitted job runs `ganorch run` on the cluster, in a copy of the working directory (the job spec and the
user's own modules) with ganorch's code as it is here. Its id names its Ray Train run, so submitting the same id
again continues the run from its latest checkpoint, in the same MLflow run.

Each submission of an id is an attempt, a Ray job of its own: the first's submission id is the id itself, the
k-th's `ID--attempt-k`. (Reusing a Ray submission id means deleting the old job while Ray's job manager may still
be watching it, and that watcher then fails the new job.) status, logs and stop act on the latest attempt.
"""

import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.cluster.environment import runtime_env
from orchestrator.track.redact import redact

TERMINAL_WAIT_S = 60.0
ATTEMPT = "--attempt-"  # ID--attempt-k: the Ray submission id of an id's k-th attempt
# A Ray job's metadata: the job spec, and the ganorch id and attempt it is.
META_JOB, META_ID, META_ATTEMPT = "ganorch.job", "ganorch.id", "ganorch.attempt"


@dataclass
class Submission:
    job_id: str
    ray_id: str              # this attempt's Ray submission id
    resubmitted: str | None  # the status of the attempt before, when there was one
    entrypoint: str


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
        name = (last.metadata or {}).get(META_JOB) or f"(not ganorch) {redact(last.entrypoint)[:40]}"
        rows.append(f"{job_id:<32} {last.status.value:<10} {len(jobs):>8}  {stamp(last.start_time):<19}  {name}")
    return "\n".join(rows)


def stamp(milliseconds: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(milliseconds / 1000)) if milliseconds else "-"
