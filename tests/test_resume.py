"""`ganorch run JOB --resume auto|PATH|RUN_ID`: stopping at step k and resuming to step n gives the run that was
never stopped; what cannot be resumed is refused before anything starts."""

import re
from pathlib import Path

import pytest
import torch

from orchestrator.cli import main
from orchestrator.spec import load
from orchestrator.track import store
from orchestrator.train import checkpoint

REPO = Path(__file__).resolve().parents[1]
JOB = str(REPO / "jobs/debug_dcgan.yaml")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", JOB, *args])
    out, err = capsys.readouterr()
    return code, out, err


def final_checkpoint(uri: str, run_id: str, tmp_path: Path) -> dict:
    c = store.client(uri)
    artifact = c.get_run(run_id).data.tags["ganorch.checkpoint"]
    folder = c.download_artifacts(run_id, artifact.rpartition("/")[0], str(tmp_path / run_id))
    return checkpoint.load(folder)


def test_a_run_stopped_at_k_and_resumed_to_n_is_the_run_never_stopped(ray_session, mlflow_store, tmp_path, capsys):
    common = ["--set", f"tracking.storage_path={tmp_path / 'ray_storage'}", "--set", "tracking.checkpoint_every=3",
              "--set", "tracking.metrics_every=1"]
    code, out, err = run_cli(capsys, *common, "--set", "train.steps=6")
    assert code == 0, err
    whole = re.search(r"MLflow run ([0-9a-f]{32})", out).group(1)
    code, out, err = run_cli(capsys, *common, "--set", "train.steps=3")
    assert code == 0, err
    stopped = re.search(r"MLflow run ([0-9a-f]{32})", out).group(1)

    code, out, err = run_cli(capsys, *common, "--set", "train.steps=6", "--resume", "auto")
    assert code == 0, err
    assert "resuming from step 3: run debug_dcgan" in out and f"(MLflow run {stopped} goes on)" in out, out
    assert f"MLflow run {stopped};" in out  # the run that stopped went on

    expected, resumed = final_checkpoint(mlflow_store, whole, tmp_path), final_checkpoint(mlflow_store, stopped, tmp_path)
    assert resumed["step"] == expected["step"] == 6
    for part in ("generator", "generator_ema", "discriminator"):
        for name, tensor in expected[part].items():
            assert torch.equal(resumed[part][name], tensor), f"{part}.{name}"
    for part in ("optimizer_g", "optimizer_d"):
        for index, moments in expected[part]["state"].items():
            assert all(torch.equal(resumed[part]["state"][index][k], v) for k, v in moments.items()), part
    c = store.client(mlflow_store)
    assert [m.step for m in c.get_metric_history(stopped, "loss_d")] == list(range(1, 7))
    assert [m.value for m in c.get_metric_history(stopped, "loss_d")] == \
        [m.value for m in c.get_metric_history(whole, "loss_d")]
    tags = c.get_run(stopped).data.tags
    assert tags["ganorch.restarts"] == "1" and tags["ganorch.restart.1"].startswith("resumed (ganorch run --resume)")


@pytest.fixture
def saved_checkpoint(tmp_path) -> Path:
    """A real checkpoint of debug_dcgan at step 3."""
    from orchestrator.train.networks import build_networks

    spec = load(JOB)
    G, D = build_networks(spec)
    state = checkpoint.build(G=G, G_ema=G, D=D, opt_g=torch.optim.Adam(G.parameters()),
                             opt_d=torch.optim.Adam(D.parameters()), step=3, images_seen=96, spec=spec.to_dict())
    (tmp_path / "saved").mkdir()
    return checkpoint.save(state, tmp_path / "saved")


@pytest.mark.parametrize("resume, overrides, message", [
    ("no/such/file.pt", [], "--resume no/such/file.pt: no such checkpoint file, and not an MLflow run id"),
    ("0123456789abcdef0123456789abcdef", [], "--resume 0123456789abcdef0123456789abcdef: no MLflow run with this id"),
    ("{saved}", ["model.g_width=8"], "--resume: the checkpoint's networks have model.g_width 4, the spec has 8"),
    ("{saved}", ["train.steps=3"], "--resume: the checkpoint is at step 3 and train.steps is 3: nothing left"),
    ("{damaged}", [], "checkpoint.pt: corrupted or truncated"),
])
def test_what_cannot_be_resumed_exits_2_before_anything_starts(mlflow_store, saved_checkpoint, capsys, resume,
                                                               overrides, message):
    damaged = saved_checkpoint.parent.parent / "damaged"
    damaged.mkdir()
    for file in saved_checkpoint.parent.iterdir():
        (damaged / file.name).write_bytes(file.read_bytes())
    (damaged / "checkpoint.pt").write_bytes((damaged / "checkpoint.pt").read_bytes()[:-10])
    target = resume.format(saved=saved_checkpoint.parent, damaged=damaged)
    code = main(["run", JOB, "--resume", target, *(a for o in overrides for a in ("--set", o))])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not Path("mlflow.db").exists() or not store.client(mlflow_store).search_experiments(
        filter_string="name = 'debug_dcgan'")  # nothing was started
