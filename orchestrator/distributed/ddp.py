"""DDP for the alternating phases, and the check that every rank holds the same networks.

G and D are separate DDP modules. In a phase only the trained network runs through its DDP wrapper;
the frozen one is called as the bare module (`unwrap(ddp)`) with `requires_grad=False`, so its reducer
never waits for gradients that will not come and the phase all-reduces only what it steps.
A phase may call its trained network more than once before its single backward (D on real, then on
fake): every parameter still gets one accumulated gradient, so DDP reduces each once.
"""

import hashlib
import inspect

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from orchestrator.distributed.collectives import gather_objects, world_size


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """The module as a phase trains it: in DDP (`data_parallel`) when there are several ranks; a single rank trains
    the module itself, where DDP would only copy its gradients into buckets and back."""
    return data_parallel(module, device) if world_size() > 1 else module


def data_parallel(module: nn.Module, device: torch.device) -> DDP:
    """DDP without per-forward buffer broadcasts. BatchNorm running statistics are not used in training
    mode, so each rank keeps its own until `broadcast_buffers` aligns them to rank 0's before a snapshot."""
    device_ids = [device.index] if device.type == "cuda" else None
    if "forward_sync_buffers" in inspect.signature(DDP).parameters:  # newer torch renamed the option
        return DDP(module, device_ids=device_ids, forward_sync_buffers=False)
    return DDP(module, device_ids=device_ids, broadcast_buffers=False)


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (a bare one as it is)."""
    return module.module if isinstance(module, DDP) else module


def broadcast_buffers(module: nn.Module) -> None:
    """Make every rank's buffers rank 0's. Frozen-module forwards update BatchNorm statistics locally."""
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def state_digest(module: nn.Module, parameters_only: bool = False) -> str:
    """A hash of every parameter and buffer (or parameter only), by name: equal digests mean bit-identical state."""
    tensors = dict(module.named_parameters()) if parameters_only else module.state_dict()
    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
