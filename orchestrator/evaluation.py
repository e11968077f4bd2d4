"""The domain classifier behind FID, KID and IS: trained once per dataset, cached by a fingerprint of the data.

The cache holds one file per (data, image size, channels, recipe): `classifiers/<fingerprint>.pt`, a dict of plain
state loaded with weights_only=True. The default cache is `$XDG_CACHE_HOME/ganorch` (`~/.cache/ganorch`).
"""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from gan_models.classifier import DomainClassifier, fit_classifier
from orchestrator.data import ImageFolderDataset
from orchestrator.spec import EvalSpec

# Bump when DomainClassifier or fit_classifier change: cached classifiers of the old recipe stop matching.
RECIPE = 1
# The classifier trains on at most this many images of a larger dataset (a seeded random subset).
MAX_TRAIN_IMAGES = 20_000


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganorch"


def fingerprint(dataset: Dataset, image_size: int, channels: int) -> str:
    """What the classifier was trained on, without reading every image of a folder: the tensors of an
    in-memory source; the files (relative path, size, modification time) and labels of a folder; the
    class, length and labels of a torchvision dataset."""
    h = hashlib.sha256(f"recipe {RECIPE}; {image_size}px; {channels} channels; {type(dataset).__name__}".encode())
    if isinstance(dataset, TensorDataset):
        for tensor in dataset.tensors:
            h.update(tensor.contiguous().numpy().tobytes())
    elif isinstance(dataset, ImageFolderDataset):
        for path, label in zip(dataset.files, dataset.labels):
            stat = path.stat()
            h.update(f"{path.relative_to(dataset.root)}|{stat.st_size}|{stat.st_mtime_ns}|{label}\n".encode())
    else:  # a torchvision dataset
        h.update(f"{len(dataset)}".encode())
        h.update(torch.as_tensor(dataset.targets).numpy().tobytes() if hasattr(dataset, "targets")
                 else torch.as_tensor(dataset.labels).numpy().tobytes())
    return h.hexdigest()[:32]


def labelled_tensors(dataset: Dataset, limit: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of the whole dataset, or of a seeded random `limit` of it."""
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors
        if len(images) <= limit:
            return images, labels
    indices = torch.arange(len(dataset))
    if len(dataset) > limit:
        indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    pairs = [dataset[i] for i in indices.tolist()]
    return torch.stack([image for image, _ in pairs]), torch.as_tensor([label for _, label in pairs])


def check_labelled(num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError("eval.every: the data has a single class (a folder without class subfolders?); the domain "
                         "classifier behind FID, KID and IS needs labelled data: set eval.every: 0")


@dataclass
class Classifier:
    model: DomainClassifier    # in eval mode
    accuracy: float            # on its held-out share of the data
    path: Path                 # the cached file
    trained_now: bool          # False when it came from the cache


def domain_classifier(dataset: Dataset, num_classes: int, *, image_size: int, channels: int,
                      cache_dir: str | Path | None = None, seed: int = 0) -> Classifier:
    """The dataset's classifier from the cache, or trained now and cached."""
    check_labelled(num_classes)
    path = Path(cache_dir or default_cache_dir()).expanduser() / "classifiers" / \
        f"{fingerprint(dataset, image_size, channels)}.pt"
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = DomainClassifier(state["channels"], state["num_classes"])
        model.load_state_dict(state["model"])
        return Classifier(model.eval(), state["accuracy"], path, trained_now=False)
    images, labels = labelled_tensors(dataset, MAX_TRAIN_IMAGES, seed)
    model, accuracy = fit_classifier(images, labels, num_classes, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"model": model.state_dict(), "accuracy": accuracy, "num_classes": num_classes,
                "channels": channels, "image_size": image_size, "recipe": RECIPE}, tmp)
    os.replace(tmp, path)  # whole or not at all, also when two runs train the same classifier at once
    return Classifier(model, accuracy, path, trained_now=True)


