"""Per-worker batches of an in-memory or map-style dataset.

Each worker draws batches from its own shard of every epoch; the shards are reshuffled each epoch with the
same seed on every rank, so together they cover the epoch once.
"""

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torch.utils.data.distributed import DistributedSampler


class ShardedBatches:
    """Endless batches of this rank's shard; a new epoch reshuffles. Incomplete batches are dropped,
    so N ranks x batch B see exactly the samples that 1 rank x batch N*B sees. Started at `position`
    (a count of batches), it yields what an iterator that had yielded that many would yield next."""

    def __init__(self, dataset: Dataset, *, batch_size: int, rank: int, world_size: int, seed: int,
                 device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                 position: int = 0):
        if isinstance(dataset, TensorDataset):  # in memory: kept on the device, batches are indexed there
            dataset = TensorDataset(*(t.to(device) for t in dataset.tensors))
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.memory_format = memory_format
        self.sampler = DistributedSampler(range(len(dataset)), num_replicas=world_size, rank=rank,
                                          shuffle=True, seed=seed, drop_last=True)
        self.epoch = 0
        self.position = position  # batches yielded so far, over all epochs: where a resumed run picks up
        if len(self.sampler) < batch_size:
            raise ValueError(f"each worker's shard holds {len(self.sampler)} images, fewer than its batch of "
                             f"{batch_size}: lower train.batch_size or resources.num_workers")

    def epoch_batches(self) -> list[list[int]]:
        self.sampler.set_epoch(self.epoch)
        indices = list(self.sampler)
        return [indices[i:i + self.batch_size] for i in range(0, len(indices) - self.batch_size + 1, self.batch_size)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.epoch, skip = divmod(self.position, len(self.sampler) // self.batch_size)
        while True:
            batches = self.epoch_batches()[skip:]
            skip = 0
            if isinstance(self.dataset, TensorDataset):
                all_images, all_labels = self.dataset.tensors
                # the epoch's indices copied to the device at once: a copy per batch would wait on the GPU each time
                order = torch.tensor([i for batch in batches for i in batch], dtype=torch.long, device=self.device)
                loaded = ((all_images[i], all_labels[i]) for i in order.split(self.batch_size))
            else:
                loaded = DataLoader(self.dataset, batch_sampler=batches, pin_memory=self.device.type == "cuda")
            for images, labels in loaded:
                self.position += 1
                yield (images.to(self.device, non_blocking=True, memory_format=self.memory_format),
                       labels.to(self.device, non_blocking=True))
            self.epoch += 1
