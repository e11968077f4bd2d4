"""Checkpoint files: written atomically beside a checksum; corrupted, truncated or foreign files are refused with
a message naming the file; nothing is unpickled beyond tensors and plain data."""

import os
import pickle

import pytest
import torch

from orchestrator.train import checkpoint
from orchestrator.train.checkpoint import CheckpointError


def small_state() -> dict:
    return {"generator": {"w": torch.arange(1000.0)}, "step": 7, "spec": {"name": "t"}}


def test_a_saved_checkpoint_loads_back_and_leaves_no_temporary_files(tmp_path):
    path = checkpoint.save(small_state(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256"]
    assert (tmp_path / "checkpoint.pt.sha256").read_text().split() == [checkpoint.sha256(path), "checkpoint.pt"]
    state = checkpoint.load(tmp_path)
    assert state["step"] == 7 and torch.equal(state["generator"]["w"], torch.arange(1000.0))


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    path = checkpoint.save(small_state(), tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{path}: corrupted or truncated"):
        checkpoint.load(path)


def test_without_a_checksum_a_truncated_file_still_fails_clearly(tmp_path):
    path = checkpoint.save(small_state(), tmp_path)
    os.remove(checkpoint.checksum_path(path))
    checkpoint.load(path)  # files from elsewhere have no checksum: they load
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{path}: cannot be read as a checkpoint"):
        checkpoint.load(path)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_objects_are_never_unpickled(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        checkpoint.load(path)
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"step": 1}))
    with pytest.raises(CheckpointError, match="raw.pt: cannot be read"):
        checkpoint.load(tmp_path / "raw.pt")


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'checkpoint.pt'}: no such checkpoint file"):
        checkpoint.load(tmp_path)


def test_pruning_keeps_the_latest_checkpoints_by_step_not_by_name(tmp_path):
    """Past step 999,999 the names' text order is not their steps' order: step_1000000 is the latest."""
    from orchestrator.track import store

    c = store.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = c.create_run(c.create_experiment("prune", artifact_location=str(tmp_path / "artifacts"))).info.run_id
    (tmp_path / "checkpoint.pt").write_text("state")
    for step in (999_998, 999_999, 1_000_000):
        c.log_artifact(run_id, str(tmp_path / "checkpoint.pt"), f"checkpoints/step_{step:06d}")
    c.log_artifact(run_id, str(tmp_path / "checkpoint.pt"), "checkpoints/best")
    store.prune_checkpoints(c, run_id, keep=2)
    assert sorted(a.path for a in c.list_artifacts(run_id, "checkpoints")) == \
        ["checkpoints/best", "checkpoints/step_1000000", "checkpoints/step_999999"]
