"""`ganorch eval`: the sample quality of any checkpoint, a file or an MLflow run's, logged as a run of its own."""

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator.data import ray_data
from orchestrator.data.sources import load_dataset, num_classes
from orchestrator.evaluate.evaluator import Evaluator
from orchestrator.evaluate.inception import inception_weights
from orchestrator.spec import JobSpec, parse_with_overrides
from orchestrator.spec.schema import flatten
from orchestrator.track import store
from orchestrator.track.redact import MASK
from orchestrator.track.run_logger import RunLogger, image_grid
from orchestrator.track.runs import experiment_for
from orchestrator.track.tags import (
    TAG_CLASSIFIER,
    TAG_CLASSIFIER_ACCURACY,
    TAG_COLLAPSE_YARDSTICK,
    TAG_EVALUATED,
    TAG_INCEPTION,
    TAG_JOB,
)
from orchestrator.train.locate import Source
from orchestrator.train.networks import build_networks, fixed_samples, sample


def checkpoint_spec(state: dict[str, Any], overrides: list[str], source: str) -> JobSpec:
    """The spec the checkpoint was trained with, with `--set` overrides (data.path on another machine, say).
    A value the checkpoint keeps masked (it held a credential) and the evaluation needs must be given again."""
    spec = parse_with_overrides(state["spec"], overrides, source)
    for key, value in flatten(spec.to_dict()).items():
        if key.startswith(("data.", "eval.")) and isinstance(value, str) and MASK in value:
            raise ValueError(f"{key}: the checkpoint keeps it masked ({value}) since it held a secret; give it "
                             f"with --set {key}=...")
    return spec


def generator(spec: JobSpec, state: dict[str, Any], device: torch.device) -> torch.nn.Module:
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
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = spec.model
    if spec.data.source == "ray-data":
        dataset = ray_data.eval_sample(spec.data.path, num_samples=spec.eval.num_samples, image_size=m.image_size,
                                         channels=m.channels, seed=spec.seed)
        data_classes = max(len(ray_data.list_classes(spec.data.path)), 1)
    else:
        dataset = load_dataset(spec.data, spec.model)
        data_classes = num_classes(dataset)
    G = generator(spec, source.state, device)
    classes = source.state.get("num_classes", 0)
    inception, inception_line = inception_weights(spec.eval)
    evaluator = Evaluator(dataset, data_classes, classes, num_samples=spec.eval.num_samples,
                          latent_dim=m.latent_dim, image_size=m.image_size, channels=m.channels,
                          cache_dir=spec.eval.cache_dir, seed=spec.seed, device=device, inception=inception,
                          tstr_samples=spec.eval.tstr_samples if spec.eval.tstr else 0)
    scores = evaluator.evaluate(G)
    step = int(source.state["step"])

    client = store.client(uri)
    experiment_id = experiment_for(client, spec.experiment)
    tags = {TAG_JOB: spec.name, TAG_EVALUATED: source.description, TAG_CLASSIFIER: evaluator.classifier_path,
            TAG_CLASSIFIER_ACCURACY: f"{evaluator.classifier_accuracy:.4f}", TAG_INCEPTION: inception_line,
            TAG_COLLAPSE_YARDSTICK: evaluator.yardstick_line}
    if source.run_id:
        tags["mlflow.parentRunId"] = source.run_id  # shown nested under the training run
    run = client.create_run(experiment_id, run_name=f"{spec.name}-eval-step{step}-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags=tags)
    logger = RunLogger(uri, run.info.run_id)
    client.log_param(run.info.run_id, "eval.num_samples", spec.eval.num_samples)
    client.log_param(run.info.run_id, "checkpoint.step", step)
    logger.log_metrics(step, scores)
    if samples:
        z, labels, columns = fixed_samples(spec, classes, device, count=samples)
        images = sample(G, z, labels)
        logger.log_samples(step, images, columns)
        grid_path = grid_path or unused(Path(f"eval_step_{step:06d}.png"))
        from PIL import Image

        Image.fromarray(image_grid(images, columns)).save(grid_path)
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
