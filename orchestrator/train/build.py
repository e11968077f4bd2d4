"""Everything the per-worker loop works on, built from the spec and, when the run continues, a checkpoint's state:
data and noise, the networks and their DDP wrappers, the optimizers, the D/G phases, G_ema, and the evaluator."""

import functools
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from gan_models import DiffAugment, GeneratorEMA, GradientPenalty, R1Penalty, Regularizer, build_loss, sample_latent
from gan_models.conditioning import check_rampable, ramp, set_strength
from orchestrator.data import splits
from orchestrator.data.record import dataset_record
from orchestrator.data.sharding import ShardedBatches
from orchestrator.data.sources import check_conditional, labelled_subset, load_dataset, num_classes
from orchestrator.distributed import collectives, ddp
from orchestrator.spec import JobSpec
from orchestrator.track.redact import masked
from orchestrator.track.tags import LABELLED_INDICES
from orchestrator.train import checkpoint, resume
from orchestrator.train.networks import build_networks, fixed_samples
from orchestrator.train.phases import Phase, build_phases
from orchestrator.train.precision import Precision
from orchestrator.train.scoring import BackgroundScoring, InlineScoring, build_scoring


@dataclass
class Training:
    """The loop's state: what it trains, what it draws from, and where it stands (`step`, `images_seen`)."""
    spec: JobSpec
    device: torch.device
    rank: int
    world_size: int
    classes: int                 # the model's classes; 0 when unconditional
    G: torch.nn.Module           # the bare networks (their DDP wrappers live in the phases)
    D: torch.nn.Module
    ema: GeneratorEMA
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    phases: list[Phase]
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    source: ShardedBatches | None  # None for a Ray Data stream, which has no position to resume at
    noise: torch.Generator
    fixed: tuple[torch.Tensor, torch.Tensor | None, int]  # the sample grids' z, labels and columns
    scoring: InlineScoring | BackgroundScoring | None  # None: evaluation off
    step: int
    images_seen: int
    augment: DiffAugment | None = None  # what D's inputs go through (None: augmentation off)
    augment_adapted_at: int = 0  # images_seen when an adaptive augment's p was last adjusted
    node_metrics: Any = None     # the first worker of a node: its system-metrics monitor, from the first step on
    condition_strength: float = 1.0  # how strongly the class information enters G and D (train.condition_ramp)

    def ramp_conditioning(self) -> None:
        """train.condition_ramp: the class information's strength at this step, set in G and D where it changes
        (G_ema takes it with G's buffers)."""
        if self.spec.train.condition_ramp is None:
            return
        strength = ramp(self.step, *self.spec.train.condition_ramp)
        if strength != self.condition_strength:
            set_strength(self.G, strength)
            set_strength(self.D, strength)
            self.condition_strength = strength

    def draw_latent(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's share of the global z (and class) batch. Every rank draws the whole batch, so N workers x
        batch B see exactly the noise that 1 worker x batch N*B sees. The share is every world_size-th item from the
        rank's own, as the data shards interleave the epoch's order (DistributedSampler): item i of a rank's z goes
        with item i of its real batch, as in one worker's batch (WGAN-GP pairs them in its interpolates)."""
        global_batch = self.spec.train.batch_size
        mine = slice(self.rank, None, self.world_size)
        z = sample_latent(global_batch, self.spec.model.latent_dim, generator=self.noise, device=self.device)
        if not self.classes:
            return z[mine], None
        labels = torch.randint(self.classes, (global_batch,), generator=self.noise, device=self.device)
        return z[mine], labels[mine]

    def draw_uniform(self, count: int) -> torch.Tensor:
        """This rank's `count` of numbers uniform in [0, 1), drawn for the global batch from the same noise stream
        (WGAN-GP's interpolation weights), so every rank draws the whole batch's and keeps its share, interleaved
        as `draw_latent`'s."""
        numbers = torch.rand(self.spec.train.batch_size, generator=self.noise, device=self.device)
        mine = numbers[self.rank::self.world_size]
        assert len(mine) == count, (len(mine), count)  # draws are made per image of the rank's batch
        return mine

    @property
    def weight(self) -> float:
        """This rank's share of the global batch times the number of ranks: 1 when the batch splits evenly; else
        what its mean loss and its stats are weighed by (an elastic group at a size that does not divide it)."""
        return self.spec.batch_share(self.rank, self.world_size) * self.world_size / self.spec.train.batch_size

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.G, "generator_ema": self.ema.module, "discriminator": self.D}

    def snapshot(self, checked: bool = False) -> dict[str, Any] | None:
        """The checkpoint state on rank 0 (None elsewhere), after every rank proved it holds the same networks.
        Every rank calls it; `checked` when the caller ran the consistency check already."""
        if not checked:
            ddp.check_consistency(self.modules())
        if self.rank != 0:
            return None
        loop = resume.loop_state(self.phases, self.noise, self.source.position if self.source else None, self.device,
                                 self.augment)
        return checkpoint.build(G=self.G, G_ema=self.ema.module, D=self.D, opt_g=self.opt_g, opt_d=self.opt_d,
                                step=self.step, images_seen=self.images_seen, spec=masked(self.spec.to_dict()),
                                num_classes=self.classes, loop=loop)


