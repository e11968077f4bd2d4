"""The TorchTrainer of a spec, one for `ganorch run`, a submitted job and each sweep trial alike: the spec the workers
receive (local paths made absolute), scaling and backend, checkpoint retention and worker restarts, the Ray Data
stream of a `ray-data` source, and a line saying what it reserves."""

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from orchestrator.spec import JobSpec
from orchestrator.train.ray_init import DATA_CPUS, on_this_node


def absolute(path: str | None) -> str | None:
    """A URI or None as given, a local path made absolute: Ray Train workers run in directories of their own."""
    if path is None or "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def for_workers(spec: JobSpec) -> JobSpec:
    """The spec with its local paths absolute; this is the spec the run records and the workers receive."""
    return dataclasses.replace(
        spec, data=dataclasses.replace(spec.data, path=absolute(spec.data.path)),
        tracking=dataclasses.replace(spec.tracking, storage_path=absolute(spec.tracking.storage_path)),
        eval=dataclasses.replace(spec.eval, cache_dir=absolute(spec.eval.cache_dir),
                                 inception_weights=absolute(spec.eval.inception_weights)))


def scaling(spec: JobSpec) -> dict[str, Any]:
    """The TorchTrainer arguments that come from resources: its ScalingConfig and TorchConfig (DDP's imports started
    early where there is DDP: orchestrator.train.warm_start)."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig

    r = spec.resources
    per_worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
    config = TorchConfig
    if r.max_workers > 1:
        from orchestrator.train.warm_start import WarmTorchConfig
        config = WarmTorchConfig
    elastic = {"num_workers": (r.min_workers, r.max_workers), "elastic_resize_monitor_interval_s": r.resize_check_s}
    return {"scaling_config": ScalingConfig(**(elastic if r.elastic else {"num_workers": r.num_workers}),
                                            use_gpu=r.use_gpu, resources_per_worker=per_worker),
            "torch_config": config(backend="nccl" if r.use_gpu else "gloo")}


def resources_line(spec: JobSpec) -> str:
    r = spec.resources
    gpus = r.gpus_per_worker if r.use_gpu else 0
    if r.elastic:
        per = ", ".join(spec.describe_shares(n) for n in (r.min_workers, r.max_workers))
        line = (f"an elastic group of {r.min_workers} to {r.max_workers} worker(s) x ({r.cpus_per_worker:g} CPU, "
                f"{gpus:g} GPU), as many as the cluster holds; backend {'nccl' if r.use_gpu else 'gloo'}; batch "
                f"{spec.train.batch_size} (per worker: {per})")
    else:
        line = (f"{r.num_workers} worker(s) x ({r.cpus_per_worker:g} CPU, {gpus:g} GPU) = "
                f"{r.num_workers * r.cpus_per_worker:g} CPU, {r.num_workers * gpus:g} GPU; "
                f"backend {'nccl' if r.use_gpu else 'gloo'}; batch {spec.train.batch_size} "
                f"({spec.batch_share(0, r.num_workers)} per worker)")
    if spec.data.source == "ray-data":
        line += f"; Ray Data decodes on the cluster's other CPUs (at least {DATA_CPUS:g})"
    if spec.eval.background:
        e = spec.eval.resources
        line += f"; an evaluator actor of {e.cpus:g} CPU, {e.gpus:g} GPU scores G_ema while they train"
    return line


def ray_datasets(spec: JobSpec) -> tuple[dict[str, Any] | None, Any]:
    """The trainer's `datasets` for a `ray-data` source (else None), and the actor that collects the files Ray Data
    could not decode (None without a stream). Opened before a run exists, so a bad path fails first."""
    if spec.data.source != "ray-data":
        return None, None
    import ray

    from orchestrator.data import ray_data

    skipped = ray.remote(num_cpus=0)(ray_data.SkippedFiles).options(**on_this_node()).remote()
    return {"train": ray_data.build_dataset(spec, skipped)}, skipped


def torch_trainer(spec: JobSpec, train_loop_config: dict[str, Any], *, name: str, callbacks: list[Any],
                  datasets: dict[str, Any] | None, loop: Callable[[dict], Any] | None = None,
                  max_failures: int | None = None) -> Any:
    """A TorchTrainer for `spec` as Ray Train run `name`: its scaling, its checkpoints kept as
    tracking.keep_checkpoints says, its workers restarted resources.max_failures times (or `max_failures`) from the
    latest checkpoint Ray Train registered, the Ray Data stream as the `train` dataset. `loop` replaces the
    per-worker function."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from orchestrator.train.worker import train_loop_per_worker

    run_config = RunConfig(name=name, storage_path=spec.tracking.storage_path,
                           checkpoint_config=CheckpointConfig(num_to_keep=spec.tracking.keep_checkpoints),
                           failure_config=FailureConfig(max_failures=spec.resources.max_failures
                                                        if max_failures is None else max_failures),
                           callbacks=callbacks)
    return TorchTrainer(loop or train_loop_per_worker, train_loop_config=train_loop_config, **scaling(spec),
                        datasets=datasets, run_config=run_config)


START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # read by Ray Train's controller, which the driver's
                                                               # fit() gives the driver's value


@contextlib.contextmanager
def ray_train_settings(spec: JobSpec) -> Iterator[None]:
    """Around `trainer.fit()`: the settings Ray Train takes from the environment of the process that fits
    (resources.start_timeout_s), set for that fit alone. One fit at a time in a process: the CLI's one, a Tune
    trial's (each its own process)."""
    timeout = spec.resources.start_timeout_s
    before = os.environ.get(START_TIMEOUT_ENV)
    if timeout is not None:
        os.environ[START_TIMEOUT_ENV] = f"{timeout:g}"
    try:
        yield
    finally:
        if timeout is not None:
            if before is None:
                os.environ.pop(START_TIMEOUT_ENV, None)
            else:
                os.environ[START_TIMEOUT_ENV] = before
