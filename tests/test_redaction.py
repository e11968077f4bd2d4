"""Secrets planted in a job's settings reach neither what MLflow holds nor what ganorch prints."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from orchestrator.spec import load
from orchestrator.track import redact, runs, store
from orchestrator.track.tags import TAG_STORAGE
from orchestrator.train import checkpoint

REPO = Path(__file__).resolve().parents[1]
SECRETS = ["PLANTED-DATA-TOKEN", "PLANTED-SIGNATURE", "PLANTED-CREDENTIAL", "PLANTEDSECRETKEY",
           "PLANTED-LIST-SECRET", "PLANTED-SIG", "PLANTED-ENV-SECRET"]


@pytest.mark.parametrize("text, shown", [
    ("s3://AKIAKEY:PLANTEDSECRETKEY@bucket/ckpt", "s3://***@bucket/ckpt"),
    ("https://host/a.png?X-Amz-Date=1&X-Amz-Signature=PLANTED-SIGNATURE&X-Amz-Credential=PLANTED-CREDENTIAL",
     "https://host/a.png?X-Amz-Date=1&X-Amz-Signature=***&X-Amz-Credential=***"),
    ("gs://b/o?sig=PLANTED-SIG&sv=2020", "gs://b/o?sig=***&sv=2020"),
    ("/data/imgs?token=PLANTED-DATA-TOKEN", "/data/imgs?token=***"),
    ("failed: AWS_SECRET_ACCESS_KEY=PLANTED-ENV-SECRET in env", "failed: AWS_SECRET_ACCESS_KEY=*** in env"),
    ("password = PLANTED-LIST-SECRET", "password = ***"),
    ("secrets: starting workers", "secrets: starting workers"),
    ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
    ("KeyError: 'get_dataset_shard'", "KeyError: 'get_dataset_shard'"),
    ('{"token": "PLANTED-LIST-SECRET", "n": 3}', '{"token": "***", "n": 3}'),
    ("Authorization: Bearer PLANTED-SIGNATURE", "Authorization: Bearer ***"),
    ("https://maps/api?key=PLANTED-SIG&alt=json", "https://maps/api?key=***&alt=json"),
    # words that only contain a secret's name stay as they are
    ("cache_key = make_key(spec); sort_keys=True, num_tokens=3, tokenizer=bpe", None),
    ("RAY_AUTH_TOKEN_PATH: no token file /x/nope; RAY_AUTH_MODE=token", None),
    ("WARNING -- Token authentication is enabled for this Ray cluster", None),
])
def test_free_text_is_redacted(text, shown):
    assert redact.redact(text) == (text if shown is None else shown)


def test_structures_are_redacted_at_any_depth():
    value = {"space": {"data.path": {"choice": ["s3://K:PLANTED-LIST-SECRET@b/x", ["gs://b?sig=PLANTED-SIG"]]}},
             "env": {"AWS_SECRET_ACCESS_KEY": "PLANTED-ENV-SECRET", "AWS_REGION": "eu-west-1"}, "n": 3,
             "accessToken": "PLANTED-SIG", "keys": [1, 2], "monkey": 4}
    assert redact.masked(value) == {"space": {"data.path": {"choice": ["s3://***@b/x", ["gs://b?sig=***"]]}},
                                    "env": {"AWS_SECRET_ACCESS_KEY": "***", "AWS_REGION": "eu-west-1"}, "n": 3,
                                    "accessToken": "***", "keys": [1, 2], "monkey": 4}


def held_by_mlflow(workdir: Path) -> bytes:
    """Every byte MLflow holds: its SQLite database and every artifact file, with its path."""
    held = (workdir / "mlflow.db").read_bytes()
    for path in (workdir / "mlruns").rglob("*"):
        if path.is_file():
            held += path.relative_to(workdir).as_posix().encode() + path.read_bytes()
    return held


def test_planted_secrets_reach_neither_mlflow_nor_the_terminal(ray_session, tmp_path, monkeypatch, capfd):
    """A real `ganorch run` whose data path and checkpoint storage carry secrets in query strings ; the listing of images
    that could not be decoded under that path; and a sweep spec with credentials in its storage
    URI and in a nested list of its search space, logged as a sweep's parent run is."""
    from orchestrator.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = tmp_path / "imgs?token=PLANTED-DATA-TOKEN"
    data.mkdir()
    for k in range(8):
        Image.new("L", (28, 28), color=30 * k).save(data / f"{k}.png")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    storage = tmp_path / "ray?X-Amz-Signature=PLANTED-SIGNATURE&X-Amz-Credential=PLANTED-CREDENTIAL"
    job = tmp_path / "job.yaml"
    job.write_text(f"name: secrets\nmodel: {{image_size: 28, channels: 1, latent_dim: 8, g_width: 4, d_width: 4}}\n"
                   f"data: {{source: folder, path: '{data}'}}\n"
                   "train: {steps: 2, batch_size: 4}\nresources: {num_workers: 1}\n"
                   f"tracking: {{storage_path: '{storage}', metrics_every: 1, samples_every: 2, checkpoint_every: 2}}\n")
    assert main(["run", str(job)]) == 0

    sweep = load(REPO / "jobs/debug_dcgan.yaml", [
        "tracking.storage_path=s3://AKIAKEY:PLANTEDSECRETKEY@bucket/ckpt", "data.source=ray-data", "data.path=s3://b/x", "tune.metric=loss_g",
        "tune.space={data.path: {choice: ['s3://K:PLANTED-LIST-SECRET@b/x', 'gs://b/y?sig=PLANTED-SIG']}}"])
    assert main(["validate", str(REPO / "jobs/debug_dcgan.yaml"), "--set",
                 "tracking.storage_path=s3://AKIAKEY:PLANTEDSECRETKEY@bucket/ckpt"]) == 0
    c = store.client(store.tracking_uri())
    parent = runs.create_run(sweep, store.tracking_uri(), c.create_experiment("sweep"), "sweep",
                             params={"trial.AWS_SECRET_ACCESS_KEY": "PLANTED-ENV-SECRET"})
    c.set_tag(parent, TAG_STORAGE, f"{sweep.tracking.storage_path}/run")
    runs.end_run(store.tracking_uri(), parent, "FINISHED", skipped_files=[f"{data}/broken.png"])  # as ray-data does

    printed = capfd.readouterr()
    state = checkpoint.load(next(storage.rglob("checkpoint.pt")))
    held = held_by_mlflow(tmp_path)
    assert b"checkpoint.pt" in held and b"skipped_files.txt" in held  # what is scanned holds the artifacts
    for secret in SECRETS:
        assert secret not in printed.out + printed.err, secret
        assert secret.encode() not in held, secret
        assert secret not in str(state["spec"]), secret
    (trained,) = c.search_runs([c.get_experiment_by_name("secrets").experiment_id])
    assert trained.data.params["data.path"].endswith("imgs?token=***")
    assert trained.data.tags[TAG_STORAGE] == f"{tmp_path}/ray?X-Amz-Signature=***&X-Amz-Credential=***"
    assert c.get_run(parent).data.tags[TAG_STORAGE] == "s3://***@bucket/ckpt/run"
    assert torch.is_tensor(next(iter(state["generator_ema"].values())))


def test_a_terminal_shows_no_secret_rich_has_coloured():
    """On a terminal, rich colours the parts of a URL apart, so the redacted stream never sees it whole: the
    progress line's notices and the trial table's cells are redacted before rich has them."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from orchestrator.track.progress import ProgressView
    from orchestrator.tune.trial_table import TrialTable

    out = io.StringIO()
    view = ProgressView(board=None, total_steps=10, title="job")
    view.live, view.progress = True, Progress(console=Console(file=out, force_terminal=True, width=200))
    view._say("job: passed over s3://AKIAKEY:PLANTEDSECRETKEY@bucket/ckpt?X-Amz-Signature=PLANTED-SIGNATURE")
    table = TrialTable(["data.path"], "fid", "sweep")
    table.rows = {"t1": {"params": {"data.path": "s3://K:PLANTED-LIST-SECRET@b/x"}, "status": "RUNNING",
                         "step": 1, "metric": "-"}}
    Console(file=out, force_terminal=True, width=60).print(table.render())
    shown = out.getvalue()
    assert "bucket" in shown and "t1" in shown
    for secret in SECRETS:
        assert secret not in shown, secret
