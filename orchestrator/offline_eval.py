"""`ganorch eval`: the sample quality of any checkpoint, a file or an MLflow run's, logged as a run of its own."""

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator import checkpoint, tracking
from orchestrator.spec import JobSpec, parse_with_overrides

RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Source:
    state: dict[str, Any]      # the loaded checkpoint
    description: str           # where it came from, for people
    run_id: str | None = None  # the training run it belongs to, when given by run id


def resolve(target: str, best: bool, uri: str) -> Source:
    """A checkpoint file, a directory holding `checkpoint.pt`, or an MLflow run id (its latest checkpoint, or its
    best by FID). Raises ValueError naming what is wrong."""
    path = Path(target).expanduser()
    if path.exists():
        file = path / checkpoint.FILENAME if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"{target}: a directory without {checkpoint.FILENAME}")
        return Source(load_checkpoint(file), str(file))
    if not RUN_ID.fullmatch(target):
        raise ValueError(f"{target}: no such checkpoint file, and not an MLflow run id (32 hex digits)")
    from mlflow.exceptions import MlflowException

    client = tracking.client(uri)
    try:
        run = client.get_run(target)
    except MlflowException:
        raise ValueError(f"{target}: no MLflow run with this id in {uri}") from None
    tag = tracking.TAG_BEST_CHECKPOINT if best else tracking.TAG_CHECKPOINT
    artifact = run.data.tags.get(tag)
    if artifact is None:
        what = "a best checkpoint (it never evaluated: eval.every 0?)" if best else "a checkpoint"
        raise ValueError(f"{target}: run {run.info.run_name!r} has no {what}")
    folder, _, name = artifact.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="ganorch-eval-") as tmp:  # the folder: the checksum is beside the file
        file = Path(client.download_artifacts(target, folder, tmp)) / name
        return Source(load_checkpoint(file), f"run {run.info.run_name} ({target}): {artifact}", target)


def load_checkpoint(file: Path) -> dict[str, Any]:
    state = checkpoint.load(file)  # CheckpointError (a ValueError): corrupted, truncated, not a torch file
    missing = {"generator_ema", "spec", "step"} - set(state) if isinstance(state, dict) else {"everything"}
    if missing:
        raise ValueError(f"{file}: not a ganorch checkpoint (no {', '.join(sorted(missing))})")
    return state


def checkpoint_spec(state: dict[str, Any], overrides: list[str], source: str) -> JobSpec:
    """The spec the checkpoint was trained with, with `--set` overrides (data.path on another machine, say)."""
    return parse_with_overrides(state["spec"], overrides, source)


def generator(spec: JobSpec, state: dict[str, Any], device: torch.device) -> torch.nn.Module:
    from orchestrator.worker import build_networks

    G, _ = build_networks(spec, state.get("num_classes", 0))
    G.load_state_dict(state["generator_ema"])
    return G.to(device).eval()


@dataclass
class Evaluation:
    scores: dict[str, float]
    step: int
    run_id: str                  # the MLflow run the numbers went to
    classifier_accuracy: float
    grid_path: Path | None
    inception: str               # whether Inception features were used, and why not


def evaluate(source: Source, spec: JobSpec, uri: str, samples: int = 0, grid_path: Path | None = None) -> Evaluation:
    """Score the checkpoint's G_ema as training does (same reference images, same z), log it to a new MLflow run
    (nested under the training run when there is one) and, with `samples`, write a grid of that many samples."""
    from orchestrator.data import load_dataset, num_classes
    from orchestrator.evaluation import Evaluator, inception_weights
    from orchestrator.worker import sample

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = spec.model
    if spec.data.source == "ray-data":
        from orchestrator import ray_images

        dataset = ray_images.eval_sample(spec.data.path, num_samples=spec.eval.num_samples, image_size=m.image_size,
                                         channels=m.channels, seed=spec.seed)
        data_classes = max(len(ray_images.list_classes(spec.data.path)), 1)
    else:
        dataset = load_dataset(spec.data, spec.model)
        data_classes = num_classes(dataset)
    G = generator(spec, source.state, device)
    classes = source.state.get("num_classes", 0)
    inception, inception_line = inception_weights(spec.eval)
    evaluator = Evaluator(dataset, data_classes, classes, num_samples=spec.eval.num_samples,
                          latent_dim=m.latent_dim, image_size=m.image_size, channels=m.channels,
                          cache_dir=spec.eval.cache_dir, seed=spec.seed, device=device, inception=inception)
    scores = evaluator.evaluate(G)
    step = int(source.state["step"])

    client = tracking.client(uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(spec.experiment)
    tags = {tracking.TAG_JOB: spec.name, tracking.TAG_EVALUATED: source.description,
            tracking.TAG_CLASSIFIER: evaluator.classifier_path,
            tracking.TAG_CLASSIFIER_ACCURACY: f"{evaluator.classifier_accuracy:.4f}",
            tracking.TAG_INCEPTION: inception_line}
    if source.run_id:
        tags["mlflow.parentRunId"] = source.run_id  # shown nested under the training run
    run = client.create_run(experiment_id, run_name=f"{spec.name}-eval-step{step}-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags=tags)
    logger = tracking.RunLogger(uri, run.info.run_id)
    client.log_param(run.info.run_id, "eval.num_samples", spec.eval.num_samples)
    client.log_param(run.info.run_id, "checkpoint.step", step)
    logger.log_metrics(step, scores)
    if samples:
        from orchestrator.worker import fixed_samples

        z, labels, columns = fixed_samples(spec, classes, device, count=samples)
        images = sample(G, z, labels)
        logger.log_samples(step, images, columns)
        grid_path = grid_path or unused(Path(f"eval_step_{step:06d}.png"))
        from PIL import Image

        Image.fromarray(tracking.image_grid(images, columns)).save(grid_path)
    kept = logger.close(spec.tracking.outage_wait_s)
    if kept:
        print(f"MLflow could not take all of the evaluation: the rest is kept in {kept}; send it with ganorch sync")
    client.set_terminated(run.info.run_id, "FINISHED")
    return Evaluation(scores, step, run.info.run_id, evaluator.classifier_accuracy, grid_path if samples else None,
                      inception_line)


def unused(path: Path) -> Path:
    """`path`, or `path` with -2, -3, ... before its suffix when a file of that name is there already."""
    n = 1
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
