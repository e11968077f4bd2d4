"""Collectives for the alternating phases: DDP wrapping, once-per-interval stats, rank consistency.

G and D are separate DDP modules. In a phase only the trained network runs through its DDP wrapper;
the frozen one is called as the bare module (`ddp.module`) with `requires_grad=False`, so its reducer
never waits for gradients that will not come and the phase all-reduces only what it steps.
A phase may call its trained network more than once before its single backward (D on real, then on
fake): every parameter still gets one accumulated gradient, so DDP reduces each once.
"""

import hashlib
import inspect
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def wrap_ddp(module: nn.Module, device: torch.device) -> DDP:
    """DDP without per-forward buffer broadcasts. BatchNorm running statistics are not used in training
    mode, so each rank keeps its own until `broadcast_buffers` aligns them to rank 0's before a snapshot."""
    device_ids = [device.index] if device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DDP).parameters:  # newer torch renamed the option
        return DDP(module, device_ids=device_ids, forward_sync_buffers=False)
    return DDP(module, device_ids=device_ids, broadcast_buffers=False)


def broadcast_buffers(module: nn.Module) -> None:
    """Make every rank's buffers rank 0's. Frozen-module forwards update BatchNorm statistics locally."""
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def agree(value: int, device: torch.device) -> int:
    """Rank 0's `value` on every rank: decisions that lead to collectives (save, stop) must be taken together."""
    if world_size() == 1:
        return value
    tensor = torch.tensor(value, dtype=torch.long, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


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


def state_digest(module: nn.Module, parameters_only: bool = False) -> str:
    """A hash of every parameter and buffer (or parameter only), by name: equal digests mean bit-identical state."""
    tensors = dict(module.named_parameters()) if parameters_only else module.state_dict()
    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gather_objects(local: Any) -> list[Any]:
    """Every rank's `local` (small, picklable), in rank order."""
    if world_size() == 1:
        return [local]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def gather_digests(modules: dict[str, nn.Module], parameters_only: bool = False) -> dict[str, list[str]]:
    """{name: [digest on rank 0, digest on rank 1, ...]} for each module."""
    gathered = gather_objects({name: state_digest(m, parameters_only) for name, m in modules.items()})
    return {name: [g[name] for g in gathered] for name in modules}


class RankDivergence(RuntimeError):
    pass


def check_consistency(modules: dict[str, nn.Module]) -> dict[str, list[str]]:
    """StyleGAN3's check before a snapshot: every rank must hold bit-identical parameters and buffers."""
    for module in modules.values():
        broadcast_buffers(module)
    digests = gather_digests(modules)
    diverged = [name for name, per_rank in digests.items() if len(set(per_rank)) != 1]
    if diverged:
        raise RankDivergence(f"ranks hold different {', '.join(diverged)} state: {digests}")
    return digests
