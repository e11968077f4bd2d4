"""What `ganorch run JOB --resume auto|PATH|RUN_ID` continues from, found and checked before a run starts.

- PATH: a checkpoint file, or a directory holding `checkpoint.pt` (a Ray Train checkpoint, a downloaded MLflow
  artifact): a new MLflow run continues from it.
- RUN_ID: an MLflow run's latest checkpoint; the run itself continues (metrics go on from the checkpoint's step).
- auto: the latest run of this job (same experiment, same job name) that has a checkpoint, as with RUN_ID; none
  such starts the job afresh.
"""

from dataclasses import dataclass
from typing import Any

from orchestrator.spec import JobSpec
from orchestrator.track import store
from orchestrator.track.tags import TAG_CHECKPOINT, TAG_EVALUATED, TAG_JOB
from orchestrator.train import locate

# Spec sections a checkpoint's networks are built from: they must match the spec that resumes it.
MODEL_KEYS = ("family", "image_size", "channels", "latent_dim", "g_width", "d_width", "g_norm", "d_norm",
              "conditional", "generator", "discriminator")


@dataclass
class Resumption:
    state: dict[str, Any]     # the checkpoint, loaded and verified
    origin: str               # where it came from, for people and the run's tags
    run_id: str | None        # the MLflow run that continues (None: a new run)


def find(flag: str, spec: JobSpec, uri: str) -> Resumption | None:
    """The checkpoint `flag` names, checked against `spec`; None for `auto` without an earlier run. ValueError,
    naming --resume, for anything that cannot be resumed."""
    if flag == "auto":
        run = latest_run(spec, uri)
        if run is None:
            return None
        flag = run.info.run_id
    try:
        source = locate.resolve(flag, best=False, uri=uri)
    except ValueError as err:
        raise ValueError(f"--resume {err}") from None
    check_compatible(source.state, spec)
    return Resumption(source.state, source.description, source.run_id)


def latest_run(spec: JobSpec, uri: str) -> Any:
    """The job's most recent training run with a checkpoint (not an eval run, not a sweep's trial)."""
    c = store.client(uri)
    experiment = c.get_experiment_by_name(spec.experiment)
    if experiment is None:
        return None
    runs = c.search_runs([experiment.experiment_id], f"tags.`{TAG_JOB}` = '{spec.name}'",
                         order_by=["attributes.start_time DESC"], max_results=100)
    return next((r for r in runs if TAG_CHECKPOINT in r.data.tags
                 and TAG_EVALUATED not in r.data.tags and "mlflow.parentRunId" not in r.data.tags), None)


def check_compatible(state: dict[str, Any], spec: JobSpec) -> None:
    """The spec must build the checkpoint's networks, train on the labelled images it trained on
    (data.labels_per_class), and have steps left to train."""
    model = state.get("spec", {}).get("model", {})
    for key in MODEL_KEYS:
        if key in model and model[key] != getattr(spec.model, key):
            raise ValueError(f"--resume: the checkpoint's networks have model.{key} {model[key]!r}, the spec has "
                             f"{getattr(spec.model, key)!r}; resume with the spec it was trained with")
    trained = state.get("spec", {})
    kept = trained.get("data", {}).get("labels_per_class")
    if kept != spec.data.labels_per_class:
        raise ValueError(f"--resume: the checkpoint's G trained on data.labels_per_class {kept!r}, the spec has "
                         f"{spec.data.labels_per_class!r}; resume with the spec it was trained with")
    if kept is not None and trained.get("seed") != spec.seed:
        raise ValueError(f"--resume: the checkpoint's G trained on the {kept} images per class of seed "
                         f"{trained.get('seed')!r}, the spec has seed {spec.seed!r}, which keeps other images; "
                         "resume with the spec it was trained with")
    if state["step"] >= spec.train.steps:
        raise ValueError(f"--resume: the checkpoint is at step {state['step']} and train.steps is "
                         f"{spec.train.steps}: nothing left to train; raise train.steps (--set train.steps=N)")
