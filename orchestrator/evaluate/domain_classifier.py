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

from gan_models.classifier import DomainClassifier, accuracy, train_classifier
from orchestrator.data import splits
from orchestrator.data.cache import default_cache_dir
from orchestrator.data.sources import ImageFolderDataset

# Bump when DomainClassifier, train_classifier or the split change: cached classifiers of the old recipe stop matching.
RECIPE = 1


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


def check_labelled(num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError("eval.every: the data has a single class (a folder without class subfolders?); the domain "
                         "classifier behind FID, KID and IS needs labelled data: set eval.every: 0")


def check_tstr(samples: int, data_classes: int, generator_classes: int) -> None:
    if generator_classes != data_classes:
        raise ValueError(f"eval.tstr: the generator draws {generator_classes} classes, the data has {data_classes}; "
                         "TSTR scores a classifier of G's classes on the data's")
    if samples < data_classes:
        raise ValueError(f"eval.tstr_samples: got {samples}; fewer than the data's {data_classes} classes")


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
    train, held_out = splits.classifier_split(dataset, seed)
    model = train_classifier(*splits.read(dataset, train), num_classes, seed=seed)
    score = accuracy(model, *splits.read(dataset, held_out))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"model": model.state_dict(), "accuracy": score, "num_classes": num_classes,
                "channels": channels, "image_size": image_size, "recipe": RECIPE}, tmp)
    os.replace(tmp, path)  # whole or not at all, also when two runs train the same classifier at once
    return Classifier(model, score, path, trained_now=True)
