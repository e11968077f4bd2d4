"""The per-worker training loop, top to bottom. Ray Train runs `train_loop_per_worker` on every worker."""

import math
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from gan_models import GeneratorEMA, GradientPenalty, R1Penalty, Regularizer, build_loss, build_models, sample_latent
from orchestrator import checkpoint, distributed, resume
from orchestrator.data import ShardedBatches, check_conditional, load_dataset, num_classes
from orchestrator.phases import Phase, build_phases, run_phase
from orchestrator.precision import Precision
from orchestrator.spec import NONFINITE_PATIENCE, JobSpec, parse
from orchestrator.stability import FLAGS, Flag, StabilityMonitor
from orchestrator.tracking import TAG_CHECKPOINT, TAG_CLASSIFIER, TAG_CLASSIFIER_ACCURACY, TAG_INCEPTION

PROGRESS_EVERY_S = 1.0


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
    restarted_after: str | None = None    # rank 0 of workers Ray Train restarted: why the ones before failed
    verdicts: Any = None    # in a Tune trial: a queue that gives rank 0 Tune's go-ahead after each report


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray.train
    import ray.train.torch

    from orchestrator.tracking import adopt

    adopt(config.get("mlflow_env"))  # workers on other nodes do not inherit the driver's environment
    spec = parse(config["spec"])
    shard = ray.train.get_dataset_shard("train") if spec.data.source == "ray-data" else None
    # The run's own latest checkpoint: Ray Train passes it when it restarts the workers after a failure, or when a
    # run of the same name (a resubmitted job) starts again. Else one handed over: a Tune restart's (a
    # ray.train.Checkpoint), or the state `ganorch run --resume` loaded.
    restored = ray.train.get_checkpoint() or config.get("resume_from")
    state, resumed_from, passed_over = config.get("resume_state"), config.get("resume_origin"), []
    if restored is not None:  # local or in remote storage; a corrupted one gives way to the one before it
        state, resumed_from, passed_over = resume.load_latest_intact(restored)
    device = ray.train.torch.get_device()
    board, restarted_after = config.get("progress"), None
    if board is not None and ray.train.get_context().get_world_rank() == 0:
        starts, failure = ray.get(board.started.remote())
        restarted_after = (failure or "a worker failed") if starts > 1 else None
    context = WorkerContext(device=device, tracking_uri=config["tracking_uri"], run_id=config["run_id"],
                            progress=board, data_shard=shard, resume=state, resumed_from=resumed_from,
                            passed_over=passed_over,
                            placement=distributed.gather_objects(placement(device)),
                            restarted_after=restarted_after, verdicts=config.get("verdicts"))
    return train(spec, context, report=ray.train.report)


def placement(device: torch.device) -> str:
    """Where this worker runs: its Ray node, host and device."""
    import ray

    return f"node {ray.get_runtime_context().get_node_id()[:12]} ({socket.gethostname()}, {device})"


def train(spec: JobSpec, context: WorkerContext, report=None) -> dict[str, Any]:
    """Train G and D up to step `spec.train.steps`, from the start or from `context.resume`. Returns rank 0's
    summary (final metrics, state digests; `unsent`: where what MLflow did not take was kept)."""
    logger = open_logger(context) if distributed.rank() == 0 and context.run_id else None
    try:
        summary = train_logged(spec, context, logger, report)
    except BaseException:
        if logger:
            logger.close(0)  # what was not sent yet is kept; a restart from a checkpoint logs its steps again
        raise
    unsent = logger.close(spec.tracking.outage_wait_s) if logger else None
    return {**summary, "unsent": f"{socket.gethostname()}:{unsent}" if unsent else None}


def open_logger(context: WorkerContext) -> Any:
    """Rank 0's RunLogger, with the tags of where the ranks run and what this start continues from."""
    from orchestrator.tracking import TAG_PASSED_OVER, TAG_RESUMED_FROM, TAG_WORKERS, RunLogger  # rank 0 only

    board = context.progress
    logger = RunLogger(context.tracking_uri, context.run_id,
                       notify=(lambda line: board.notice.remote(line)) if board is not None else None)
    if context.placement:
        logger.set_tag(TAG_WORKERS, "; ".join(f"rank {r}: {where}" for r, where in enumerate(context.placement)))
    if context.resume or context.restarted_after:
        logger.resuming(context.resume["step"] if context.resume else 0)
    if context.resume and context.resumed_from:
        logger.set_tag(TAG_RESUMED_FROM, f"step {context.resume['step']}: {context.resumed_from}")
    if context.passed_over:
        logger.set_tag(TAG_PASSED_OVER, "; ".join(context.passed_over))
        if board is not None:
            board.notice.remote(f"passed over a corrupted checkpoint: {context.passed_over[0]}")
    if context.restarted_after:
        origin = (f"step {context.resume['step']}: {context.resumed_from}" if context.resume
                  else "the start (no checkpoint yet)")
        logger.record_restart(f"workers restarted after a failure ({context.restarted_after}); continued "
                              f"from {origin}")
    return logger


