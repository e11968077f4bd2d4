"""Jobs on a real Ray cluster through its job server: a head and a second node started with `ray start` on this
machine (token authentication on), and a real `mlflow server` with basic auth. `ganorch` runs as a user runs it,
in a process of its own, with the Ray token and the MLflow credentials in its environment only."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
JOB = "jobs/tiny.yaml"


def ganorch(*args: str, cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def project(tmp_path_factory, mlflow_server_process, ray_cluster, mlflow_server):
    """A user's folder holding a job spec (jobs/debug_dcgan.yaml with checkpoints in this folder), and the
    environment `ganorch` runs in there: the cluster's token, MLflow's URI and credentials."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "jobs").mkdir()
    spec = yaml.safe_load((REPO / "jobs/debug_dcgan.yaml").read_text())
    spec["tracking"]["storage_path"] = str(folder / "ray_storage")
    (folder / JOB).write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(RAY_AUTH_TOKEN=ray_cluster.token, MLFLOW_TRACKING_URI=mlflow_server.uri,
               MLFLOW_TRACKING_USERNAME=mlflow_server.username, MLFLOW_TRACKING_PASSWORD=mlflow_server.password,
               HOME=str(folder))  # no ~/.ray/auth_token of this machine's
    return folder, env


@pytest.fixture(scope="module")
def mlflow(mlflow_server):
    from mlflow import MlflowClient

    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update(MLFLOW_TRACKING_USERNAME=mlflow_server.username, MLFLOW_TRACKING_PASSWORD=mlflow_server.password)
    yield MlflowClient(mlflow_server.uri)
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def job_run(mlflow, submission_id: str):
    """The MLflow runs of Ray Train run `submission_id`."""
    experiment = mlflow.get_experiment_by_name("debug_dcgan")
    if experiment is None:
        return []
    return mlflow.search_runs([experiment.experiment_id], f"tags.`ganorch.train_run` = '{submission_id}'")


def test_nothing_is_sent_for_a_bad_spec_address_or_token(project, ray_cluster):
    folder, env = project
    address = ["--address", ray_cluster.address]

    bad_spec = ganorch("submit", JOB, *address, "--set", "train.steps=-1", cwd=folder, env=env)
    assert bad_spec.returncode == 2 and "train.steps" in bad_spec.stderr and "Traceback" not in bad_spec.stderr

    closed = ganorch("submit", JOB, "--address", f"http://127.0.0.1:{free_port()}", cwd=folder, env=env)
    assert closed.returncode == 2, closed.stderr
    assert "cannot reach Ray's job server at http://127.0.0.1:" in closed.stderr and "Traceback" not in closed.stderr

    wrong = ganorch("submit", JOB, *address, cwd=folder, env={**env, "RAY_AUTH_TOKEN": "0" * 64})
    assert wrong.returncode == 2, wrong.stderr
    assert "refused the token in RAY_AUTH_TOKEN" in wrong.stderr and "Traceback" not in wrong.stderr

    without = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    none = ganorch("list", *address, cwd=folder, env=without)
    assert none.returncode == 2 and "refused no token" in none.stderr, none.stderr
    missing = ganorch("list", *address, cwd=folder, env={**without, "RAY_AUTH_TOKEN_PATH": str(folder / "nope")})
    assert missing.returncode == 2 and f"no token file {folder / 'nope'}" in missing.stderr

    # The token from a file, as Ray reads it, lets `list` in: no job was sent by the refused submissions.
    (folder / "token").write_text(ray_cluster.token + "\n")
    listed = ganorch("list", *address, cwd=folder, env={**without, "RAY_AUTH_TOKEN_PATH": str(folder / "token")})
    assert listed.returncode == 0 and listed.stdout.strip() == "no jobs", listed.stdout + listed.stderr

    unknown = ganorch("status", "no-such-job", *address, cwd=folder, env=env)
    assert unknown.returncode == 2 and "no job no-such-job" in unknown.stderr


@pytest.fixture(scope="module")
def lifecycle(ray_cluster, mlflow, project):
    """One job through its life: submitted (2 workers), stopped once it has checkpoints, refused while it runs,
    and submitted again under its id to run to its end. Returns what each step printed and saw."""
    folder, env = project
    seen = {}

    def run(name: str, *args: str) -> subprocess.CompletedProcess:
        seen[name] = ganorch(*args, "--address", ray_cluster.address, cwd=folder, env=env)
        return seen[name]

    job = [JOB, "--id", "life", "--set", "tracking.metrics_every=1", "--set", "tracking.checkpoint_every=4",
           "--set", "tracking.samples_every=1000"]
    assert run("submit", "submit", *job, "--set", "train.steps=100000").returncode == 0, seen["submit"].stderr
    run("refused", "submit", *job)
    seen["run"] = wait_for(lambda: next((r for r in job_run(mlflow, "life") if "ganorch.checkpoint" in r.data.tags),
                                        None), 180, "the job's first checkpoint")
    run("stop", "stop", "life")
    seen["killed"] = wait_for(lambda: mlflow.get_run(seen["run"].info.run_id).info.status == "KILLED", 30,
                              "the run to be KILLED")
    seen["reached"] = max(m.step for m in mlflow.get_metric_history(seen["run"].info.run_id, "loss_d"))
    seen["target"] = seen["reached"] + 3
    run("resubmit", "submit", *job, "--set", f"train.steps={seen['target']}")
    run("follow", "logs", "life", "--follow")
    run("status", "status", "life")
    run("logs", "logs", "life")
    run("list", "list")
    seen["runs"] = job_run(mlflow, "life")
    return seen