def build(spec: JobSpec, context: Any, logger: Any) -> Training:
    """The loop's state from `spec`, continued from `context.resume` when set (a WorkerContext). Rank 0 tags the run
    with the evaluator's classifier through `logger`."""
    rank, world_size, device = collectives.rank(), collectives.world_size(), context.device
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # tiny activations of a saturated D can be denormals, slow on CPU
    kept = None  # data.labels_per_class: the indices G trains on; evaluation takes the whole dataset
    if context.data_shard is None:
        dataset = load_dataset(spec.data, spec.model)
        data_classes = num_classes(dataset)
        kept = labelled_subset(spec.data, dataset, spec.seed)
    else:  # streamed by Ray Data: only the class folders are looked at here
        from orchestrator.data import ray_data
        dataset, data_classes = None, max(len(ray_data.list_classes(spec.data.path)), 1)
    classes = check_conditional(data_classes, spec.model.conditional)
    if logger:
        logger.log_dataset(functools.partial(dataset_record, spec.data, spec.model, dataset, kept))
        if kept is not None:
            logger.log_json({"labels_per_class": spec.data.labels_per_class, "seed": spec.seed,
                             "indices": kept.tolist()}, LABELLED_INDICES)

    torch.manual_seed(spec.seed)
    G, D = build_networks(spec, classes)
    if context.resume:
        resume.restore_networks(context.resume, G, D, classes)
    memory_format = torch.channels_last if spec.train.channels_last else torch.contiguous_format
    G_ddp = ddp.wrap_ddp(G.to(device, memory_format=memory_format), device)
    D_ddp = ddp.wrap_ddp(D.to(device, memory_format=memory_format), device)
    opt_g, opt_d = adam(G, spec.optim.g), adam(D, spec.optim.d)
    augment = build_augment(spec)
    phases = build_phases(G_ddp, D_ddp, opt_g, opt_d, build_loss(spec.train.loss), spec.train.n_critic,
                          build_regularizers(spec), Precision(spec.train.precision, device), classes > 0, augment)
    ema = GeneratorEMA(G, spec.train.ema_decay, spec.train.ema_rampup)  # on every rank: samples and evaluation
    if context.resume:
        resume.restore_training(context.resume, ema.module, opt_g, opt_d, phases, spec, augment)

    if context.data_shard is None:
        source = ShardedBatches(dataset if kept is None else splits.keep(dataset, kept),
                                batch_size=spec.train.batch_size, rank=rank, world_size=world_size,
                                seed=spec.seed, device=device, memory_format=memory_format,
                                position=resume.data_position(context.resume))
        batches = iter(source)
    else:  # a resumed run starts a new pass over the stream
        source = None
        batches = iter(ray_data.StreamedBatches(context.data_shard, batch_size=spec.batch_share(0, world_size),
                                                seed=spec.seed + rank, device=device, memory_format=memory_format,
                                                keep=spec.batch_share(rank, world_size)))
    noise = torch.Generator(device=device).manual_seed(spec.seed + 1)
    fixed = fixed_samples(spec, classes, device)
    scoring = (build_scoring(spec, device, logger, dataset, data_classes, classes, rank,
                             streamed=context.data_shard is not None) if spec.eval.every else None)
    step, images_seen = (context.resume["step"], context.resume["images_seen"]) if context.resume else (0, 0)
    if context.resume:
        resume.restore_rng(context.resume, noise, device)
    t = Training(spec, device, rank, world_size, classes, G, D, ema, opt_g, opt_d, phases, batches, source, noise,
                 fixed, scoring, step, images_seen, augment, augment_adapted_at=images_seen)
    if spec.train.condition_ramp is not None:
        check_rampable(G, D)
    if classes:  # also without a ramp: a checkpoint taken during one (--resume, a PBT clone) holds part strength
        t.condition_strength = ramp(step, *spec.train.condition_ramp) if spec.train.condition_ramp else 1.0
        for net in (G, D, ema.module):
            set_strength(net, t.condition_strength)
    return t


def adam(net: torch.nn.Module, settings: Any) -> torch.optim.Adam:
    """Fused Adam: one kernel for all parameters, and it takes a step's skip as a device tensor (`found_inf`)."""
    return torch.optim.Adam(net.parameters(), lr=settings.lr, betas=settings.betas, fused=True)


def build_augment(spec: JobSpec) -> DiffAugment | None:
    settings = spec.train.augment
    if not settings.policy:
        return None
    return DiffAugment(settings.policy, settings.start_p, settings.translation, settings.cutout, settings.target,
                       settings.images_to_full)


def build_regularizers(spec: JobSpec) -> list[Regularizer]:
    regularizers: list[Regularizer] = []
    if spec.train.loss == "wgan-gp":
        regularizers.append(GradientPenalty(spec.train.gp_lambda))
    if spec.train.r1_gamma > 0:
        regularizers.append(R1Penalty(spec.train.r1_gamma, spec.train.r1_every))
    return regularizers
