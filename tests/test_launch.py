"""Launch helpers that need no cluster."""

from orchestrator.spec import parse
from orchestrator.train.trainer import for_workers, resources_line


def test_local_paths_are_made_absolute_for_workers_unless_a_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def spec(path):
        return parse({"name": "t", "tracking": {"storage_path": path}, "data": {"source": "ray-data", "path": path}})

    local = for_workers(spec("runs"))
    assert local.tracking.storage_path == local.data.path == str(tmp_path / "runs")
    assert spec("runs").data.path == "runs", "the spec given is left as it was"
    remote = for_workers(spec("s3://bucket/runs"))
    assert remote.tracking.storage_path == remote.data.path == "s3://bucket/runs"
    unset = for_workers(parse({"name": "t"}))
    assert unset.tracking.storage_path is None and unset.data.path is None and unset.eval.cache_dir is None
    evaluated = for_workers(parse({"name": "t", "eval": {"cache_dir": "cache", "inception_weights": "w.pth"}}))
    assert evaluated.eval.cache_dir == str(tmp_path / "cache")
    assert evaluated.eval.inception_weights == str(tmp_path / "w.pth")


def test_resources_line_counts_gpus_only_with_use_gpu():
    cpu = parse({"name": "t", "resources": {"num_workers": 4}})
    gpu = parse({"name": "t", "resources": {"num_workers": 4, "use_gpu": True, "gpus_per_worker": 0.5}})
    assert resources_line(cpu).startswith("4 worker(s) x (1 CPU, 0 GPU) = 4 CPU, 0 GPU; backend gloo")
    assert resources_line(gpu).startswith("4 worker(s) x (1 CPU, 0.5 GPU) = 4 CPU, 2 GPU; backend nccl")
    streamed = parse({"name": "t", "data": {"source": "ray-data", "path": "images"}})
    assert "Ray Data decodes on the cluster's other CPUs" in resources_line(streamed)


def test_mlflow_opens_the_tracking_store_while_ray_starts_and_its_failure_is_raised(tmp_path, monkeypatch):
    """Importing MLflow and opening an SQLite store take seconds, Ray's start too: they overlap. A store that MLflow
    cannot use (the SQLite file of another MLflow version, here) still fails the run before it exists."""
    import sqlite3
    import time

    import pytest

    from orchestrator.track import store
    from orchestrator.train import ray_init

    events = []

    def ray_starting():  # Ray takes its time, and is up only once the store was opened beside it
        deadline = time.monotonic() + 10
        while "store" not in events and time.monotonic() < deadline:
            time.sleep(0.01)
        events.append("ray up")

    client = store.client
    monkeypatch.setattr(ray_init, "init_ray", ray_starting)
    monkeypatch.setattr(store, "client", lambda uri: events.append("store") or client(uri))
    ray_init.init_ray_and_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert events[0] == "store" and "ray up" in events, events

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES ('0123456789ab')")
    events.clear()
    with pytest.raises(ValueError, match=f"MLFLOW_TRACKING_URI: cannot open the MLflow tracking store sqlite:///{other}"
                                         ": Can't locate revision"):
        ray_init.init_ray_and_store(f"sqlite:///{other}")
    assert "ray up" in events, "a library caller's Ray start is not cut short"


