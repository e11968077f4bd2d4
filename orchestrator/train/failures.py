"""Why a run's workers failed, in words (which rank; killed, or which exception; at which step), and the guard on
Ray Train's controller that ends a run at once when an error in the training code recurs after a restart, instead
of restarting the workers into it again."""

import re
import traceback
from dataclasses import dataclass
from typing import Any

from ray.train import UserCallback

from orchestrator.track.redact import redact

TRACEBACK_ATTR = "ganorch_traceback"  # set on an exception by the worker that raised it: Ray drops the traceback


class RecurringError(Exception):
    """Raised on Ray Train's controller: the same error in the training code as before the last restart. Ray Train
    does not restart the workers after an error of its controller's callbacks."""

    def __init__(self, what: str, trace: str | None):
        super().__init__(what, trace)
        self.what, self.trace = what, trace

    def __str__(self) -> str:
        return self.what


@dataclass(frozen=True)
class RankFailure:
    rank: int
    kind: str               # "killed" (its process died or stopped answering), "error" (the training code
                            # raised), "collateral" (a collective that lost its peer)
    text: str               # "ValueError: ...", or how the process ended
    trace: str | None = None


def remember_traceback(err: BaseException) -> None:
    """On the worker that raised `err`: keep its traceback on it, for the driver's message."""
    try:
        setattr(err, TRACEBACK_ATTR, "".join(traceback.format_exception(err)))
    except AttributeError:  # an exception type without a __dict__
        pass


def classify(worker_exceptions: dict[int, BaseException]) -> list[RankFailure]:
    from ray.exceptions import ActorUnavailableError, RayActorError

    failures = []
    for rank, err in sorted(worker_exceptions.items()):
        inner = getattr(err, "health_check_failure", None)  # Ray Train's health check of the worker failed
        if isinstance(err, RayActorError) or isinstance(inner, RayActorError):
            failures.append(RankFailure(rank, "killed", "its process died: killed, out of memory or crashed"))
        elif inner is not None or isinstance(err, ActorUnavailableError):
            failures.append(RankFailure(rank, "killed", f"it stopped answering: {first_line(inner or err)}"))
        elif collateral(err):
            failures.append(RankFailure(rank, "collateral", first_line(err)))
        else:
            failures.append(RankFailure(rank, "error", first_line(err), getattr(err, TRACEBACK_ATTR, None)))
    return failures


def collateral(err: BaseException) -> bool:
    """A collective that failed because another rank went away (gloo's `Connection reset by peer`, NCCL's abort)."""
    import torch.distributed as dist

    text = str(err)
    return isinstance(err, (dist.DistBackendError, dist.DistNetworkError)) or (
        isinstance(err, RuntimeError) and any(word in text for word in ("gloo", "NCCL", "Connection reset by peer",
                                                                      "Connection closed by peer")))


def code_errors(failures: list[RankFailure]) -> frozenset[str]:
    """What the training code raised, when no process was lost, numbers left out (sizes, ids, ports): the same
    set again after a restart that made no progress is no accident."""
    if any(f.kind == "killed" for f in failures):
        return frozenset()
    return frozenset(re.sub(r"\d+", "N", f.text) for f in failures if f.kind == "error")


def describe(failures: list[RankFailure]) -> str:
    """`rank 1 was lost (its process died: ...)`, `ranks 0, 1 raised ValueError: ...`; collateral errors only when
    nothing else."""
    shown = [f for f in failures if f.kind != "collateral"] or failures
    parts = []
    for kind, text in dict.fromkeys((f.kind, f.text) for f in shown):
        ranks = [f.rank for f in shown if (f.kind, f.text) == (kind, text)]
        who = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))}"
        if kind == "killed":
            parts.append(f"{who} was lost ({text})")
        elif kind == "error":
            parts.append(f"{who} raised {text}")
        else:
            parts.append(f"{who} lost a collective ({text})")
    return "; ".join(parts)


def first_trace(failures: list[RankFailure]) -> str | None:
    return next((f.trace for f in failures if f.trace), None)


def first_line(err: BaseException) -> str:
    lines = [line for line in redact(str(err)).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0].strip().rstrip('.') if lines else ''}"[:300]


class FailureWatch(UserCallback):
    """On Ray Train's controller, after workers failed: tells the board why (for the restart that follows), and
    ends the run when the training code raises what it raised before the last restart, with no checkpoint
    reported in between (an error that comes back hours later, after progress, gets its restart)."""

    def __init__(self, board: Any):
        self.board = board
        self.last: frozenset[str] = frozenset()  # the code's errors that caused the last restart

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if checkpoint is not None:
            self.last = frozenset()

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        failures = classify(worker_exceptions)
        self.board.failed.remote(describe(failures))
        errors = code_errors(failures)
        if errors and errors == self.last:
            raise RecurringError(f"{describe(failures)}, again after a restart", first_trace(failures))
        self.last = errors


@dataclass(eq=False)
class TrainingFailed(Exception):
    """A run whose workers failed for good: what failed, and the traceback of the training code's error when there
    is one; where the run stood (from rank 0's progress board)."""
    what: str
    trace: str | None
    run_id: str
    step: int | None = None             # the latest step rank 0 reported
    checkpoint_step: int | None = None  # its latest checkpoint's
    restarts: int = 0

    def __str__(self) -> str:
        return self.what


def explain(err: BaseException, run_id: str, progress: dict[str, Any]) -> TrainingFailed:
    """The TrainingFailed for what Ray Train's fit raised; `progress` is rank 0's board."""
    from ray.train import ControllerError, WorkerGroupError

    where = {"run_id": run_id, "step": progress.get("step"), "checkpoint_step": progress.get("checkpoint_step"),
             "restarts": progress.get("restarts", 0)}
    if isinstance(err, ControllerError) and isinstance(err.controller_failure, RecurringError):
        recurring = err.controller_failure
        return TrainingFailed(f"{recurring.what}, so it was not retried", recurring.trace, **where)
    if isinstance(err, WorkerGroupError):
        failures = classify(err.worker_failures)
        return TrainingFailed(describe(failures), first_trace(failures), **where)
    if isinstance(err, ControllerError):
        return TrainingFailed(f"Ray Train's controller failed: {first_line(err.controller_failure)}", None, **where)
    return TrainingFailed(f"Ray Train gave up: {first_line(err)}", None, **where)  # e.g. nodes preempted too often
