"""A checkpoint is one dict of state_dicts plus plain data: `checkpoint.pt`, written atomically beside its SHA-256
(`checkpoint.pt.sha256`), loaded with weights_only=True after the checksum is verified."""

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

FILENAME = "checkpoint.pt"
CHECKSUM_SUFFIX = ".sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupted, or not a checkpoint."""


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
        "loop": loop or {},           # where the training loop stands, for a resume (orchestrator.train.resume)
    }


def save(state: dict[str, Any], directory: str | Path) -> Path:
    """Write `directory/checkpoint.pt` and its checksum, each through a temporary file and a rename, so a reader
    never sees half a file; a crash between the two renames leaves a pair that `load` refuses."""
    path = Path(directory) / FILENAME
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    digest = sha256(tmp)
    os.replace(tmp, path)
    checksum = checksum_path(path)
    tmp_checksum = checksum.with_name(checksum.name + ".tmp")
    tmp_checksum.write_text(f"{digest}  {FILENAME}\n")
    os.replace(tmp_checksum, checksum)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (or the directory holding one) without unpickling arbitrary objects. Raises
    CheckpointError when it is missing, does not match its checksum, or cannot be read. The checksum is not
    required: a file without one beside it (a checkpoint from elsewhere, a downloaded artifact) loads unverified."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    verify(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, not a torch file, or pickled objects that weights_only refuses
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: cannot be read as a checkpoint ({reason[:200]})") from None


def verify(path: Path) -> None:
    """Compare the file with the checksum saved beside it, when there is one (files from elsewhere have none)."""
    checksum = checksum_path(path)
    if not checksum.is_file():
        return
    expected = checksum.read_text().split()[0] if checksum.read_text().strip() else ""
    actual = sha256(path)
    if actual != expected:
        raise CheckpointError(f"{path}: corrupted or truncated: its SHA-256 is {actual[:16]}..., the checksum "
                              f"saved with it ({checksum.name}) says {expected[:16] or 'nothing'}...")


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def location(ckpt: Any) -> str:
    """Where a ray.train.Checkpoint is, as a URI: s3://bucket/... in S3 (any pyarrow filesystem), a path on disk."""
    kind = ckpt.filesystem.type_name
    return ckpt.path if kind == "local" else f"{kind}://{ckpt.path}"
