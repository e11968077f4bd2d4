"""What the per-worker loop does at the ends of its intervals: metrics, sample grids, evaluation and the best
checkpoint, stop decisions, checkpoints and reports. Each is one call in the loop; the ones that lead to
collectives are taken by every rank, with decisions agreed from rank 0."""

import math
import queue
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from orchestrator.distributed import collectives, ddp
from orchestrator.distributed.collectives import StatsAccumulator
from orchestrator.evaluate.stability import Flag, StabilityMonitor
from orchestrator.spec.job import NONFINITE_PATIENCE
from orchestrator.track.tags import TAG_CHECKPOINT
from orchestrator.train import checkpoint
from orchestrator.train.build import Training
from orchestrator.train.networks import interpolation_latents, sample
from orchestrator.train.phases import STREAK_FIELDS, Phase
from orchestrator.train.scoring import Scored

PROGRESS_EVERY_S = 1.0
# How long rank 0 waits for Tune's verdict on a report, which usually comes within seconds: under the process
# group's timeout (Ray Train's: 30 min), so the error rank 0 raises is the one the run fails with, not the others'
# collective timing out.
VERDICT_TIMEOUT_S = 600.0


@dataclass
class Outcome:
    """What the loop has found so far: the latest interval's metrics and evaluation, the state digests of the latest
    checkpoint, the best FID, and the flag that stopped the run."""
    metrics: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    digests: dict[str, list[str]] = field(default_factory=dict)
    best_fid: float = math.inf
    best_generator: dict[str, torch.Tensor] | None = None  # rank 0: G_ema's state at the best FID, in host memory
    best_step: int = 0
    stopped: Flag | None = None


class Throughput:
    """Real images through D per second, across all workers, since the last restart."""

    def __init__(self, images_per_step: int, step: int = 0):
        self.images_per_step = images_per_step
        self.restart(step)

    def restart(self, step: int) -> None:
        self.start_step, self.start_time = step, time.perf_counter()

    def rate(self, step: int) -> float:
        return (step - self.start_step) * self.images_per_step / (time.perf_counter() - self.start_time)


class ProgressPost:
    """Rank 0's latest numbers for the driver's progress line (a ProgressBoard), at most once a second; a no-op
    without a board."""

    def __init__(self, board: Any):
        self.board, self.last = board, 0.0

    def step(self, step: int, speed: Throughput) -> None:
        if self.board and time.perf_counter() - self.last > PROGRESS_EVERY_S:
            self.board.post.remote({"step": step, "images_per_sec": speed.rate(step)})
            self.last = time.perf_counter()

    def metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.board:
            self.board.post.remote({"step": step, "metrics_step": step, **metrics})

    def checkpointed(self, step: int) -> None:
        if self.board:
            self.board.post.remote({"step": step, "checkpoint_step": step})


def agree_counts(t: Training) -> None:
    """Under fp16, make every rank's skip and overflow counts the largest of the ranks' (one all-reduce, where they
    are read: at metrics, evaluation and checkpoint steps): a rank counts its own non-finite losses. Without fp16 every count
    comes from all-reduced gradients and is alike everywhere already."""
    if not any(p.scaler is not None for p in t.phases):
        return
    streaks = [streak for p in t.phases for streak in (p.skipped, p.overflowed)]
    agreed = collectives.largest_over_ranks(
        torch.stack([torch.as_tensor(getattr(s, f), device=t.device) for s in streaks for f in STREAK_FIELDS]).long())
    for i, s in enumerate(streaks):
        for j, f in enumerate(STREAK_FIELDS):
            setattr(s, f, agreed[i * len(STREAK_FIELDS) + j])


