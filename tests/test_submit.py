"""What `ganorch submit` decides before it talks to a cluster: the address, the token, what travels with a job.
The jobs themselves run on a real cluster in test_cluster_jobs.py."""

import json
import os
import sys
from pathlib import Path

import pytest

from orchestrator.cluster import client as server
from orchestrator.cluster import environment
from orchestrator.cluster import jobs as submitted
from orchestrator.track import redact, store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_address_comes_from_the_flag_then_rays_variables_then_the_forwarded_port(clean_env):
    assert server.address_of(None) == "http://127.0.0.1:8265"
    clean_env.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address, not a job server: ignored
    assert server.address_of(None) == "http://127.0.0.1:8265"
    clean_env.setenv("RAY_ADDRESS", "http://10.0.0.1:8265")
    assert server.address_of(None) == "http://10.0.0.1:8265"
    clean_env.setenv("RAY_API_SERVER_ADDRESS", "10.0.0.2:8265")
    assert server.address_of(None) == "http://10.0.0.2:8265"
    assert server.address_of("https://ray.example.com") == "https://ray.example.com"


def test_token_is_looked_up_as_ray_does(clean_env, tmp_path):
    assert server.token()[0] is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-home\n")
    assert server.token() == ("from-home", f"the token in {tmp_path / '.ray' / 'auth_token'}")
    (tmp_path / "other").write_text("from-path")
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "other"))
    assert server.token()[0] == "from-path"
    clean_env.setenv("RAY_AUTH_TOKEN", "from-env")
    assert server.token() == ("from-env", "the token in RAY_AUTH_TOKEN")
    clean_env.delenv("RAY_AUTH_TOKEN")
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="RAY_AUTH_TOKEN_PATH: no token file"):
        server.token()


def test_a_job_spec_outside_the_working_directory_is_refused_before_the_server_is_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="must be inside the working directory"):
        submitted.submit(None, str(REPO / "jobs/debug_dcgan.yaml"), [], "x")  # None: any use of the client fails


def test_mlflow_settings_travel_as_a_package_never_as_ray_environment_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    (tmp_path / "scratch").mkdir()
    (tmp_path / "again").mkdir()
    env = environment.runtime_env(tmp_path, str(tmp_path / "scratch"))
    assert "env_vars" not in env and env["working_dir"] == str(tmp_path)
    *code, package = env["py_modules"]
    assert sorted(Path(p).name for p in code) == ["gan_models", "orchestrator"]  # ganorch's code as it is here
    assert json.loads((Path(package) / environment.ENV_FILE).read_text()) == store.environment()
    assert "hunter2" not in json.dumps({k: v for k, v in env.items() if k != "py_modules"})

    # Run from the project itself, its code goes with the working directory.
    assert [Path(p).name for p in environment.runtime_env(REPO, str(tmp_path / "again"))["py_modules"]] == \
        [environment.ENV_PACKAGE]

    # The job's driver takes the settings over whatever its cluster has.
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "the cluster's")
    monkeypatch.syspath_prepend(str(Path(package).parent))
    sys.modules.pop(environment.ENV_PACKAGE, None)
    environment.adopt_submitted_environment()
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "hunter2"


def test_printed_uris_hide_credentials():
    assert redact.redact("https://user:pw@mlflow.example.com:5000/x") == "https://***@mlflow.example.com:5000/x"
    assert redact.redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert "pw" not in store.ui_hint("https://user:pw@mlflow.example.com")


def test_attempts_of_an_id_are_ordered_by_number_and_listed_as_one_job():
    from types import SimpleNamespace

    from ray.job_submission import JobStatus

    def job(ray_id, status, attempt=None, job_id=None, started=0):
        metadata = {submitted.META_ID: job_id, submitted.META_ATTEMPT: str(attempt), submitted.META_JOB: "jobs/a.yaml"} \
            if attempt else {}
        return SimpleNamespace(submission_id=ray_id, status=status, metadata=metadata, start_time=started,
                               entrypoint="python train.py")

    jobs = [job("a--attempt-10", JobStatus.RUNNING, 10, "a", 10), job("a", JobStatus.STOPPED, 1, "a", 1),
            job("a--attempt-2", JobStatus.FAILED, 2, "a", 2), job("raw", JobStatus.SUCCEEDED, started=5),
            job("b", JobStatus.SUCCEEDED, 1, "b", 3)]
    client = SimpleNamespace(list_jobs=lambda: jobs)
    assert [j.submission_id for j in submitted.attempts(client, "a")] == ["a", "a--attempt-2", "a--attempt-10"]
    assert submitted.latest(client, "a").status is JobStatus.RUNNING
    assert [j.submission_id for j in submitted.attempts(client, "raw")] == ["raw"]  # submitted with `ray job submit`
    with pytest.raises(ValueError, match="no job c on this cluster"):
        submitted.latest(client, "c")
    rows = [line.split() for line in submitted.listing(client).splitlines()[1:]]
    assert [row[:3] for row in rows] == [["a", "RUNNING", "3"], ["b", "SUCCEEDED", "1"], ["raw", "SUCCEEDED", "1"]]
    with pytest.raises(ValueError, match="job a is RUNNING; stop it first"):
        submitted.submit(client, "jobs/a.yaml", [], "a")


@pytest.mark.parametrize("job_id", ["", "a/b", "life--attempt-2"])
def test_an_id_that_cannot_name_a_job_is_refused_before_the_server_is_asked(job_id):
    with pytest.raises(ValueError, match="cannot name a job"):
        submitted.submit(None, str(REPO / "jobs/debug_dcgan.yaml"), [], job_id)  # None: any use of the client fails