def test_the_checks_run_while_ray_starts_and_their_mistake_is_reported_first(monkeypatch, request):
    """`ganorch run` checks data and networks (torch's import, seconds) on a thread while Ray starts on the main
    thread: each waits here for the other to have begun, so run one after the other they would time out. A mistake
    the checks find is raised rather than Ray's error, at once for `ganorch run` (it cuts Ray's start short), after
    Ray's start for a library's caller or off the main thread; Ray's own failure names what could not be started."""
    import signal
    import threading
    import time

    import pytest

    from orchestrator.train import ray_init

    checking, ray_starting, threads = threading.Event(), threading.Event(), {}

    def init_ray():
        threads["ray"] = threading.current_thread()
        ray_starting.set()
        assert checking.wait(10), "the checks did not start beside Ray"

    def checks():
        threads["checks"] = threading.current_thread()
        checking.set()
        assert ray_starting.wait(10), "Ray did not start beside the checks"
        return "checked"

    monkeypatch.setattr(ray_init, "init_ray", init_ray)
    assert ray_init.start_ray_beside(checks) == "checked"
    assert threads["ray"] is threading.main_thread() and threads["checks"] is not threading.main_thread()

    def unreachable():
        raise ConnectionError("could not connect to 10.0.0.1:6379\nretrying for 60 s")

    def mistake():
        raise ValueError("model.generator: cannot import module 'nowhere'")

    def slow_start(seconds=60):  # Ray's start polls its processes, in Python, until they are up
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.01)
        events.append("ray up")

    events = []
    monkeypatch.setattr(ray_init, "init_ray", slow_start)
    # Python's own Ctrl-C handler, as in `ganorch run`'s process (a test before may have set another one)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    began = time.monotonic()
    with pytest.raises(ValueError, match="model.generator: cannot import module 'nowhere'"):
        ray_init.start_ray_beside(mistake, cut_short=True)
    assert time.monotonic() - began < 10 and not events, "the mistake waited for Ray's start"
    time.sleep(0.5)  # no interrupt left to arrive (pytest would stop on it)
    monkeypatch.setattr(ray_init, "init_ray", lambda: slow_start(1))
    with pytest.raises(ValueError, match="model.generator: cannot import module 'nowhere'"):
        ray_init.start_ray_beside(mistake)  # a library's caller: Ray's start is not interrupted
    assert events == ["ray up"]
    called = []  # another Ctrl-C handler (Ray Train's fit leaves one that aborts its run) is not called
    signal.signal(signal.SIGINT, lambda *_: called.append(True))
    with pytest.raises(ValueError, match="model.generator: cannot import module 'nowhere'"):
        ray_init.start_ray_beside(mistake, cut_short=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    assert events == ["ray up"] * 2 and not called
    raised = []  # on another thread, the interrupt would reach the main thread: none is sent
    caller = threading.Thread(target=lambda: raised.append(pytest.raises(ValueError, ray_init.start_ray_beside,
                                                                         mistake, cut_short=True)))
    caller.start()
    caller.join(30)
    time.sleep(0.5)
    assert events == ["ray up"] * 3 and raised
    monkeypatch.setattr(ray_init, "init_ray", unreachable)
    with pytest.raises(ValueError, match="model.generator: cannot import module 'nowhere'"):
        ray_init.start_ray_beside(mistake)
    ray_up = []
    monkeypatch.setattr(ray_init, "init_ray", lambda: ray_up.append(True))
    with pytest.raises(ValueError, match="model.generator: cannot import module 'nowhere'"):
        ray_init.start_ray_beside(lambda: time.sleep(0.2) or mistake())  # found after Ray is up: no interrupt
    assert ray_up
    monkeypatch.setattr(ray_init, "init_ray", unreachable)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    with pytest.raises(ray_init.RayStartError, match="^the Ray cluster at 10.0.0.1:6379 could not be started or "
                                                     "joined: could not connect to 10.0.0.1:6379$"):
        ray_init.start_ray_beside(lambda: "checked")


def test_workers_of_a_ddp_run_import_what_ddp_needs_before_their_train_function():
    """Where there is DDP (2 workers and more), Ray Train's torch backend starts DDP's import of torch._dynamo on
    every worker as it sets up the process group; the train function waits for it (test_train_e2e sees that Ray
    Train's backend started it on its workers)."""
    import subprocess
    import sys

    from ray.train.torch import TorchConfig

    from orchestrator.train.trainer import scaling
    from orchestrator.train.warm_start import WarmTorchConfig, _WarmTorchBackend

    two = scaling(parse({"name": "t", "resources": {"num_workers": 2}}))["torch_config"]
    one = scaling(parse({"name": "t", "resources": {"num_workers": 1}}))["torch_config"]
    assert isinstance(two, WarmTorchConfig) and two.backend_cls is _WarmTorchBackend and two.backend == "gloo"
    assert type(one) is TorchConfig  # no DDP: nothing to import early
    code = ("import sys; from orchestrator.train import warm_start; "
            "assert 'torch._dynamo' not in sys.modules and not warm_start.wait(); warm_start.start_imports(); "
            "print(warm_start.wait() and 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]