def gather_rows(local: torch.Tensor, share: int) -> torch.Tensor:
    """Every rank's rows together (on every rank). Each rank holds at most `share` rows; padding is dropped."""
    import torch.distributed as dist

    from orchestrator import distributed

    if distributed.world_size() == 1:
        return local
    counts = [torch.zeros((), dtype=torch.long, device=local.device) for _ in range(distributed.world_size())]
    dist.all_gather(counts, torch.tensor(len(local), device=local.device))
    padded = torch.zeros((share, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(distributed.world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def inception_weights(spec: EvalSpec) -> tuple[Path | None, str]:
    """The Inception weights file evaluation will use (None: Inception features off) and a line saying why.
    Downloads only with eval.inception 'download'. Raises ValueError for a named file that is missing."""
    from gan_models.inception import WEIGHTS_URL, download_weights, hub_file

    if spec.inception == "off":
        return None, "off (eval.inception: off)"
    if spec.inception_weights:
        path = Path(spec.inception_weights).expanduser()
        if not path.is_file():
            raise ValueError(f"eval.inception_weights: no file at {path}")
        return path, f"on: {path}"
    if hub_file().is_file():
        return hub_file(), f"on: {hub_file()}"
    if spec.inception == "download":
        try:
            return download_weights(), f"on: {hub_file()} (downloaded)"
        except OSError as err:  # no network, refused, disk full
            raise ValueError(f"eval.inception: 'download' could not fetch {WEIGHTS_URL}: {err}") from None
    return None, (f"off: no Inception weights in torch.hub's cache ({hub_file()}); name a local copy of "
                  f"{WEIGHTS_URL.rsplit('/', 1)[1]} in eval.inception_weights, or set eval.inception: download "
                  "to fetch it (needs internet)")


class Evaluator:
    """Sample quality of G_ema during training, on every rank at once: each rank embeds its share of the real
    reference images (once) and of the generated samples (each evaluation), and every rank computes the
    metrics from all of them. Rank 0 trains or loads the classifier and hands it to the others. With Inception
    weights, the same images are embedded by Inception too, for fid_inception, kid_inception and is_inception."""

    BATCH = {"": 500, "_inception": 50}   # images per forward, by metric suffix (Inception runs at 299 px)

    def __init__(self, dataset: Dataset, data_classes: int, generator_classes: int, *, num_samples: int,
                 latent_dim: int, image_size: int, channels: int, cache_dir: str | None, seed: int,
                 device: torch.device, inception: Path | None = None):
        import torch.distributed as dist

        from orchestrator import distributed

        check_labelled(data_classes)  # on every rank, before any of them waits for rank 0's classifier
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        shared: list = [None]
        if self.rank == 0:
            classifier = domain_classifier(dataset, data_classes, image_size=image_size, channels=channels,
                                           cache_dir=cache_dir, seed=seed)
            shared = [(classifier.model.state_dict(), classifier.accuracy, str(classifier.path), classifier.trained_now)]
        if self.world_size > 1:
            dist.broadcast_object_list(shared, src=0, device=device if device.type == "cuda" else None)
        state, self.classifier_accuracy, self.classifier_path, self.trained_now = shared[0]
        model = DomainClassifier(channels, data_classes)
        model.load_state_dict(state)
        self.extractors: dict[str, torch.nn.Module] = {"": model.to(device).eval()}
        if inception is not None:
            from gan_models.inception import InceptionFeatures
            self.extractors["_inception"] = InceptionFeatures(inception).to(device).eval()
        self.device, self.seed = device, seed
        self.num_samples, self.latent_dim, self.generator_classes = num_samples, latent_dim, generator_classes
        self.share = -(-num_samples // self.world_size)

        # The real reference: a seeded random subset of the data, embedded once.
        count = min(num_samples, len(dataset))
        chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
        mine = chosen[self.rank::self.world_size].tolist()
        local_share = -(-count // self.world_size)
        images = torch.stack([dataset[i][0] for i in mine]) if mine else torch.zeros(0, channels, image_size, image_size)
        self.reference = {}
        for suffix in self.extractors:
            features, logits = self.embed(suffix, images)
            self.reference[suffix] = gather_rows(features, local_share), gather_rows(logits, local_share)
            assert len(self.reference[suffix][0]) == count, (len(self.reference[suffix][0]), count)

    def embed(self, suffix: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extractor, batch = self.extractors[suffix], self.BATCH[suffix]
        outputs = [extractor.embed(images[k:k + batch].to(self.device)) for k in range(0, len(images), batch)]
        if not outputs:
            return torch.zeros(0, extractor.num_features, device=self.device), \
                torch.zeros(0, extractor.num_classes, device=self.device)
        return torch.cat([f for f, _ in outputs]), torch.cat([lg for _, lg in outputs])

    @torch.no_grad()
    def evaluate(self, G: torch.nn.Module) -> dict[str, float]:
        """The metrics of `G`'s samples; the same z (and classes) at every evaluation, so steps compare."""
        from gan_models import sample_latent
        from gan_models.metrics import distances, quality

        noise = torch.Generator(device=self.device).manual_seed(self.seed + 7919)
        z = sample_latent(self.num_samples, self.latent_dim, generator=noise, device=self.device)
        labels = (torch.randint(self.generator_classes, (self.num_samples,), generator=noise, device=self.device)
                  if self.generator_classes else None)
        mine = slice(self.rank * self.share, (self.rank + 1) * self.share)
        z, labels = z[mine], labels[mine] if labels is not None else None
        was_training = G.training
        G.eval()
        batch = self.BATCH[""]
        images = [G(z[k:k + batch]) if labels is None else G(z[k:k + batch], labels[k:k + batch])
                  for k in range(0, len(z), batch)]
        G.train(was_training)
        images = torch.cat(images).float() if images else torch.zeros(0)
        scores: dict[str, float] = {}
        for suffix in self.extractors:
            features, logits = self.embed(suffix, images)
            features, logits = gather_rows(features, self.share), gather_rows(logits, self.share)
            assert len(features) == self.num_samples, (len(features), self.num_samples)
            real_features, real_logits = self.reference[suffix]
            if suffix == "":
                scores.update(quality(real_features, real_logits, features, logits, seed=self.seed))
            else:
                found = distances(real_features, features, logits, seed=self.seed)
                scores.update({f"{name}{suffix}": value for name, value in found.items()})
        return scores
