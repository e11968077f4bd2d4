"""Which rank this is, and the few collectives the loop and the evaluator share: decisions agreed from rank 0,
gathers, a bounded wait for rank 0's work, and per-interval stats reduced in one all-reduce. Every helper is a no-op
in a single process."""

import itertools
from datetime import timedelta
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


_rank0_waits = itertools.count()  # every rank calls wait_for_rank0 as often as the others: the keys agree


def wait_for_rank0(what: str, timeout_s: float) -> None:
    """Rank 0 calls it once done with `what`; the others wait for that, up to `timeout_s`, then raise naming `what`.
    The wait is on the process group's store, not a collective: a collective would time out after the group's
    timeout (Ray Train's: 30 min), however long rank 0's work takes, with an error that names nothing."""
    get_store = getattr(dist.distributed_c10d, "_get_default_store", None)  # torch's private API
    if world_size() == 1 or get_store is None:  # without it, the collective that follows waits the group's timeout
        return
    store = get_store()
    key = f"ganorch/rank0-done/{next(_rank0_waits)}"
    if rank() == 0:
        store.set(key, what)
        return
    try:
        store.wait([key], timedelta(seconds=timeout_s))
    except dist.DistStoreError:
        raise TimeoutError(f"gave up waiting for {what} from rank 0 after {timeout_s:g} s (was rank 0 lost?)") from None
    except dist.DistNetworkError as err:  # the store is rank 0's: its process is gone
        raise RuntimeError(f"lost rank 0 while waiting for {what} ({err})") from None


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
