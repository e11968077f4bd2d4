"""What a TorchTrainer takes from a spec: the spec the workers receive (local paths made absolute), the scaling and
backend, and a line saying what that reserves."""

import dataclasses
from pathlib import Path
from typing import Any

from orchestrator.spec import JobSpec
from orchestrator.train.ray_init import DATA_CPUS


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
    """The TorchTrainer arguments that come from resources: its ScalingConfig and TorchConfig."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig

    r = spec.resources
    per_worker = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.use_gpu else {})}
    return {"scaling_config": ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                            resources_per_worker=per_worker),
            "torch_config": TorchConfig(backend="nccl" if r.use_gpu else "gloo")}


def resources_line(spec: JobSpec) -> str:
    r = spec.resources
    gpus = r.gpus_per_worker if r.use_gpu else 0
    line = (f"{r.num_workers} worker(s) x ({r.cpus_per_worker:g} CPU, {gpus:g} GPU) = "
            f"{r.num_workers * r.cpus_per_worker:g} CPU, {r.num_workers * gpus:g} GPU; "
            f"backend {'nccl' if r.use_gpu else 'gloo'}; batch {spec.train.batch_size} "
            f"({spec.batch_per_worker} per worker)")
    if spec.data.source == "ray-data":
        line += f"; Ray Data decodes on the cluster's other CPUs (at least {DATA_CPUS:g})"
    return line
