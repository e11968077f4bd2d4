"""Security defaults: the embedded default listens on loopback only, and nothing named like a secret, nor the
credentials in a URI, reaches MLflow."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from orchestrator.spec import parse
from orchestrator.track import runs, store

REPO = Path(__file__).resolve().parents[1]

LISTING = r"""
import os, sys
from pathlib import Path

from orchestrator.train.ray_init import init_ray

init_ray()  # the embedded default: what `ganorch run` starts without RAY_ADDRESS
import ray

@ray.remote
def touch():
    return os.getpid()

ray.get([touch.remote() for _ in range(2)])  # workers too
context = ray.get_runtime_context()
print("node", ray.nodes()[0]["NodeManagerAddress"], "dashboard", ray._private.worker.global_worker.node.webui_url)
temp = os.environ["RAY_TMPDIR"]
pids = {os.getpid()} | {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                        and temp.encode() in (p / "cmdline").read_bytes()}
inodes = set()
for pid in pids:
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
for table in ("tcp", "tcp6"):
    for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            print(table, fields[1])
ray.shutdown()
"""

# /proc/net addresses: 127.0.0.1; ::1 and ::ffff:127.0.0.1.
LOOPBACK = {"tcp": {"0100007F"}, "tcp6": {"00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}}


def test_the_embedded_default_listens_on_loopback_only(tmp_path):
    temp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths must fit in 107 characters
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_TMPDIR"] = temp
    listing = subprocess.run([sys.executable, "-c", LISTING], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=180)
    assert listing.returncode == 0, listing.stderr[-3000:]
    lines = listing.stdout.splitlines()
    _, node, _, dashboard = lines[0].split()
    assert node == "127.0.0.1" and dashboard.startswith("127.0.0.1:"), lines[0]
    sockets = [line.split() for line in lines[1:]]
    assert len(sockets) >= 5, lines  # GCS, raylet, workers, dashboard and job server were seen
    outside = [f"{table} {address}" for table, address in sockets if address.split(":")[0] not in LOOPBACK[table]]
    assert not outside, f"listening beyond 127.0.0.1: {outside}"

def test_secrets_and_uri_credentials_never_reach_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = parse({"name": "s", "data": {"source": "ray-data", "path": "s3://AKIAEXAMPLE:hunter2@bucket/images"}})
    c = store.client(uri)
    run_id = runs.create_run(spec, uri, c.create_experiment("s"), "s-1", params={"api_token": "hunter3"})
    params = c.get_run(run_id).data.params
    assert params["data.path"] == "s3://***@bucket/images" and params["api_token"] == "***"
    spec_yaml = Path(c.download_artifacts(run_id, "spec.yaml", str(tmp_path))).read_text()
    assert "hunter2" not in spec_yaml and "s3://***@bucket/images" in spec_yaml
    assert parse(__import__("yaml").safe_load(spec_yaml)).data.source == "ray-data"


def test_a_ray_start_cluster_on_this_machine_is_joined_as_it_is(tmp_path):
    """With `ray start` running here, ray.init() joins it: ganorch leaves Ray's multi-node switch alone then."""
    probe = "import os; from orchestrator.train.ray_init import keep_local; keep_local(); " \
            "print(os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}

    def switch() -> str:
        return subprocess.run([sys.executable, "-c", probe], env={**env, "RAY_TMPDIR": str(tmp_path)},
                              capture_output=True, text=True, timeout=60).stdout.strip()

    assert switch() == "0"
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6379")
    assert switch() == "None"
