"""Which rank this is, and the few collectives the loop and the evaluator share: decisions agreed from rank 0,
gathers, and per-interval stats reduced in one all-reduce. Every helper is a no-op in a single process."""

from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def agree(value: int, device: torch.device) -> int:
    """Rank 0's `value` on every rank: decisions that lead to collectives (save, stop) must be taken together."""
    if world_size() == 1:
        return value
    tensor = torch.tensor(value, dtype=torch.long, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def gather_objects(local: Any) -> list[Any]:
    """Every rank's `local` (small, picklable), in rank order."""
    if world_size() == 1:
        return [local]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def gather_rows(local: torch.Tensor, share: int) -> torch.Tensor:
    """Every rank's rows together (on every rank). Each rank holds at most `share` rows; padding is dropped."""
    if world_size() == 1:
        return local
    counts = [torch.zeros((), dtype=torch.long, device=local.device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor(len(local), device=local.device))
    padded = torch.zeros((share, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


class StatsAccumulator:
    """Sums per-step scalars locally; `reduce()` averages them over steps and ranks with one all-reduce."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for name, value in stats.items():
            value = value.detach().float().mean()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
            self.counts[name] = self.counts.get(name, 0) + 1

    def reduce(self) -> dict[str, float]:
        """Means over the interval and all ranks. Every rank must call it with the same names."""
        names = sorted(self.sums)
        if not names:
            return {}
        totals = torch.stack([self.sums[n] / self.counts[n] for n in names]).to(self.device)
        if world_size() > 1:
            dist.all_reduce(totals)
            totals /= world_size()
        values = totals.tolist()
        self.sums.clear()
        self.counts.clear()
        return dict(zip(names, values))
