"""The per-worker training loop, top to bottom: fetch batches, D phase(s), G phase, EMA, then at interval ends
metrics, samples, evaluation, stop decisions and checkpoints. `train` runs it on any process group."""

import math
import socket
import time
from dataclasses import dataclass
from typing import Any

import torch

from orchestrator.distributed import collectives, ddp
from orchestrator.distributed.collectives import StatsAccumulator
from orchestrator.evaluate.stability import FLAGS, StabilityMonitor
from orchestrator.spec import JobSpec
from orchestrator.track.system_metrics import NodeMetrics
from orchestrator.train.build import Training, build
from orchestrator.train.generator_models import log_generators
from orchestrator.train.periodic import (
    Outcome,
    ProgressPost,
    Throughput,
    agree_counts,
    checkpoint_and_report,
    interval_metrics,
    log_ending,
    log_samples,
    stop_decision,
    take_scores,
)
from orchestrator.train.phases import run_phase
from orchestrator.train.rank0_logger import open_logger


@dataclass(frozen=True)
class Restart:
    """Why Ray Train started the workers again: the failure of the ones before (None: an elastic group grew), and
    the group's size before and now."""
    failure: str | None
    before: int | None  # the size of the last group whose rank 0 started (None: none did)
    workers: int

    @property
    def resized(self) -> bool:
        return self.before is not None and self.before != self.workers

    def why(self) -> str:
        if self.failure is not None:
            return f"after a failure ({self.failure})"
        if not self.resized:
            return "after a failure"
        return ("to grow the elastic group, as the cluster had room" if self.workers > self.before else
                "to shrink the elastic group, as the cluster had less room")


@dataclass
class WorkerContext:
    """What a worker needs besides the spec: where it runs and who it reports to (rank 0 only)."""
    device: torch.device
    tracking_uri: str | None = None
    run_id: str | None = None
    progress: Any = None    # a ProgressBoard handle
    data_shard: Any = None  # this worker's share of a Ray Data stream (data.source 'ray-data')
    resume: dict[str, Any] | None = None  # a checkpoint's state to continue from
    resumed_from: str | None = None       # where that checkpoint is, for the run's tags
    passed_over: list[str] | None = None  # later checkpoints that were corrupted, and why
    placement: list[str] | None = None    # per rank: where it runs, for the run's tags
    restart: Restart | None = None        # rank 0 of workers Ray Train restarted: why, and at what size
    verdicts: Any = None    # in a Tune trial: a queue that gives rank 0 Tune's go-ahead after each report
    started_at: float | None = None  # when the driver started (Unix time): rank 0 logs the time to the first step
    node_leader: bool = False        # the first worker on its node: it logs the node's system metrics


def train(spec: JobSpec, context: WorkerContext, report=None) -> dict[str, Any]:
    """Train G and D up to step `spec.train.steps`, from the start or from `context.resume`. Returns rank 0's
    summary (final metrics, state digests; `unsent`: where what MLflow did not take was kept)."""
    logger = open_logger(context) if collectives.rank() == 0 and context.run_id else None
    try:
        summary = train_logged(spec, context, logger, report)
    except BaseException:
        if logger:
            logger.close(0)  # what was not sent yet is kept; a restart from a checkpoint logs its steps again
        raise
    unsent = logger.close(spec.tracking.outage_wait_s) if logger else None
    return {**summary, "unsent": f"{socket.gethostname()}:{unsent}" if unsent else None}


def train_logged(spec: JobSpec, context: WorkerContext, logger: Any, report=None) -> dict[str, Any]:
    """The loop itself; rank 0 logs through `logger` (None elsewhere, and without a run)."""
    t = build(spec, context, logger)
    try:
        return loop(spec, context, logger, report, t)
    finally:
        if t.scoring:
            t.scoring.close()
        if t.node_metrics:
            t.node_metrics.stop()


