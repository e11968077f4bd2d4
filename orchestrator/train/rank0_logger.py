"""Rank 0's RunLogger for one start of the workers, with the tags that say where the ranks run and what this start
continues from (a checkpoint, one taken on another kind of device, a restart after a failure, corrupted checkpoints
passed over)."""

import datetime
from typing import Any

from orchestrator.track.run_logger import RunLogger
from orchestrator.track.tags import TAG_PASSED_OVER, TAG_RESUMED_FROM, TAG_WORKERS
from orchestrator.train import resume


def open_logger(context: Any) -> RunLogger:
    """The logger of `context` (a WorkerContext) on rank 0, its start recorded in the run. A fresh start's is held:
    it sends nothing (and does not import MLflow, seconds of rank 0's start that the other ranks would wait for at
    DDP's first broadcast) until the loop releases it after the first step. A continued run's first sends what a
    start before it kept on this host, reads MLflow (what was logged), then sends its restart's tags at once, in
    case this start dies too."""
    board = context.progress
    fresh = not (context.resume or context.restart)
    logger = RunLogger(context.tracking_uri, context.run_id,
                       notify=(lambda line: board.notice.remote(line)) if board is not None else None, held=True)
    if context.placement:
        logger.set_tag(TAG_WORKERS, "; ".join(f"rank {r}: {where}" for r, where in enumerate(context.placement)))
    if not fresh:
        logger.resuming(context.resume["step"] if context.resume else 0)  # sends what a start before kept here
        logger.release()  # then this start's writes, after those
    changed = resume.device_change(context.resume, context.device) if context.resume else None
    if context.resume and context.resumed_from:
        logger.set_tag(TAG_RESUMED_FROM, f"step {context.resume['step']}: {context.resumed_from}"
                                         + (f" ({changed})" if changed else ""))
    if changed and board is not None:
        board.notice.remote(f"checkpoint {changed}")
    if context.passed_over:
        logger.set_tag(TAG_PASSED_OVER, "; ".join(context.passed_over))
        if board is not None:
            board.notice.remote(f"passed over a corrupted checkpoint: {context.passed_over[0]}")
    if context.restart:
        restart = context.restart
        origin = (f"step {context.resume['step']}: {context.resumed_from}" if context.resume
                  else "the start (no checkpoint yet)")
        at = f"{restart.workers} worker{'s' if restart.workers > 1 else ''}"
        resize = None
        if restart.resized:
            when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            resize = (f"{when}: {restart.before} -> {at} {restart.why()}; continued from step "
                      f"{context.resume['step'] if context.resume else 0}")
        logger.record_restart(f"workers restarted {restart.why()}, on {at}; continued from {origin}", resize)
    return logger
