"""Train on synthetic, test on real (Ravuri & Vinyals, 2019, "Classification Accuracy Score for Conditional
Generative Models"): a classifier of the domain classifier's architecture and recipe, trained from scratch on G's
labelled samples and scored on the real held-out split the domain classifier is scored on. Beside it, the same recipe
trained on as many real images of the rest of the data (TRTR), computed once per dataset, seed and count and cached
in the domain classifier's file."""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from gan_models.classifier import DomainClassifier, accuracy, train_classifier
from orchestrator.data import splits


@dataclass
class HeldOut:
    """The real images a TSTR classifier is scored on: the domain classifier's held-out split of the data."""
    images: torch.Tensor
    labels: torch.Tensor


def balanced_labels(count: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., num_classes - 1, 0, 1, ...: every class count // num_classes times (the first ones once more)."""
    return torch.arange(count) % num_classes


def seeded_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int,
                      device: torch.device, **recipe) -> DomainClassifier:
    """`train_classifier` (with `recipe`: steps, weights) with its dropout seeded too, so the same images give the
    same accuracy on the same device and thread count."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        return train_classifier(images, labels, num_classes, seed=seed, device=device, **recipe)


def tstr_accuracy(images: torch.Tensor, labels: torch.Tensor, held_out: HeldOut, num_classes: int, seed: int,
                  device: torch.device) -> float:
    """Accuracy on the real held-out images of a classifier trained on `images` (G's samples) alone."""
    model = seeded_classifier(images.float().cpu(), labels.cpu(), num_classes, seed, device)
    return accuracy(model, held_out.images, held_out.labels)


def trtr_accuracy(dataset: Dataset, held_out: HeldOut, num_classes: int, count: int, cache_file: str | Path,
                  seed: int, device: torch.device) -> float:
    """The same recipe trained on `count` real images of the domain classifier's training split (all of them, if
    fewer), from the cache when trained before: `trtr` in the classifier's file maps (seed, count) to accuracies. A
    cache that cannot be written is only read."""
    path = Path(cache_file)
    train, _ = splits.classifier_split(dataset, seed)
    count = min(count, len(train))
    key = f"seed {seed}, {count} images"
    state = torch.load(path, map_location="cpu", weights_only=True)
    cached = state.get("trtr", {})
    if key in cached:
        return cached[key]
    images, labels = splits.read(dataset, train[:count])  # split_held_out's order is random: a random subset
    found = accuracy(seeded_classifier(images, labels, num_classes, seed, device), held_out.images, held_out.labels)
    state["trtr"] = {**cached, key: found}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as file:  # through Python, so a cache that cannot be written raises OSError
            torch.save(state, file)
        os.replace(tmp, path)  # whole or not at all; a count another run adds meanwhile is trained again later
    except OSError:
        tmp.unlink(missing_ok=True)
    return found
