"""One Ray instance per test session; a fresh MLflow store and working directory per test that needs one."""

import os
import socket
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# torch.hub's cache (Inception weights) starts empty in every test session, whatever this machine has cached;
# set before Ray starts, so its workers see it too.
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="ganorch-test-torch-home-")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # Workers import tests/user_networks.py by name, as a user's workers import their own networks.
    pythonpath = os.pathsep.join(p for p in (str(REPO / "tests"), os.environ.get("PYTHONPATH")) if p)
    # With the dashboard: Ray Train's placement-group cleaner asks its state API whether a trial's controller
    # died (a Tune trial stopped by ASHA), and without it leaks the trial's workers' CPUs.
    ray.init(num_cpus=2, log_to_driver=False, include_dashboard=True, dashboard_port=free_port(),
             logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mnist_classifier(tmp_path_factory):
    """The mnist5k domain classifier, trained once for the session; returns it and the cache dir holding it, for
    tests and runs to load (eval.cache_dir) instead of training their own."""
    from orchestrator.data import load_dataset
    from orchestrator.evaluation import domain_classifier
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
