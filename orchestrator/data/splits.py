"""The real images every classifier of a dataset is scored on, and the labelled images a few-labels run keeps.

`classifier_split` is the one held-out split of a dataset (at a seed): the domain classifier behind FID is scored on
it, and so are the classifiers of TSTR and `ganorch augment-eval`. `data.labels_per_class` keeps K images per class of
the rest, so the held-out images stay unseen by G and by every classifier trained on the kept ones.
"""

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from gan_models.classifier import HELD_OUT, split_held_out

# The domain classifier trains on at most this many images of a larger dataset (a seeded random subset).
MAX_TRAIN_IMAGES = 20_000


def classifier_split(dataset: Dataset, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) indices into `dataset`: of a seeded random MAX_TRAIN_IMAGES of it (all of it, if fewer),
    a seeded random HELD_OUT share is held out."""
    chosen = torch.arange(len(dataset))
    if len(dataset) > MAX_TRAIN_IMAGES:
        chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:MAX_TRAIN_IMAGES].sort().values
    train, held_out = split_held_out(len(chosen), HELD_OUT, seed)
    return chosen[train], chosen[held_out]


def read(dataset: Dataset, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of `indices`, decoding only those."""
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors
        return images[indices], labels[indices]
    pairs = [dataset[i] for i in indices.tolist()]
    return torch.stack([image for image, _ in pairs]), torch.as_tensor([label for _, label in pairs])


def all_labels(dataset: Dataset) -> torch.Tensor:
    """Every image's label, read without decoding the images where the dataset lists them."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    if isinstance(dataset, Subset):
        return all_labels(dataset.dataset)[torch.as_tensor(dataset.indices)]
    for name in ("labels", "targets"):  # a folder's, SVHN's; torchvision's others
        found = getattr(dataset, name, None)
        if found is not None:
            return torch.as_tensor(found)
    return torch.as_tensor([dataset[i][1] for i in range(len(dataset))])


def labels_per_class(dataset: Dataset, count: int, num_classes: int, seed: int) -> torch.Tensor:
    """Sorted indices into `dataset` of `count` images of each class, a seeded random draw from every image outside
    `classifier_split`'s held-out split (the split's training side first, in its order, then, for data over
    MAX_TRAIN_IMAGES, the images the classifier's subset left out). Raises ValueError naming data.labels_per_class
    when a class has fewer."""
    train, held_out = classifier_split(dataset, seed)
    outside = torch.ones(len(dataset), dtype=torch.bool)
    outside[train] = outside[held_out] = False
    candidates = torch.cat([train, outside.nonzero().flatten()])
    labels = all_labels(dataset)[candidates]
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed + 1))
    kept, available = [], []
    for label in range(num_classes):
        of_class = order[labels[order] == label]
        kept.append(candidates[of_class[:count]])
        available.append(len(of_class))
    if min(available) < count:
        names = getattr(dataset, "classes", None) or range(num_classes)
        short = [f"class {names[c]} has {n}" for c, n in enumerate(available) if n < count]
        raise ValueError(f"data.labels_per_class: got {count}; outside the held-out split ({len(held_out)} images "
                         f"no model trains on), {', '.join(short[:5])}{' ...' if len(short) > 5 else ''}: at most "
                         f"{min(available)}")
    return torch.cat(kept).sort().values


def keep(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """The images `indices` of `dataset`: an in-memory source stays one (ShardedBatches keeps it on the device)."""
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[indices] for t in dataset.tensors))
    return Subset(dataset, indices.tolist())