def loop(spec: JobSpec, context: WorkerContext, logger: Any, report: Any, t: Training) -> dict[str, Any]:
    """Steps from `t.step` to train.steps, or to the step a stop is agreed at."""
    track = spec.tracking
    stats = StatsAccumulator(t.device)
    monitor = StabilityMonitor(spec.train.stability_window, spec.train.loss)
    stop_on = [name for name in FLAGS if name in spec.train.stop_on]
    if logger and not t.step:
        log_samples(logger, t)
    speed = Throughput(spec.train.batch_size * spec.train.n_critic, t.step)
    progress = ProgressPost(context.progress if t.rank == 0 else None)
    out = Outcome(best_fid=logger.best_fid if logger else math.inf, best_step=logger.best_step if logger else 0)
    if logger and context.started_at and not context.restart:
        logger.log_metrics(t.step, {"startup_s": time.time() - context.started_at})
    first_step = t.step + 1
    while t.step < spec.train.steps and out.stopped is None:
        t.step += 1
        t.images_seen += speed.images_per_step
        t.ramp_conditioning()
        for phase in t.phases:
            for step_stats, applied in run_phase(phase, t.batches, t.draw_latent, t.draw_uniform, t.weight):
                stats.add(step_stats, counted=applied, weight=t.weight)
        t.ema.update(t.G, t.step)
        progress.step(t.step, speed)
        if t.step == first_step:  # MLflow's import and the first writes wait until training has started
            if logger:
                logger.release()
            if context.node_leader and context.run_id and spec.tracking.system_metrics_every_s:
                t.node_metrics = NodeMetrics(context.tracking_uri, context.run_id, spec.tracking.system_metrics_every_s)

        last = t.step == spec.train.steps
        flags = []
        measured = t.step % track.metrics_every == 0 or last
        evaluated = t.scoring is not None and (t.step % spec.eval.every == 0 or last)
        checkpointed = t.step % track.checkpoint_every == 0 or last
        looked_at = measured or evaluated or checkpointed  # the steps with collectives beyond DDP's
        if looked_at:
            agree_counts(t)
        if measured:
            out.metrics = interval_metrics(t, stats, speed)
            flags += monitor.observe(t.step, out.metrics)
            if logger:
                logger.log_metrics(t.step, out.metrics)
            progress.metrics(t.step, out.metrics)
        if logger and (t.step % track.samples_every == 0 or last):
            log_samples(logger, t)
        if evaluated:
            t.scoring.submit(t)
        if looked_at:
            flags += take_scores(t, out, monitor, logger, wait=checkpointed)  # a checkpoint reports them all
            out.stopped = stop_decision(t, monitor, stop_on, flags, logger)
            if out.stopped is not None and not checkpointed:
                take_scores(t, out, monitor, logger, wait=True, log_flags=True)
        if checkpointed or out.stopped is not None:
            checkpoint_and_report(t, out, logger, report, context.verdicts)
            progress.checkpointed(t.step)
    ended = summary(t, out, monitor, context)
    if logger:  # after the last collective: the other ranks need not wait
        try:
            log_ending(logger, t)
            log_generators(logger, t, out)
        except Exception as err:  # the training is done and checkpointed: what it could not log, it says
            logger.warn(f"the run's end was not all logged ({type(err).__name__}: {str(err).strip()[:300]})")
    return ended


def summary(t: Training, out: Outcome, monitor: StabilityMonitor, context: WorkerContext) -> dict[str, Any]:
    """What the run ended with. Parameters are hashed alone, without the buffer alignment a checkpoint does: proof
    that DDP kept the ranks in step."""
    parameters = ddp.gather_digests(t.modules(), parameters_only=True)
    return {"step": t.step, "metrics": out.metrics, "eval": out.scores, "snapshot_digests": out.digests,
            "parameter_digests": parameters, "workers": context.placement,
            "flags": [f.describe() for f in monitor.raised.values()],
            "stopped": out.stopped.describe() if out.stopped else None,
            "best_fid": out.best_fid if math.isfinite(out.best_fid) else None, "best_step": out.best_step}
