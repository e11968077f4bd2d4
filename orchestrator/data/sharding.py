"""Per-worker batches of an in-memory or map-style dataset.

Every epoch is one seeded order, alike on every rank, cut into global batches; each worker takes its share of
each: every world_size-th image from its own rank on. So the global batch of a step is the same whatever the
number of workers, and a run can continue on another number of them (an elastic group).
"""

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


class ShardedBatches:
    """Endless batches of this rank's share of each global batch of `batch_size`; a new epoch reshuffles (with
    DistributedSampler's order: seed + epoch). An incomplete last batch is dropped, so N ranks see exactly the
    samples that 1 rank sees. Started at `position` (a count of batches), it yields what an iterator that had
    yielded that many would yield next, at any number of ranks."""

    def __init__(self, dataset: Dataset, *, batch_size: int, rank: int, world_size: int, seed: int,
                 device: torch.device, memory_format: torch.memory_format = torch.contiguous_format,
                 position: int = 0):
        if isinstance(dataset, TensorDataset):  # in memory: kept on the device, batches are indexed there
            dataset = TensorDataset(*(t.to(device) for t in dataset.tensors))
        self.dataset = dataset
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.share = len(range(rank, batch_size, world_size))
        self.device = device
        self.memory_format = memory_format
        self.epoch = 0
        self.position = position  # batches yielded so far, over all epochs: where a resumed run picks up
        if len(dataset) < batch_size:
            raise ValueError(f"the data holds {len(dataset)} images, fewer than the global batch of {batch_size}: "
                             "lower train.batch_size")

    def epoch_batches(self) -> list[list[int]]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        return [order[i:i + self.batch_size][self.rank::self.world_size]
                for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.epoch, skip = divmod(self.position, len(self.dataset) // self.batch_size)
        while True:
            batches = self.epoch_batches()[skip:]
            skip = 0
            if isinstance(self.dataset, TensorDataset):
                all_images, all_labels = self.dataset.tensors
                # the epoch's indices copied to the device at once: a copy per batch would wait on the GPU each time
                order = torch.tensor([i for batch in batches for i in batch], dtype=torch.long, device=self.device)
                loaded = ((all_images[i], all_labels[i]) for i in order.split(self.share))
            else:
                loaded = DataLoader(self.dataset, batch_sampler=batches, pin_memory=self.device.type == "cuda")
            for images, labels in loaded:
                self.position += 1
                yield (images.to(self.device, non_blocking=True, memory_format=self.memory_format),
                       labels.to(self.device, non_blocking=True))
            self.epoch += 1