def train_logged(spec: JobSpec, context: WorkerContext, logger: Any, report=None) -> dict[str, Any]:
    """The loop itself; rank 0 logs through `logger` (None elsewhere, and without a run)."""
    rank, world_size = distributed.rank(), distributed.world_size()
    is_rank0 = rank == 0
    device = context.device
    batch = spec.batch_per_worker

    if device.type == "cpu":
        torch.set_flush_denormal(True)  # tiny activations of a saturated D can be denormals, slow on CPU

    if context.data_shard is None:
        dataset = load_dataset(spec.data, spec.model)
        data_classes = num_classes(dataset)
    else:  # streamed by Ray Data: only the class folders are looked at here
        from orchestrator import ray_images
        dataset, data_classes = None, max(len(ray_images.list_classes(spec.data.path)), 1)
    classes = check_conditional(data_classes, spec.model.conditional)

    # Networks, optimizers, the alternation.
    torch.manual_seed(spec.seed)
    G, D = build_networks(spec, classes)
    if context.resume:
        resume.restore_networks(context.resume, G, D, classes)
    memory_format = torch.channels_last if spec.train.channels_last else torch.contiguous_format
    G_ddp = distributed.wrap_ddp(G.to(device, memory_format=memory_format), device)
    D_ddp = distributed.wrap_ddp(D.to(device, memory_format=memory_format), device)
    opt_g = torch.optim.Adam(G.parameters(), lr=spec.optim.g.lr, betas=spec.optim.g.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=spec.optim.d.lr, betas=spec.optim.d.betas)
    phases = build_phases(G_ddp, D_ddp, opt_g, opt_d, build_loss(spec.train.loss), spec.train.n_critic,
                          build_regularizers(spec), Precision(spec.train.precision, device), classes > 0)
    ema = GeneratorEMA(G, spec.train.ema_decay, spec.train.ema_rampup)  # on every rank: samples and evaluation
    if context.resume:
        resume.restore_training(context.resume, ema.module, opt_g, opt_d, phases, spec)

    # Data and noise. Every rank draws the same global z (and class) batch and keeps its own slice, so
    # N workers x batch B see exactly the noise (and data) that 1 worker x batch N*B sees.
    if context.data_shard is None:
        source = ShardedBatches(dataset, batch_size=batch, rank=rank, world_size=world_size, seed=spec.seed,
                                device=device, memory_format=memory_format, position=resume.data_position(context.resume))
        batches = iter(source)
    else:  # a resumed run starts a new pass over the stream
        source = None
        batches = iter(ray_images.StreamedBatches(context.data_shard, batch_size=batch, seed=spec.seed + rank,
                                                  device=device, memory_format=memory_format))
    noise = torch.Generator(device=device).manual_seed(spec.seed + 1)

    def draw_latent() -> tuple[torch.Tensor, torch.Tensor | None]:
        mine = slice(rank * batch, (rank + 1) * batch)
        z = sample_latent(spec.train.batch_size, spec.model.latent_dim, generator=noise, device=device)
        if not classes:
            return z[mine], None
        labels = torch.randint(classes, (spec.train.batch_size,), generator=noise, device=device)
        return z[mine], labels[mine]

    fixed_z, fixed_labels, grid_columns = fixed_samples(spec, classes, device)
    evaluator = None
    if spec.eval.every:
        from orchestrator.evaluation import Evaluator, inception_weights
        m = spec.model
        inception, inception_line = inception_weights(spec.eval)
        if context.data_shard is not None:  # a sample of the stream's files, read into memory
            dataset = ray_images.eval_sample(spec.data.path, num_samples=spec.eval.num_samples,
                                             image_size=m.image_size, channels=m.channels, seed=spec.seed)
        evaluator = Evaluator(dataset, data_classes, classes, num_samples=spec.eval.num_samples,
                              latent_dim=m.latent_dim, image_size=m.image_size, channels=m.channels,
                              cache_dir=spec.eval.cache_dir, seed=spec.seed, device=device, inception=inception)
        if logger:
            logger.set_tag(TAG_CLASSIFIER, evaluator.classifier_path)
            logger.set_tag(TAG_CLASSIFIER_ACCURACY, f"{evaluator.classifier_accuracy:.4f}")
            logger.set_tag(TAG_INCEPTION, inception_line)
    scores: dict[str, float] = {}
    stats = distributed.StatsAccumulator(device)
    images_per_step = spec.train.batch_size * spec.train.n_critic
    track = spec.tracking
    metrics: dict[str, float] = {}
    digests: dict[str, list[str]] = {}
    step, images_seen = (context.resume["step"], context.resume["images_seen"]) if context.resume else (0, 0)

    def save_state(checked: bool = False) -> dict[str, Any] | None:
        loop = resume.loop_state(phases, noise, source.position if source else None, device)
        return snapshot(G, ema.module, D, opt_g, opt_d, step, images_seen, spec, classes, loop, checked)

    if logger and not step:
        logger.log_samples(0, sample(ema.module, fixed_z, fixed_labels), grid_columns)
    monitor = StabilityMonitor(spec.train.stability_window, spec.train.loss)
    stop_on = [name for name in FLAGS if name in spec.train.stop_on]
    stopped: Flag | None = None
    best_fid = math.inf
    speed = Throughput(images_per_step, step)
    last_post = 0.0
    if context.resume:
        resume.restore_rng(context.resume, noise, device)
    while step < spec.train.steps and stopped is None:
        step += 1
        images_seen += images_per_step
        for phase in phases:
            for step_stats in run_phase(phase, batches, draw_latent):
                stats.add(step_stats)
        ema.update(G, step)

        if is_rank0 and context.progress and time.perf_counter() - last_post > PROGRESS_EVERY_S:
            context.progress.post.remote({"step": step, "images_per_sec": speed.rate(step)})
            last_post = time.perf_counter()

        last = step == spec.train.steps
        flags: list[Flag] = []
        if step % track.metrics_every == 0 or last:
            metrics = {**stats.reduce(), "images_per_sec": speed.rate(step), "images_seen": images_seen,
                       "lr_g": opt_g.param_groups[0]["lr"], "lr_d": opt_d.param_groups[0]["lr"],
                       **{f"skipped_{p.name.lower()}": p.skipped for p in phases}}
            speed.restart(step)
            flags += monitor.observe(step, metrics)
            if logger:
                logger.log_metrics(step, metrics)
            if is_rank0 and context.progress:
                context.progress.post.remote({"step": step, "metrics_step": step, **metrics})
        if logger and (step % track.samples_every == 0 or last):
            logger.log_samples(step, sample(ema.module, fixed_z, fixed_labels), grid_columns)
        if evaluator and (step % spec.eval.every == 0 or last):
            scores = evaluator.evaluate(ema.module)
            flags += monitor.observe_eval(step, scores)
            if logger:
                logger.log_metrics(step, scores)
            if distributed.agree(int(scores["fid"] < best_fid), device):  # NaN (a diverged G) is never best
                best_fid = scores["fid"]
                state = save_state()
                if logger:
                    with tempfile.TemporaryDirectory(prefix="ganorch-best-") as tmp:
                        logger.log_best_checkpoint(step, checkpoint.save(state, tmp), best_fid)
        not_finite = nonfinite_stop(phases, spec.train.nonfinite, step)  # taken by all ranks together
        if not_finite:
            flags.append(not_finite)
            stopped = monitor.raised.setdefault(not_finite.name, not_finite)
        if logger:
            for flag in flags:
                logger.log_flag(flag)
        first_stop = next((i for i, name in enumerate(stop_on) if name in monitor.raised), -1)
        if distributed.agree(first_stop, device) >= 0 and stopped is None:
            stopped = monitor.raised[stop_on[first_stop]]
        if step % track.checkpoint_every == 0 or last or stopped is not None:
            digests = distributed.check_consistency({"generator": G, "generator_ema": ema.module, "discriminator": D})
            state = save_state(checked=True)
            save_and_report(report, step, {**metrics, **scores}, state, logger, track.keep_checkpoints)
            if context.verdicts is not None:
                # Wait while Tune decides on the report: a trial it stops or pauses (ASHA, PBT) takes no steps
                # past it, steps that a restart from this checkpoint would take and log again.
                if is_rank0:
                    context.verdicts.get()
                distributed.agree(0, device)

    # Parameters alone, without the buffer alignment a snapshot does: proof that DDP kept ranks in step.
    parameters = distributed.gather_digests({"generator": G, "generator_ema": ema.module, "discriminator": D},
                                            parameters_only=True)
    return {"step": step, "metrics": metrics, "eval": scores, "snapshot_digests": digests,
            "parameter_digests": parameters, "workers": context.placement, "flags": [f.describe() for f in monitor.raised.values()],
            "stopped": stopped.describe() if stopped else None, "best_fid": best_fid if math.isfinite(best_fid) else None}