def test_stop_ends_a_running_job_and_its_run(lifecycle):
    refused = lifecycle["refused"]
    assert refused.returncode == 2 and re.search("job life is (PENDING|RUNNING); stop it first", refused.stderr), \
        refused.stderr
    stop = lifecycle["stop"]
    assert stop.returncode == 0 and stop.stdout.strip() == "job life: STOPPED", stop.stdout + stop.stderr
    assert lifecycle["killed"]  # the driver ended its MLflow run as KILLED when Ray's job server stopped it


def test_resubmitted_job_continues_from_its_checkpoint_in_the_same_run(lifecycle, mlflow):
    resubmit, target = lifecycle["resubmit"], lifecycle["target"]
    assert resubmit.returncode == 0, resubmit.stderr
    assert "resubmitted life (it had STOPPED) as Ray job life--attempt-2" in resubmit.stdout
    status = lifecycle["status"].stdout
    assert "job life: SUCCEEDED" in status, status + lifecycle["logs"].stdout
    assert "attempt:    2 (Ray job life--attempt-2); before it: life STOPPED" in status
    assert lifecycle["follow"].returncode == 0  # `logs --follow` exits with its job: 0 once it SUCCEEDED
    [run] = lifecycle["runs"]
    tags = run.data.tags
    assert run.info.run_id == lifecycle["run"].info.run_id and run.info.status == "FINISHED"
    assert tags["ganorch.restarts"] == "1" and tags["ganorch.restart.1"].startswith("resubmitted")
    step = int(tags["ganorch.resumed_from"].split(":")[0].removeprefix("step "))
    assert 4 <= step <= lifecycle["reached"] and step % 4 == 0, tags["ganorch.resumed_from"]
    project = Path(lifecycle["run"].data.params["tracking.storage_path"])
    assert tags["ganorch.resumed_from"].split(": ", 1)[1].startswith(str(project / "life"))
    assert Path(tags["ganorch.ray_checkpoint"]).is_relative_to(project / "life")
    assert tags["ganorch.storage"] == str(project / "life")
    # One point per step: none missing, none logged twice across the stop and the resume.
    assert [m.step for m in mlflow.get_metric_history(run.info.run_id, "loss_d")] == list(range(1, target + 1))
    logs = lifecycle["logs"].stdout
    assert logs.index("=== life, attempt 1 (Ray job life) ===") < logs.index("Running entrypoint for job life: ") \
        < logs.index("=== life, attempt 2 (Ray job life--attempt-2) ===") \
        < logs.index("Running entrypoint for job life--attempt-2") < logs.index(f"done: step {target}")
    [row] = [line.split() for line in lifecycle["list"].stdout.splitlines() if line.startswith("life ")]
    assert row[:3] == ["life", "SUCCEEDED", "2"] and row[-1] == JOB, lifecycle["list"].stdout


def test_two_workers_run_one_on_each_node_and_end_with_identical_parameters(lifecycle, ray_cluster):
    assert "workers: 2 on 2 node(s); parameters identical on all 2 ranks" in lifecycle["logs"].stdout
    [run] = lifecycle["runs"]
    placed = run.data.tags["ganorch.workers"]
    assert placed.count("rank ") == 2 and all(node[:12] in placed for node in ray_cluster.node_ids), placed


def test_credentials_reach_the_workers_and_nowhere_else(lifecycle, ray_cluster, mlflow_server, mlflow, tmp_path):
    # Rank 0 logged every step to a server that refuses anonymous writes, so the credentials reached it; yet they
    # are in no param, tag or artifact, nor in anything ganorch printed, the job's logs or the cluster's log files.
    [run] = lifecycle["runs"]
    secret = mlflow_server.password
    assert all(secret not in value for value in [*run.data.params.values(), *run.data.tags.values()])
    for artifact in ("spec.yaml", "restarts/1/spec.yaml"):
        assert secret not in Path(mlflow.download_artifacts(run.info.run_id, artifact, str(tmp_path))).read_text()
    printed = [p.stdout + p.stderr for p in lifecycle.values() if isinstance(p, subprocess.CompletedProcess)]
    assert printed and not [text for text in printed if secret in text]
    logs = [p for p in ray_cluster.temp.rglob("*") if p.is_file() and "logs" in p.parts]
    assert logs and not [p for p in logs if secret.encode() in p.read_bytes()]


