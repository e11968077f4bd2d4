"""Starting or joining Ray: the cluster at RAY_ADDRESS, or a local instance that listens on loopback only; and the
checks a cluster must pass before a run starts on it."""

import _thread
import logging
import os
import signal
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

from orchestrator.spec import JobSpec
from orchestrator.track import store
from orchestrator.track.redact import redact
from orchestrator.track.store import is_local_store

# Ray's switch for single-machine instances (its default on macOS and Windows): with it off, Ray gives the node the
# loopback address, and its servers (GCS, raylet, workers, dashboard, job server) listen on 127.0.0.1 only.
MULTI_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
T = TypeVar("T")


def on_this_node() -> dict:
    """Ray actor options that keep a driver's helper actor (its progress board, its queues) on the driver's node, as
    Ray Train keeps its controller there: on another node it would be lost with that node (a spot node taken
    back), and the run with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


def keep_local() -> None:
    """Without RAY_ADDRESS the Ray instance ganorch starts is this machine's alone: nothing of it listens beyond
    127.0.0.1. Ray reads the switch when it is imported, so this comes first; Ray's processes inherit it. Not when
    a `ray start` cluster runs here, which ray.init() joins as it is."""
    temp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"  # where Ray looks, on Linux and macOS
    running = Path(temp, "ray", "ray_current_cluster").exists()
    if not os.environ.get("RAY_ADDRESS") and "ray" not in sys.modules and not running:
        os.environ.setdefault(MULTI_NODE, "0")


# Raylet warnings that Ray's driver prints whatever log_to_driver says, and that are Ray's business: a sweep on a
# small machine starts many worker processes (trial drivers, Train controllers and workers, queues). The raylet
# writes them in its log (raylet.out) all the same.
QUIET_RAYLET_WARNINGS = ("worker processes have been started",
                         "A worker died or was killed while executing a task")  # ganorch's last line says so


def quiet_driver_output() -> None:
    """Keep out of the terminal the raylet warnings of QUIET_RAYLET_WARNINGS, and (RAY_AIR_NEW_OUTPUT=0, unless set
    otherwise) Ray Tune's banner and TensorBoard hint, which its newer output engine prints at any verbosity."""
    from ray._private import worker

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    printer = getattr(worker, "print_to_stdstream", None)  # Ray's private API: without it, Ray's lines stay
    if printer is None or getattr(printer, "quiet", False):
        return

    def print_unless_quiet(data: dict, ignore_prefix: bool) -> None:
        lines = [line for line in data["lines"] if not any(quiet in line for quiet in QUIET_RAYLET_WARNINGS)]
        if lines:
            printer({**data, "lines": lines}, ignore_prefix)

    print_unless_quiet.quiet = True
    worker.print_to_stdstream = print_unless_quiet  # the driver's thread for raylet messages looks it up per message


def init_ray() -> None:
    """Join the cluster at RAY_ADDRESS, or start a local instance (on loopback); keep Ray's worker logs and its
    driver's noise out of the terminal."""
    keep_local()
    import ray

    quiet_driver_output()
    if ray.is_initialized():
        return
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
        # A submitted job's driver: its runtime environment (working directory, ganorch's code) is the workers'
        # already. Another one here would make Ray unpack the working directory again, under this process's feet.
        ray.init(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
        return
    # Workers run in directories of their own: let them import what the driver imports from its
    # working directory (a model.generator in the user's project, say).
    pythonpath = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    ray.init(log_to_driver=False, logging_level=logging.ERROR, configure_logging=True,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})


class RayStartError(RuntimeError):
    """Ray could not start here, or join the cluster at RAY_ADDRESS."""