def nonfinite_stop(phases: list[Phase], policy: str, step: int) -> Flag | None:
    """The `diverged` flag when steps were skipped for a non-finite loss or gradient: at the first with
    train.nonfinite 'stop', after NONFINITE_PATIENCE of a network in a row with 'skip'."""
    worst = max(phases, key=lambda p: p.skipped_in_a_row)
    if worst.skipped_in_a_row < (1 if policy == "stop" else NONFINITE_PATIENCE):
        return None
    return Flag("diverged", step, f"{worst.skipped_in_a_row} {worst.name} step(s) in a row had a non-finite loss or "
                                  f"gradient and were not applied (train.nonfinite {policy!r})")


def snapshot(G: torch.nn.Module, G_ema: torch.nn.Module, D: torch.nn.Module, opt_g: torch.optim.Optimizer,
             opt_d: torch.optim.Optimizer, step: int, images_seen: int, spec: JobSpec, classes: int,
             loop: dict[str, Any], checked: bool = False) -> dict[str, Any] | None:
    """The checkpoint state on rank 0 (None elsewhere), after every rank proved it holds the same networks.
    Every rank calls it; `checked` when the caller ran the consistency check already."""
    if not checked:
        distributed.check_consistency({"generator": G, "generator_ema": G_ema, "discriminator": D})
    if distributed.rank() != 0:
        return None
    return checkpoint.build(G=G, G_ema=G_ema, D=D, opt_g=opt_g, opt_d=opt_d, step=step, images_seen=images_seen,
                            spec=spec.to_dict(), num_classes=classes, loop=loop)