def interval_metrics(t: Training, stats: StatsAccumulator, speed: Throughput) -> dict[str, float]:
    """The interval's means over steps and ranks (one all-reduce), with throughput, rates, skipped steps and an
    augmentation's p (adjusted first when it adapts)."""
    metrics = {**stats.reduce(), "images_per_sec": speed.rate(t.step), "images_seen": t.images_seen,
               "num_workers": t.world_size,
               "lr_g": t.opt_g.param_groups[0]["lr"], "lr_d": t.opt_d.param_groups[0]["lr"],
               **{f"skipped_{p.name.lower()}": p.skipped.counts()[0] for p in t.phases},
               **{f"overflow_{p.name.lower()}": p.overflowed.counts()[0] for p in t.phases if p.scaler is not None}}
    speed.restart(t.step)
    if t.augment is not None:
        if t.augment.adaptive:  # the signal is alike on every rank: so is the new p
            if "d_real_sign" in metrics:  # missing when no D step of the interval was applied
                t.augment.adapt(metrics["d_real_sign"], t.images_seen - t.augment_adapted_at)
            t.augment_adapted_at = t.images_seen
        metrics["augment_p"] = t.augment.p
    if t.spec.train.condition_ramp is not None:
        metrics["condition_strength"] = t.condition_strength
    return metrics


def log_samples(logger: Any, t: Training) -> None:
    z, labels, columns = t.fixed
    logger.log_samples(t.step, sample(t.ema.module, z, labels), columns)


def log_ending(logger: Any, t: Training) -> None:
    """Rank 0, at the end: a latent-interpolation strip of G_ema and the GIF of the sample grids."""
    z, labels, columns = interpolation_latents(t.spec, t.classes, t.device)
    logger.log_interpolation(t.step, sample(t.ema.module, z, labels), columns)
    logger.log_animation()


def take_scores(t: Training, out: Outcome, monitor: StabilityMonitor, logger: Any, wait: bool,
                log_flags: bool = False) -> list[Flag]:
    """The evaluations scored since the last look (in-line: this step's; in the background: those the evaluator
    finished, all of them with `wait`), in step order: rank 0 logs them at their steps, the monitor looks at them,
    the best is kept. Returns the flags they raise; rank 0 logs them too with `log_flags` (a stop_decision logs
    the others)."""
    flags = []
    for scored in t.scoring.arrived(wait) if t.scoring else ():
        out.scores = scored.scores
        flags += monitor.observe_eval(scored.step, scored.scores)
        if logger:
            logger.log_metrics(scored.step, scored.scores)
        keep_if_best(t, out, logger, scored)
    for flag in flags if log_flags and logger else ():
        logger.log_flag(flag.name, flag.step, flag.describe())
    return flags


def keep_if_best(t: Training, out: Outcome, logger: Any, scored: Scored) -> None:
    """After an evaluation with the lowest FID so far (NaN, a diverged G, is never best; nor one during
    train.condition_ramp), rank 0 replaces the run's best checkpoint. In-line every rank has the scores: they agree
    on rank 0's decision and check the networks together. In the background only rank 0 has them, and the state it
    copied at their step."""
    fid = scored.scores["fid"]
    ramp = t.spec.train.condition_ramp
    if ramp is not None and scored.step < ramp[1]:  # G does not yet fully draw the class it is asked for
        return
    if scored.background:
        if not fid < out.best_fid:
            return
        state = scored.state
    else:
        if not collectives.agree(int(fid < out.best_fid), t.device):
            return
        state = t.snapshot()
    out.best_fid = fid
    if state is not None:
        out.best_generator = {k: v.detach().to("cpu", copy=True) for k, v in state["generator_ema"].items()}
        out.best_step = scored.step
    if logger:
        with tempfile.TemporaryDirectory(prefix="ganorch-best-") as tmp:
            logger.log_best_checkpoint(scored.step, checkpoint.save(state, tmp), fid)


