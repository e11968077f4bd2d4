"""A checkpoint named the ways a user names one: a file, a directory holding `checkpoint.pt` (a Ray Train checkpoint, a
downloaded MLflow artifact), or an MLflow run id (its latest checkpoint, or its best by FID)."""

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.track import store, tags
from orchestrator.train import checkpoint

RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Source:
    state: dict[str, Any]      # the loaded checkpoint
    description: str           # where it came from, for people
    run_id: str | None = None  # the training run it belongs to, when given by run id


def resolve(target: str, best: bool, uri: str) -> Source:
    """A checkpoint file, a directory holding `checkpoint.pt`, or an MLflow run id (its latest checkpoint, or its
    best by FID). Raises ValueError naming what is wrong."""
    path = Path(target).expanduser()
    if path.exists():
        file = path / checkpoint.FILENAME if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"{target}: a directory without {checkpoint.FILENAME}")
        return Source(load_checkpoint(file), str(file))
    if not RUN_ID.fullmatch(target):
        raise ValueError(f"{target}: no such checkpoint file, and not an MLflow run id (32 hex digits)")
    from mlflow.exceptions import MlflowException

    client = store.client(uri)
    try:
        run = client.get_run(target)
    except MlflowException:
        raise ValueError(f"{target}: no MLflow run with this id in {uri}") from None
    tag = tags.TAG_BEST_CHECKPOINT if best else tags.TAG_CHECKPOINT
    artifact = run.data.tags.get(tag)
    if artifact is None:
        what = "no best checkpoint (it never evaluated: eval.every 0?)" if best else "no checkpoint"
        raise ValueError(f"{target}: run {run.info.run_name!r} has {what}")
    folder, _, name = artifact.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="ganorch-eval-") as tmp:  # the folder: the checksum is beside the file
        file = Path(client.download_artifacts(target, folder, tmp)) / name
        return Source(load_checkpoint(file), f"run {run.info.run_name} ({target}): {artifact}", target)


def load_checkpoint(file: Path) -> dict[str, Any]:
    state = checkpoint.load(file)  # CheckpointError (a ValueError): corrupted, truncated, not a torch file
    missing = {"generator_ema", "spec", "step"} - set(state) if isinstance(state, dict) else {"everything"}
    if missing:
        raise ValueError(f"{file}: not a ganorch checkpoint (no {', '.join(sorted(missing))})")
    return state
