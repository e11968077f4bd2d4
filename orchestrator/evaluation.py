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


class Evaluator:
    """Sample quality of G_ema during training, on every rank at once: each rank embeds its share of the real
    reference images (once) and of the generated samples (each evaluation), and every rank computes the
    metrics from all of them. Rank 0 trains or loads the classifier and hands it to the others."""

    BATCH = 500

    def __init__(self, dataset: Dataset, data_classes: int, generator_classes: int, *, num_samples: int,
                 latent_dim: int, image_size: int, channels: int, cache_dir: str | None, seed: int,
                 device: torch.device):
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
        self.model = DomainClassifier(channels, data_classes)
        self.model.load_state_dict(state)
        self.model.to(device).eval()
        self.device, self.seed = device, seed
        self.num_samples, self.latent_dim, self.generator_classes = num_samples, latent_dim, generator_classes
        self.share = -(-num_samples // self.world_size)

        # The real reference: a seeded random subset of the data, embedded once.
        count = min(num_samples, len(dataset))
        chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:count]
        mine = chosen[self.rank::self.world_size].tolist()
        local_share = -(-count // self.world_size)
        images = [torch.stack([dataset[i][0] for i in mine[k:k + self.BATCH]]) for k in range(0, len(mine), self.BATCH)]
        features, logits = self.embed(images)
        self.reference = gather_rows(features, local_share), gather_rows(logits, local_share)
        assert len(self.reference[0]) == count, (len(self.reference[0]), count)

    def embed(self, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [self.model.embed(batch.to(self.device)) for batch in batches]
        if not outputs:
            return torch.zeros(0, self.model.num_features, device=self.device), \
                torch.zeros(0, self.model.num_classes, device=self.device)
        return torch.cat([f for f, _ in outputs]), torch.cat([lg for _, lg in outputs])

    @torch.no_grad()
    def evaluate(self, G: torch.nn.Module) -> dict[str, float]:
        """The metrics of `G`'s samples; the same z (and classes) at every evaluation, so steps compare."""
        from gan_models import sample_latent
        from gan_models.metrics import quality

        noise = torch.Generator(device=self.device).manual_seed(self.seed + 7919)
        z = sample_latent(self.num_samples, self.latent_dim, generator=noise, device=self.device)
        labels = (torch.randint(self.generator_classes, (self.num_samples,), generator=noise, device=self.device)
                  if self.generator_classes else None)
        mine = slice(self.rank * self.share, (self.rank + 1) * self.share)
        was_training = G.training
        G.eval()
        batches = []
        for start in range(0, len(z[mine]), self.BATCH):
            chunk = slice(start, start + self.BATCH)
            batches.append(G(z[mine][chunk]) if labels is None else G(z[mine][chunk], labels[mine][chunk]))
        G.train(was_training)
        features, logits = self.embed([b.float() for b in batches])
        features, logits = gather_rows(features, self.share), gather_rows(logits, self.share)
        assert len(features) == self.num_samples, (len(features), self.num_samples)
        return quality(*self.reference, features, logits, seed=self.seed)