def stop_decision(t: Training, monitor: StabilityMonitor, stop_on: list[str], flags: list[Flag],
                  logger: Any) -> Flag | None:
    """The flag that stops the run at this step, if any, taken by all ranks together; rank 0 logs this step's flags.
    Called at metrics, evaluation and checkpoint steps only, where the monitor raises flags (from metrics, and from
    evaluations as their scores are taken): the ranks agree on rank 0's monitor there (one broadcast), and a rank whose own monitor differs stops with the others all the same. Skipped
    steps are counted on the device and looked at here too: alike on every rank, they need no agreement."""
    stopped = nonfinite_stop(t.phases, t.spec.train.nonfinite, t.step)
    if stopped:
        flags.append(stopped)
        monitor.raised.setdefault(stopped.name, stopped)  # a `diverged` raised before stays the first seen
    if logger:
        for flag in flags:
            logger.log_flag(flag.name, flag.step, flag.describe())
    # Only a flag raised at this step can stop the run here: one raised before was not in stop_on.
    now = {flag.name: flag for flag in flags}
    first_stop = collectives.agree(next((i for i, name in enumerate(stop_on) if name in now), -1), t.device)
    if first_stop >= 0 and stopped is None:
        name = stop_on[first_stop]
        stopped = now.get(name) or Flag(name, t.step, "raised by rank 0's stability monitor")
    return stopped


def nonfinite_stop(phases: list[Phase], policy: str, step: int) -> Flag | None:
    """The `diverged` flag when steps were skipped for a non-finite loss or gradient since the last look: at the
    first with train.nonfinite 'stop', after NONFINITE_PATIENCE of a network in a row with 'skip'. fp16 overflows are
    the gradient scaler's to skip, whatever the policy, until NONFINITE_PATIENCE of them in a row: its scale then
    fell 2^NONFINITE_PATIENCE-fold and the gradients are still not finite."""
    overflowed = {p.name: p.overflowed.take_longest() for p in phases}
    skipped = {p.name: p.skipped.take_longest() for p in phases}
    name, longest = max(overflowed.items(), key=lambda item: item[1])
    if longest >= NONFINITE_PATIENCE:
        return Flag("diverged", step, f"{longest} {name} step(s) in a row had gradients that overflowed in fp16, "
                                      "however far the gradient scaler backed off")
    name, longest = max(skipped.items(), key=lambda item: item[1])
    if longest < (1 if policy == "stop" else NONFINITE_PATIENCE):
        return None
    return Flag("diverged", step, f"{longest} {name} step(s) in a row had a non-finite loss or gradient and were "
                                  f"not applied (train.nonfinite {policy!r})")


def checkpoint_and_report(t: Training, out: Outcome, logger: Any, report: Any, verdicts: Any) -> None:
    """Every rank: check the ranks hold the same networks, report the checkpoint (rank 0 writes it) and, in a Tune
    trial, wait for Tune's verdict on it."""
    out.digests = ddp.check_consistency(t.modules())
    state = t.snapshot(checked=True)
    save_and_report(report, t.step, {**out.metrics, **out.scores}, state, logger, t.spec.tracking.keep_checkpoints)
    if verdicts is not None:
        # Wait while Tune decides on the report: a trial it stops or pauses (ASHA, PBT) takes no steps past it,
        # steps that a restart from this checkpoint would take and log again.
        if t.rank == 0:
            try:
                verdicts.get(timeout=VERDICT_TIMEOUT_S)
            except queue.Empty:  # ray.util.queue.Empty is one
                raise TimeoutError(f"no verdict from the Tune trial's driver on the checkpoint at step {t.step} after "
                                   f"{VERDICT_TIMEOUT_S:g} s (was it lost?)") from None
        collectives.agree(0, t.device)


def save_and_report(report: Any, step: int, metrics: dict[str, float], state: dict[str, Any] | None, logger: Any,
                    keep: int | None = None) -> None:
    """Every rank calls `ray.train.report` once per checkpoint, and only then: each report waits for
    Ray Train's controller to take the previous one (it polls every few seconds). Rank 0 passes the
    checkpoint `state`, which goes to MLflow and to Ray's storage."""
    with tempfile.TemporaryDirectory(prefix="ganorch-ckpt-") as tmp:
        ckpt = None
        if state is not None:
            path = checkpoint.save(state, tmp)
            if logger:
                logger.wait_logged()  # the steps up to this checkpoint, which a restart from it does not log again
                logger.set_tag(TAG_CHECKPOINT, logger.log_checkpoint(step, path, keep))
            if report is not None:
                from ray.train import Checkpoint
                ckpt = Checkpoint.from_directory(tmp)
        if report is not None:
            report({"step": step, **metrics}, checkpoint=ckpt)

