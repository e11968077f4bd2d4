"""What Ray Train runs on each worker: the run's config, handed over by the driver, turned into a WorkerContext, and
the loop. The checkpoint to continue from is Ray Train's own latest when it has one, else the one handed over."""

import socket
from typing import Any

import torch

from orchestrator.distributed import collectives
from orchestrator.spec import parse
from orchestrator.track.store import adopt
from orchestrator.train import resume, warm_start
from orchestrator.train.failures import remember_traceback
from orchestrator.train.loop import Restart, WorkerContext, train


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    import ray
    import ray.train
    import ray.train.torch

    imported_early = warm_start.wait()
    adopt(config.get("mlflow_env"))  # workers on other nodes do not inherit the driver's environment
    spec = parse(config["spec"])
    shard = ray.train.get_dataset_shard("train") if spec.data.source == "ray-data" else None
    # The run's own latest checkpoint: Ray Train passes it when it restarts the workers after a failure, or when a
    # run of the same name (a resubmitted job) starts again. Else one handed over: a Tune restart's (a
    # ray.train.Checkpoint), or the state `ganorch run --resume` loaded.
    restored = ray.train.get_checkpoint() or config.get("resume_from")
    state, resumed_from, passed_over = config.get("resume_state"), config.get("resume_origin"), []
    if restored is not None:  # local or in remote storage; a corrupted one gives way to the one before it
        state, resumed_from, passed_over = resume.load_latest_intact(restored)
    device = ray.train.torch.get_device()
    board, restart = config.get("progress"), None
    if board is not None and ray.train.get_context().get_world_rank() == 0:
        starts, failure, before = ray.get(board.started.remote(collectives.world_size()))
        if starts > 1:
            restart = Restart(failure, before, collectives.world_size())
    context = WorkerContext(device=device, tracking_uri=config["tracking_uri"], run_id=config["run_id"],
                            progress=board, data_shard=shard, resume=state, resumed_from=resumed_from,
                            passed_over=passed_over,
                            placement=collectives.gather_objects(placement(device)),
                            restart=restart, verdicts=config.get("verdicts"),
                            started_at=config.get("started_at"),
                            node_leader=ray.train.get_context().get_local_rank() == 0)
    try:
        return {**train(spec, context, report=ray.train.report), "ddp_imports_early": imported_early}
    except Exception as err:
        remember_traceback(err)
        raise


def placement(device: torch.device) -> str:
    """Where this worker runs: its Ray node, host and device."""
    import ray

    return f"node {ray.get_runtime_context().get_node_id()[:12]} ({socket.gethostname()}, {device})"
