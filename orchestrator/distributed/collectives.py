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


def largest_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The elementwise largest of every rank's `values` (one all-reduce)."""
    if world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


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


def gather_rows_to_rank0(local: torch.Tensor, share: int) -> torch.Tensor | None:
    """`gather_rows` on rank 0 alone (None on the others), which keep no copy of the others' rows."""
    if world_size() == 1:
        return local
    counts = [torch.zeros((), dtype=torch.long, device=local.device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor(len(local), device=local.device))
    padded = torch.zeros((share, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world_size())] if rank() == 0 else None
    dist.gather(padded, parts, dst=0)
    return torch.cat([part[:count] for part, count in zip(parts, counts)]) if rank() == 0 else None


class StatsAccumulator:
    """Sums per-step scalars on the device, without a host sync; `reduce()` averages them over the interval's
    steps and all ranks with one all-reduce and one host read."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[tuple[str, ...], torch.Tensor] = {}    # by a step's names: their sums
        self.counts: dict[tuple[str, ...], torch.Tensor] = {}  # and how many steps counted

    def add(self, stats: dict[str, torch.Tensor], counted: torch.Tensor | None = None, weight: float = 1.0) -> None:
        """One step's stats (each averaged over its batch); a step whose `counted` is False adds nothing. `weight`:
        how much this rank's step counts in the means over ranks (its share of an unevenly split batch)."""
        names = tuple(stats)
        values = torch.stack([value.detach().float().mean() for value in stats.values()]) * weight
        count = (torch.ones((), device=values.device) if counted is None else counted.float()) * weight
        values = torch.where(count > 0, values, 0.0)
        if names in self.sums:
            self.sums[names] += values
            self.counts[names] += count
        else:
            self.sums[names], self.counts[names] = values, count

    def reduce(self) -> dict[str, float]:
        """Means over the interval and all ranks; a name no step counted is left out. Every rank must call it
        with the same names."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        totals = torch.cat([self.sums[k] for k in keys] + [self.counts[k].reshape(1) for k in keys]).to(self.device)
        if world_size() > 1:
            dist.all_reduce(totals)
        values = totals.tolist()
        sums, counts = values[:len(totals) - len(keys)], values[len(totals) - len(keys):]
        total: dict[str, float] = {}
        steps: dict[str, float] = {}
        position = 0
        for key, count in zip(keys, counts):
            for name in key:
                total[name] = total.get(name, 0.0) + sums[position]
                steps[name] = steps.get(name, 0.0) + count
                position += 1
        self.sums.clear()
        self.counts.clear()
        return {name: total[name] / steps[name] for name in sorted(total) if steps[name] > 0}
