"""Train on synthetic, test on real (Ravuri & Vinyals, 2019, "Classification Accuracy Score for Conditional
Generative Models"): a classifier of the domain classifier's architecture and recipe, trained from scratch on G's
labelled samples and scored on the real held-out split the domain classifier is scored on. Beside it, the same recipe
trained on as many real images of the rest of the data (TRTR), computed once per dataset and cached in the domain
classifier's file."""

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from gan_models.classifier import HELD_OUT, accuracy, split_held_out, train_classifier
from orchestrator.evaluate.domain_classifier import MAX_TRAIN_IMAGES, labelled_tensors


@dataclass
class RealSplit:
    """The domain classifier's split of the data: what it trains on, and the held-out images it is scored on."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def real_split(dataset: Dataset, seed: int) -> RealSplit:
    images, labels = labelled_tensors(dataset, MAX_TRAIN_IMAGES, seed)
    train, test = split_held_out(len(images), HELD_OUT, seed)
    return RealSplit(images[train], labels[train], images[test], labels[test])


def balanced_labels(count: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., num_classes - 1, 0, 1, ...: every class count // num_classes times (the first ones once more)."""
    return torch.arange(count) % num_classes


def tstr_accuracy(images: torch.Tensor, labels: torch.Tensor, split: RealSplit, num_classes: int, seed: int) -> float:
    """Accuracy on the real held-out images of a classifier trained on `images` (G's samples) alone."""
    model = train_classifier(images.float().cpu(), labels.cpu(), num_classes, seed=seed)
    return accuracy(model, split.test_images, split.test_labels)


def trtr_accuracy(split: RealSplit, num_classes: int, count: int, cache_file: str | Path, seed: int) -> float:
    """The same recipe trained on `count` real training images (all of them, if fewer), from the cache when this
    count was trained before: `trtr` in the domain classifier's file maps counts to accuracies."""
    path = Path(cache_file)
    state = torch.load(path, map_location="cpu", weights_only=True)
    cached = state.get("trtr", {})
    count = min(count, len(split.train_images))
    if count in cached:
        return cached[count]
    model = train_classifier(split.train_images[:count], split.train_labels[:count], num_classes, seed=seed)
    found = accuracy(model, split.test_images, split.test_labels)
    state["trtr"] = {**cached, count: found}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)  # whole or not at all; two runs adding the same count write the same value
    return found