def start_ray_beside(work: Callable[[], T], cut_short: bool = False) -> T:
    """init_ray() while `work` runs on a thread; what `work` returned. Ray's start is seconds of waiting on its
    processes, and a driver importing torch and checking data and networks keeps one core busy: together they take
    about the longer of the two. Ray starts on this thread: on Linux its processes are killed when the thread that
    started them ends, and it sets its SIGTERM handler on the main thread only. Raises the mistake `work` found (its
    ValueError) before Ray's failure, which is RayStartError (a ValueError of Ray's stays one).

    With `cut_short` (for a process that exits on the mistake: `ganorch run`), a mistake interrupts Ray's start as
    Ctrl-C would and is raised at once; the half-started local instance is not shut down, its processes end with
    this one. Where SIGINT has another handler than Python's own (or none: ignored, as for `cmd &` in a script), or
    inside a blocking call of Ray's, the mistake waits for Ray's start instead."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="ganorch-beside-ray")
    done = pool.submit(work)
    lock = threading.Lock()
    starting = False  # while Ray starts on the main thread, a mistake may interrupt it

    def interrupt(future: Future) -> None:
        with lock:
            if starting and future.exception() is not None:
                _thread.interrupt_main()

    try:
        try:
            with lock:
                starting = (cut_short and threading.current_thread() is threading.main_thread()
                            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
            done.add_done_callback(interrupt)
            init_ray()
        finally:
            # An interrupt sent before this lock is taken arrives by the time it is let go (CPython looks for
            # signals after each call), so inside the outer `try`.
            with lock:
                starting = False
        return done.result()
    except KeyboardInterrupt:
        if done.done() and done.exception() is not None:  # the interrupt came from the mistake
            raise done.exception() from None
        raise
    except Exception as err:
        mistake = done.exception()  # waits for `work`: its mistake comes before Ray's error
        if mistake is not None:
            raise mistake from None
        if isinstance(err, ValueError):
            raise
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RayStartError(f"{ray_target()} could not be started or joined: {redact(first_line)[:300]}") from err
    finally:
        pool.shutdown(wait=False)  # at Ctrl-C, `work` is left to end by itself (the interpreter waits for it at exit)


def open_store(uri: str) -> None:
    """Import MLflow and open the tracking store at `uri` as a run's first write will (seconds of CPU); an SQLite
    store that MLflow cannot use raises ValueError naming the URI."""
    store.check_reachable(uri)
    store.client(uri)


def init_ray_and_store(uri: str) -> None:
    """init_ray() while a thread opens the tracking store at `uri`, before any MLflow run exists. Once `ganorch run`
    has started Ray and opened the store beside its checks, both are at hand and this takes no time."""
    start_ray_beside(lambda: open_store(uri))


def ray_target() -> str:
    address = os.environ.get("RAY_ADDRESS")
    return f"the Ray cluster at {address}" if address else "a local Ray instance"


def check_tracking_store(uri: str) -> None:
    """A local MLflow store (SQLite, files) is only shared by workers on this machine: refuse a cluster with
    nodes on other hosts, where rank 0 would write to a store of its own."""
    import ray

    if not is_local_store(uri):
        return
    here = ray.util.get_node_ip_address()
    hosts = {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
    if hosts - {here}:
        raise ValueError(f"MLFLOW_TRACKING_URI: the run would be tracked in {redact(uri)}, a store on this "
                         f"machine, but {ray_target()} has nodes on other hosts ({', '.join(sorted(hosts - {here}))})"
                         "; set MLFLOW_TRACKING_URI to an MLflow server they all reach (cluster.yaml runs one)")
# CPUs Ray Data needs beside the training workers to read and decode a `ray-data` source.
DATA_CPUS = 1.0


def spare_needs(spec: JobSpec) -> dict[str, tuple[float, str]]:
    """What a run needs beside its workers' reservations, by Ray resource: amount, and the spec keys that ask."""
    cpus, gpus, asked = 0.0, 0.0, []
    if spec.data.source == "ray-data":
        cpus += DATA_CPUS
        asked.append(f"data.source 'ray-data' decodes images in Ray Data tasks, which need at least {DATA_CPUS:g}")
    if spec.eval.background:
        cpus += spec.eval.resources.cpus
        gpus += spec.eval.resources.gpus
        asked.append(f"eval.background's evaluator reserves eval.resources.cpus {spec.eval.resources.cpus:g}")
    needs = {"CPU": (cpus, "; ".join(asked))} if cpus else {}
    if gpus:
        needs["GPU"] = (gpus, f"eval.background's evaluator reserves eval.resources.gpus {gpus:g}")
    return needs


def check_spare_resources(spec: JobSpec) -> None:
    """Ray Data's tasks and a background evaluator may only use what the training workers have not reserved: with
    too little left they would wait forever. Raises on a cluster without enough; warns on a remote one, whose
    autoscaler may add nodes."""
    needs = spare_needs(spec)
    if not needs:
        return
    import ray

    r = spec.resources
    total = ray.cluster_resources()
    # An elastic group's size is chosen from the cluster's total, not from what is left: leave room beside its largest.
    n = r.max_workers
    reserved = {"CPU": n * r.cpus_per_worker, "GPU": n * r.gpus_per_worker if r.use_gpu else 0}
    for resource, (needed, asked) in needs.items():
        if total.get(resource, 0) - reserved[resource] >= needed - 1e-9:
            continue
        per_worker = "cpus_per_worker" if resource == "CPU" else "gpus_per_worker"
        key = f"eval.resources.{resource.lower()}s" if spec.eval.background else f"resources.{per_worker}"
        message = (f"{key}: {asked} {resource} besides the training workers'; {ray_target()} has "
                   f"{total.get(resource, 0):g} {resource}s and the workers reserve {reserved[resource]:g} "
                   f"(resources.num_workers{' max' if r.elastic else ''} x resources.{per_worker}): lower one of them "
                   f"or add {resource}s")
        if not os.environ.get("RAY_ADDRESS"):
            raise ValueError(message)
        print(f"ganorch: warning: {message}; going on in case the cluster scales up", file=sys.stderr)
