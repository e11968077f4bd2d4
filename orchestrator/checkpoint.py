"""A checkpoint is one dict of state_dicts plus plain data, saved atomically, loaded with weights_only=True."""

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

FILENAME = "checkpoint.pt"


def build(*, G: nn.Module, G_ema: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
          opt_d: torch.optim.Optimizer, step: int, images_seen: int, spec: dict[str, Any],
          num_classes: int = 0, loop: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "generator": G.state_dict(),
        "generator_ema": G_ema.state_dict(),
        "discriminator": D.state_dict(),
        "optimizer_g": opt_g.state_dict(),
        "optimizer_d": opt_d.state_dict(),
        "step": step,
        "images_seen": images_seen,
        "spec": spec,
        "num_classes": num_classes,   # 0: unconditional; else what build_networks(spec, num_classes) needs
        "loop": loop or {},           # where the training loop stands, for a resume (orchestrator.resume)
    }


def save(state: dict[str, Any], directory: str | Path) -> Path:
    """Write `directory/checkpoint.pt` through a temporary file, so a reader never sees half a file."""
    path = Path(directory) / FILENAME
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (or the directory holding one) without unpickling arbitrary objects."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    return torch.load(path, map_location=map_location, weights_only=True)


def location(ckpt: Any) -> str:
    """Where a ray.train.Checkpoint is, as a URI: s3://bucket/... in S3 (any pyarrow filesystem), a path on disk."""
    kind = ckpt.filesystem.type_name
    return ckpt.path if kind == "local" else f"{kind}://{ckpt.path}"
