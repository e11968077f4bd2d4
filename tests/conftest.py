"""One Ray instance per test session; a fresh MLflow store and working directory per test that needs one."""

import atexit
import itertools
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# torch.hub's cache (Inception weights) starts empty in every test session, whatever this machine has cached;
# set before Ray starts, so its workers see it too.
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="ganorch-test-torch-home-")
# Ray Train's controller looks at its workers every 2 s by default, and a report waits for that look: tests, whose
# runs report every few steps, let it look every 0.5 s.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# What runs keep while MLflow cannot be reached goes here, not to this machine's ~/.ganorch.
os.environ["GANORCH_HOME"] = tempfile.mkdtemp(prefix="ganorch-home-")
atexit.register(shutil.rmtree, os.environ["GANORCH_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # Workers import tests/user_networks.py by name, as a user's workers import their own networks.
    pythonpath = os.pathsep.join(p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)
    # With the dashboard: Ray Train's placement-group cleaner asks its state API whether a trial's controller
    # died (a Tune trial stopped by ASHA), and without it leaks the trial's workers' CPUs.
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=True, dashboard_port=free_port(),
             logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "GANORCH_HOME": os.environ["GANORCH_HOME"]}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mnist_classifier(tmp_path_factory):
    """The mnist5k domain classifier, trained once for the session; returns it and the cache dir holding it, for
    tests and runs to load (eval.cache_dir) instead of training their own."""
    from orchestrator.data.sources import load_dataset
    from orchestrator.evaluate.domain_classifier import domain_classifier
    from orchestrator.spec import DataSpec, ModelSpec

    cache = tmp_path_factory.mktemp("classifiers")
    return domain_classifier(load_dataset(DataSpec("mnist5k"), ModelSpec()), 10, image_size=28, channels=1,
                             cache_dir=cache), cache


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A real SQLite MLflow store in a temporary working directory; returns its tracking URI."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def process_group():
    """A one-process gloo group, so DDP modules can be built and stepped in the test process."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="session")
def inception_weights_file(tmp_path_factory) -> Path:
    """A file shaped like FID's Inception weights, with random values: the real ones are a download."""
    from unittest import mock

    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    with mock.patch.object(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {}), \
            mock.patch.object(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        net = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def wait_for(check, timeout: float, what: str, interval: float = 0.5):
    """Poll `check` until it returns something truthy (returned), or fail naming `what` after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def stop_process_group(process, grace: float = 15.0) -> None:
    """SIGTERM a process started in a session of its own and everything it started; SIGKILL what is left after
    `grace` seconds."""
    import signal
    import time

    def running() -> bool:  # orphans that exited stay zombies here (PID 1 does not reap them): they do not count
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state, _, group = stat.read_text().rpartition(")")[2].split()[:3]
            except OSError:
                continue
            if int(group) == process.pid and state != "Z":
                return True
        return False

    deadline = time.monotonic() + grace
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        while time.monotonic() < deadline and running():
            process.poll()  # reaps the leader
            time.sleep(0.2)
        if not running():
            break
        deadline = time.monotonic() + 10
    process.poll()


@pytest.fixture(scope="module")
def ray_cluster():
    """A real two-node Ray cluster on this machine, with token authentication: `ray start --head` (1 CPU; its job
    server and dashboard on 127.0.0.1) and a second node that joins with `ray start --address` (1 CPU). Its
    processes get no MLFLOW_* variables: what a job needs of MLflow must come with the job."""
    import secrets
    import shutil
    import subprocess
    from types import SimpleNamespace

    import requests

    token = secrets.token_hex(32)
    # Short: Ray's socket paths under it must fit in 107 characters.
    temp = Path(tempfile.mkdtemp(prefix="gr-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"])
    gcs_port, dashboard_port = free_port(), free_port()

    def node_args() -> list[str]:  # ports left to Ray by default would clash with a second node or ray.init
        return ["--block", "--num-cpus", "1", "--disable-usage-stats",
                "--dashboard-agent-listen-port", str(free_port())]

    head = subprocess.Popen(["ray", "start", "--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dashboard_port), "--ray-client-server-port", str(free_port()),
                             "--temp-dir", str(temp), *node_args()], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(temp / "head.err", "w"))
    processes = [head]
    address = f"http://127.0.0.1:{dashboard_port}"
    headers = {"Authorization": f"Bearer {token}"}

    def alive_nodes():
        try:
            reply = requests.get(f"{address}/nodes?view=summary", headers=headers, timeout=5)
            return [n for n in reply.json()["data"]["summary"] if n["raylet"]["state"] == "ALIVE"]
        except (requests.RequestException, ValueError, KeyError):
            return []

    def gcs_listening():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", gcs_port)) == 0

    try:
        wait_for(gcs_listening, 90, "the Ray head's GCS")
        started = itertools.count(2)

        def start_node() -> set[str]:
            """Start the second node (again); the IDs of the cluster's nodes once it has joined."""
            # A temporary directory of its own, as a node on another machine has: nodes that share one unpack a
            # job's working directory over each other.
            processes.append(subprocess.Popen(["ray", "start", "--address", f"127.0.0.1:{gcs_port}", *node_args(),
                                               "--temp-dir", str(temp / f"node{next(started)}")], env=env,
                                              start_new_session=True, stdout=subprocess.DEVNULL,
                                              stderr=open(temp / "node.err", "a")))
            nodes = wait_for(lambda: len(alive_nodes()) == 2 and alive_nodes(), 90, "the second Ray node to join")
            return {n["raylet"]["nodeId"] for n in nodes}

        def stop_node() -> None:
            """Stop the second node's Ray, as a cloud takes a spot instance back: its processes end, the head stays."""
            stop_process_group(processes.pop(), grace=3)
            wait_for(lambda: len(alive_nodes()) == 1, 90, "the head to see the second node gone")

        yield SimpleNamespace(address=address, token=token, temp=temp, node_ids=start_node(), start_node=start_node,
                              stop_node=stop_node)
    finally:
        for process in reversed(processes):
            stop_process_group(process, grace=3)  # a head's graceful shutdown takes 15 s, for nothing kept
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server_process(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with MLflow's basic-auth app, started and not waited for: ask for
    `mlflow_server`, after fixtures that take a while, to have it ready."""
    import secrets
    import subprocess
    from types import SimpleNamespace

    root = tmp_path_factory.mktemp("mlflow-server")
    password = f"pw-{secrets.token_hex(12)}"
    (root / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n")  # else every request hashes the password (PBKDF2), as cluster.yaml's does
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(root / "auth.ini"), MLFLOW_AUTH_ADMIN_PASSWORD=password,
               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
    port = free_port()
    server = subprocess.Popen(["mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1", "--port",
                               str(port), "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                              env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(root / "server.err", "w"))
    try:
        yield SimpleNamespace(uri=f"http://127.0.0.1:{port}", username="admin", password=password, root=root)
    finally:
        stop_process_group(server, grace=3)


@pytest.fixture(scope="module")
def mlflow_server(mlflow_server_process):
    """`mlflow_server_process`, answering: its URI, admin user and password."""
    import requests

    def healthy():
        try:
            return requests.get(f"{mlflow_server_process.uri}/health", timeout=2).ok
        except requests.RequestException:
            return False

    wait_for(healthy, 90, "mlflow server")
    return mlflow_server_process