def build_networks(spec: JobSpec, num_classes: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The spec's G and D; class-conditional over `num_classes` classes when that is > 0."""
    m = spec.model
    return build_models(m.family, latent_dim=m.latent_dim, image_size=m.image_size, channels=m.channels,
                        g_width=m.g_width, d_width=m.d_width, g_norm=m.g_norm, d_norm=m.d_norm,
                        num_classes=num_classes, generator=m.generator, discriminator=m.discriminator)


def fixed_samples(spec: JobSpec, classes: int, device: torch.device,
                  count: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The noise (and, when conditional, labels: one grid row per class) every sample grid is drawn from,
    and the grid's number of columns. `count` images, by default tracking.num_samples."""
    count = count or spec.tracking.num_samples
    if classes:
        columns = max(count // classes, 1)
        labels = torch.arange(classes, device=device).repeat_interleave(columns)
        count = len(labels)
    else:
        columns, labels = round(count ** 0.5), None
    z = sample_latent(count, spec.model.latent_dim, generator=torch.Generator().manual_seed(spec.seed), device=device)
    return z, labels, columns


def build_regularizers(spec: JobSpec) -> list[Regularizer]:
    regularizers: list[Regularizer] = []
    if spec.train.loss == "wgan-gp":
        regularizers.append(GradientPenalty(spec.train.gp_lambda))
    if spec.train.r1_gamma > 0:
        regularizers.append(R1Penalty(spec.train.r1_gamma, spec.train.r1_every))
    return regularizers


class Throughput:
    """Real images through D per second, across all workers, since the last restart."""

    def __init__(self, images_per_step: int, step: int = 0):
        self.images_per_step = images_per_step
        self.restart(step)

    def restart(self, step: int) -> None:
        self.start_step, self.start_time = step, time.perf_counter()

    def rate(self, step: int) -> float:
        return (step - self.start_step) * self.images_per_step / (time.perf_counter() - self.start_time)


@torch.no_grad()
def sample(G: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    was_training = G.training
    G.eval()
    images = G(z) if labels is None else G(z, labels)
    G.train(was_training)
    return images


def save_and_report(report, step: int, metrics: dict[str, float], state: dict[str, Any] | None, logger,
                    keep: int | None = None) -> None:
    """Every rank calls `ray.train.report` once per checkpoint, and only then: each report waits for
    Ray Train's controller to take the previous one (it polls every few seconds). Rank 0 passes the
    checkpoint `state`, which goes to MLflow and to Ray's storage."""
    with tempfile.TemporaryDirectory(prefix="ganorch-ckpt-") as tmp:
        ckpt = None
        if state is not None:
            path = checkpoint.save(state, tmp)
            if logger:
                logger.set_tag(TAG_CHECKPOINT, logger.log_checkpoint(step, path, keep))
            if report is not None:
                from ray.train import Checkpoint
                ckpt = Checkpoint.from_directory(tmp)
        if report is not None:
            report({"step": step, **metrics}, checkpoint=ckpt)
