"""A real `mlflow server` stopped in the middle of a run: training goes on, a warning says so once, and what the
run logs lands when the server is back; if it never comes back, it is kept on disk and `ganorch sync` sends it."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import test_faults
from conftest import free_port, stop_process_group, wait_for
from test_faults import reporting_worker, traced_worker

from orchestrator.cli import main
from orchestrator.spec import load
from orchestrator.track import store
from orchestrator.train import launch

REPO = Path(__file__).resolve().parents[1]
STEPS = 16


class Server:
    """`mlflow server` on 127.0.0.1 that a test stops and starts again, on the same port and stores."""

    def __init__(self, root: Path):
        self.root, self.port, self.process = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        self.process = subprocess.Popen(
            ["mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=open(self.root / "server.err", "a"))
        wait_for(self.healthy, 90, "mlflow server")

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.uri}/health", timeout=2).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        stop_process_group(self.process, grace=5)
        assert not self.healthy()


@pytest.fixture
def server(tmp_path, monkeypatch):
    (tmp_path / "server").mkdir()
    up = Server(tmp_path / "server")
    up.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", up.uri)
    monkeypatch.chdir(tmp_path)
    yield up
    stop_process_group(up.process, grace=3)


def outage_run(server: Server, tmp_path: Path, back_after_steps: int | None, *overrides: str):
    """Train 1 worker for STEPS steps; stop the server once a checkpoint was reported, and start it again
    `back_after_steps` reported steps later (None: never)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(test_faults)
    traces = tmp_path / "traces"
    traces.mkdir()
    spec = load(REPO / "jobs/debug_dcgan.yaml", [
        f"tracking.storage_path={tmp_path / 'ray_storage'}", "resources.num_workers=1", f"train.steps={STEPS}",
        "tracking.metrics_every=1", "tracking.checkpoint_every=2", "tracking.samples_every=4", *overrides])
    seen, errors = {}, []

    def outage() -> None:
        try:
            _, seen["down_at"] = wait_for(lambda: reporting_worker(traces, 0, 0.0), 120, "a checkpoint")
            server.stop()
            if back_after_steps is not None:
                wait_for(lambda: (t := reporting_worker(traces, 0, 0.0)) and t[1] >= seen["down_at"] + back_after_steps,
                         120, "training to go on while MLflow is down")
                server.start()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    outcome = launch.run(spec, loop=traced_worker(str(traces), hold_s=0.4))
    thread.join(timeout=120)
    assert not errors, errors
    return outcome, seen


def test_training_goes_on_through_an_outage_and_everything_lands_when_mlflow_is_back(server, tmp_path, capsys):
    outcome, seen = outage_run(server, tmp_path, back_after_steps=4)
    assert outcome.summary["step"] == STEPS and outcome.unsent == []
    printed = capsys.readouterr().out
    assert printed.count(f"warning: MLflow at {server.uri} cannot be reached") == 1, printed
    assert f"MLflow at {server.uri} answers again after" in printed
    c = store.client(server.uri)
    run = c.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["ganorch.outcome"] == "completed"
    assert [m.step for m in c.get_metric_history(outcome.run_id, "loss_d")] == list(range(1, STEPS + 1))
    samples = {a.path for a in c.list_artifacts(outcome.run_id, "samples")}
    assert samples == {f"samples/step_{s:06d}.png" for s in (0, 4, 8, 12, 16)} | {"samples/training.gif",
                                                                                  "samples/interpolation.png"}
    checkpoints = {a.path for a in c.list_artifacts(outcome.run_id, "checkpoints")}
    assert checkpoints == {f"checkpoints/step_{s:06d}" for s in range(2, STEPS + 1, 2)}
    assert seen["down_at"] < STEPS - 4  # the outage was in the middle of the run


def test_without_mlflow_to_the_end_the_run_is_kept_on_disk_and_synced_later(server, tmp_path, capsys):
    outcome, seen = outage_run(server, tmp_path, None, "tracking.outage_wait_s=2")
    assert outcome.summary["step"] == STEPS
    kept = [Path(where.partition(":")[2]) for where in outcome.unsent]
    assert sorted(p.name for p in kept) == ["driver", "rank0"]
    home = Path(os.environ["GANORCH_HOME"])  # the session's (tests/conftest.py), the workers' too
    assert all(p.parent == home / "unsent" / outcome.run_id for p in kept), kept
    assert "ops.jsonl" in {f.name for f in kept[0].parent.glob("*/*")}
    # Nothing secret is kept: no tracking URI, no credentials.
    assert not [f for f in home.rglob("*.json*") if server.uri in f.read_text()]

    capsys.readouterr()
    server.start()
    # This run's folders: the session's home may hold those of other tests' runs, on servers that are gone.
    assert main(["sync", *map(str, kept)]) == 0
    printed = capsys.readouterr().out
    assert printed.count(f"of run {outcome.run_id} from") == 2, printed
    c = store.client(server.uri)
    run = c.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["ganorch.outcome"] == "completed"
    assert [m.step for m in c.get_metric_history(outcome.run_id, "loss_d")] == list(range(1, STEPS + 1))
    assert f"checkpoints/step_{STEPS:06d}" in {a.path for a in c.list_artifacts(outcome.run_id, "checkpoints")}
    assert not (home / "unsent" / outcome.run_id).exists()  # all sent, nothing refused: gone
    # What the run page shows came too, as MLflow's REST API gives it: the generator, the dataset, the description.
    got = requests.get(f"{server.uri}/api/2.0/mlflow/runs/get", params={"run_id": outcome.run_id}, timeout=30)
    found = got.json()["run"]
    (output,) = found["outputs"]["model_outputs"]
    assert int(output["step"]) == STEPS
    model = requests.get(f"{server.uri}/api/2.0/mlflow/logged-models/{output['model_id']}", timeout=30).json()
    assert (model["model"]["info"]["name"], model["model"]["info"]["status"]) == ("generator", "LOGGED_MODEL_READY")
    (given,) = found["inputs"]["dataset_inputs"]
    assert given["dataset"]["name"] == "mnist5k"
    tags = {t["key"]: t["value"] for t in found["data"]["tags"]}
    assert tags["mlflow.note.content"].splitlines()[1].startswith(f"Completed {STEPS} steps")


def test_a_nodes_system_metrics_monitor_stops_at_once_while_mlflow_cannot_be_reached():
    """The end of a run does not wait on MLflow's retries for the monitor's last write."""
    import time

    from orchestrator.track.system_metrics import STOP_WAIT_S, NodeMetrics

    started = time.monotonic()
    metrics = NodeMetrics(f"http://127.0.0.1:{free_port()}", "0" * 32, interval_s=0.2)
    time.sleep(1.0)
    metrics.stop()
    assert time.monotonic() - started < 1.0 + 2 * STOP_WAIT_S