HELD_NETWORKS = '''"""A D that takes 20 ms a call while the file {hold} exists: the job lasts until the test lets it finish."""

import time
from pathlib import Path

from torch import nn

HOLD = Path({hold!r})


class HeldDiscriminator(nn.Module):
    def __init__(self, image_size: int, channels: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size ** 2, width), nn.LeakyReLU(0.2),
                                 nn.Linear(width, 1))

    def forward(self, x):
        if HOLD.exists():
            time.sleep(0.02)
        return self.net(x)
'''


def test_an_elastic_job_goes_on_without_a_lost_node_and_grows_when_it_is_back(project, ray_cluster, mlflow, capsys):
    """A 2-worker elastic job (resources.num_workers [1, 2]) loses the second node's Ray mid-run, goes on on one
    worker from its latest checkpoint, gets the node back and finishes on two. The run's tags record each resize
    (when, from what size to what, why), the job's output says so, num_workers is a metric over time, and every
    step has one metric point."""
    import time

    folder, env = project
    hold = folder / "hold"
    hold.touch()
    (folder / "held_networks.py").write_text(HELD_NETWORKS.format(hold=str(hold)))
    steps, every = 3000, 10
    job = [JOB, "--id", "spot", "--set", "resources.num_workers=[1, 2]", "--set", "resources.resize_check_s=2",
           "--set", "resources.start_timeout_s=20",
           "--set", f"train.steps={steps}", "--set", f"tracking.metrics_every={every}", "--set",
           "tracking.checkpoint_every=50", "--set", "tracking.samples_every=100000", "--set", "eval.every=0",
           "--set", "model.discriminator=held_networks:HeldDiscriminator"]
    address = ["--address", ray_cluster.address]
    submitted = ganorch("submit", *job, *address, cwd=folder, env=env)
    assert submitted.returncode == 0, submitted.stderr
    run = wait_for(lambda: next((r for r in job_run(mlflow, "spot") if "ganorch.checkpoint" in r.data.tags), None),
                   180, "the job's first checkpoint")

    def sizes() -> list[float]:
        return [m.value for m in sorted(mlflow.get_metric_history(run.info.run_id, "num_workers"),
                                        key=lambda m: m.step)]

    assert set(sizes()) == {2}, sizes()
    lost = time.monotonic()
    ray_cluster.stop_node()
    seen_gone_s = time.monotonic() - lost
    wait_for(lambda: 1 in sizes(), 300, "the job to go on on one worker")
    shrunk_s = time.monotonic() - lost
    back = time.monotonic()
    ray_cluster.start_node()
    wait_for(lambda: sizes()[-1] == 2 and 1 in sizes(), 300, "the job to grow back to two workers")
    grown_s = time.monotonic() - back
    hold.unlink()
    follow = ganorch("logs", "spot", "--follow", *address, cwd=folder, env=env, timeout=600)
    with capsys.disabled():
        print(f"\nelastic job: on one worker {shrunk_s:.0f} s after its second node's Ray was stopped (the head saw "
              f"it gone after {seen_gone_s:.0f} s), on two again {grown_s:.0f} s after the node was started")
    status = ganorch("status", "spot", *address, cwd=folder, env=env)
    assert follow.returncode == 0 and "job spot: SUCCEEDED" in status.stdout, status.stdout + follow.stdout[-3000:]

    [run] = job_run(mlflow, "spot")
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags["ganorch.resizes"] == "2", tags
    shrink, grow = tags["ganorch.resize.1"], tags["ganorch.resize.2"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: 2 -> 1 worker after a failure \(rank [01] was lost "
                        r"\(.+\)\); continued from step \d+", shrink), shrink
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: 1 -> 2 workers to grow the elastic group, as the "
                        r"cluster had room; continued from step \d+", grow), grow
    history = sorted(mlflow.get_metric_history(run.info.run_id, "num_workers"), key=lambda m: m.step)
    values = [m.value for m in history]
    assert [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]] == [2, 1, 2], values
    for key in ("loss_d", "images_per_sec", "num_workers"):
        assert [m.step for m in mlflow.get_metric_history(run.info.run_id, key)] == \
            list(range(every, steps + 1, every)), key
    printed = follow.stdout
    assert "now on 1 worker (was 2)" in printed and "the elastic group grew as the cluster got room: now on 2 " \
                                                     "workers (was 1)" in printed, printed[-3000:]
    assert f"done: step {steps}" in printed and "workers: 2 on 2 node(s)" in printed, printed[-3000:]
