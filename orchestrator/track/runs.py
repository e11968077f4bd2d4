"""An MLflow run's life on the driver: created with the resolved spec as params and `spec.yaml`, reopened when a run
continues (a restart, a resubmitted job, `--resume`), ended with its outcome."""

import contextlib
import getpass
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.spec import JobSpec
from orchestrator.spec.schema import flatten
from orchestrator.track.outbox import Outbox, own_http_settings
from orchestrator.track.redact import redact_value, spec_text
from orchestrator.track.store import client, record_restart
from orchestrator.track.store import ui_hint as store_ui_hint
from orchestrator.track.tags import (
    MODEL_TRAINING,
    TAG_DATA_SKIPPED,
    TAG_DESCRIPTION,
    TAG_EXPERIMENT_KIND,
    TAG_JOB,
    TAG_TRAIN_RUN,
)


def start_run(spec: JobSpec, uri: str) -> tuple[str, str]:
    """Create the job's run (experiment made if missing) with the resolved spec as params and as `spec.yaml`.
    Returns the run's id and name."""
    c = client(uri)
    experiment_id = experiment_for(c, spec.experiment)
    run_name = default_run_name(spec)
    return create_run(spec, uri, experiment_id, run_name), run_name


def experiment_for(c: Any, name: str) -> str:
    """The id of experiment `name`, made if missing. MLflow's UI shows it as model training (its runs, charts and
    models), not GenAI (traces), unless someone chose otherwise."""
    experiment = c.get_experiment_by_name(name)
    if experiment is None:
        return c.create_experiment(name, tags={TAG_EXPERIMENT_KIND: MODEL_TRAINING})
    if TAG_EXPERIMENT_KIND not in experiment.tags:
        c.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND, MODEL_TRAINING)
    return experiment.experiment_id


def default_run_name(spec: JobSpec) -> str:
    """The job's name and the time: names both the MLflow run and the Ray Train run."""
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def create_run(spec: JobSpec, uri: str, experiment_id: str, run_name: str, tags: dict[str, str] | None = None,
               params: dict[str, Any] | None = None) -> str:
    """A run holding the spec's keys (and `params`) as params and the spec as `spec.yaml`; returns its id.
    A tag `mlflow.parentRunId` nests it under that run."""
    from mlflow.entities import Param

    c = client(uri)
    who = {"mlflow.source.type": "JOB", "mlflow.source.name": f"ganorch job {spec.name}"}  # the page's Source
    with contextlib.suppress(Exception):  # and its Created by, where this process has a user name
        who["mlflow.user"] = getpass.getuser()
    run = c.create_run(experiment_id, run_name=run_name, tags={TAG_JOB: spec.name, **who, **(tags or {})})
    values = {**flatten(spec.to_dict()), **(params or {})}
    items = [Param(k, redact_value(k, v)) for k, v in values.items()]
    for start in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=items[start:start + 100])
    c.log_text(run.info.run_id, spec_text(spec), "spec.yaml")
    return run.info.run_id


def job_run(spec: JobSpec, uri: str, run_name: str) -> tuple[str, int]:
    """The run of Ray Train run `run_name`, and how many times it was started before. A first start creates it;
    a later one (a resubmitted job, which Ray Train continues from its latest checkpoint) reopens it."""
    c = client(uri)
    experiment_id = experiment_for(c, spec.experiment)
    found = c.search_runs([experiment_id], filter_string=f"tags.`{TAG_TRAIN_RUN}` = '{run_name}'")
    if not found:
        return create_run(spec, uri, experiment_id, run_name, tags={TAG_TRAIN_RUN: run_name}), 0
    run_id = found[0].info.run_id
    return run_id, reopen_run(uri, run_id, spec, f"resubmitted: Ray Train run {run_name} continues from its "
                                                 "latest checkpoint")


def reopen_run(uri: str, run_id: str, spec: JobSpec, where: str) -> int:
    """Mark a run RUNNING again for restart n (returned): tags say what it continues from, and the spec it now
    runs is `restarts/<n>/spec.yaml` (params, logged at the first start, cannot change)."""
    c = client(uri)
    start = record_restart(c, run_id, where)
    c.log_text(run_id, spec_text(spec), f"restarts/{start}/spec.yaml")
    c.update_run(run_id, status="RUNNING")
    return start


def description_tag(spec: JobSpec, summary: dict[str, Any], outcome: str, seconds: float) -> dict[str, str]:
    """The description as a tag; none, with a warning, if it cannot be written: it must not hide the error that
    may be on its way, nor keep the run from ending."""
    try:
        return {TAG_DESCRIPTION: description(spec, summary, outcome, seconds)}
    except Exception as err:
        print(f"ganorch: warning: the run's description could not be written ({type(err).__name__}: {err})",
              file=sys.stderr)
        return {}


def description(spec: JobSpec, summary: dict[str, Any], outcome: str, seconds: float) -> str:
    """The run's description (MLflow shows it on the run's page) in two lines: what ran, and how it ended
    (`outcome`: the outcome tag's text, or the run's status; `summary`: what the workers ended with, if they did)."""
    workers, step = summary.get("workers"), summary.get("step")
    best = (f"{summary['best_fid']:.2f}", f"{summary['best_step']:,}") if summary.get("best_fid") else None
    m, t, r = spec.model, spec.train, spec.resources
    data = spec.data.source + (f" {spec.data.dataset}" if spec.data.dataset else "") + \
        (f" ({spec.data.path})" if spec.data.path else "") + \
        (f", {spec.data.labels_per_class} per class" if spec.data.labels_per_class else "")
    nodes = len({w.split(" (")[0] for w in workers}) if workers else 1
    devices = "GPU" if r.use_gpu else "CPU"
    what = (f"{m.family.upper()} {m.image_size}x{m.image_size}x{m.channels}"
            f"{', conditional' if m.conditional else ''} (latent {m.latent_dim}, widths G {m.g_width} / D {m.d_width})"
            f" on {data}: {r.describe_workers()} {devices} worker{'s' if r.max_workers > 1 else ''} on {nodes} "
            f"node{'s' if nodes > 1 else ''}, {t.steps:,} steps of batch {t.batch_size}, {t.loss} loss, "
            f"n_critic {t.n_critic}.")
    minutes, secs = divmod(round(seconds), 60)
    ended = f"Completed {step:,} steps" if outcome == "completed" and step else f"{outcome[0].upper()}{outcome[1:]}"
    how = f"{ended}; {minutes} min {secs} s in all" + (f"; best FID {best[0]} at step {best[1]}." if best else ".")
    return f"{what}\n{how}"


def end_run(uri: str, run_id: str, status: str, tags: dict[str, str] | None = None,
            skipped_files: list[str] | None = None, wait_s: float = 60.0) -> Path | None:
    """The driver's last writes: `tags`, the training images that could not be decoded (a count tag and
    `data/skipped_files.txt`), and the run's status. MLflow gets `wait_s` to take them; returns where what it
    did not take was kept."""
    outbox = Outbox(uri, run_id, "driver")
    if skipped_files:
        tags = {**(tags or {}), TAG_DATA_SKIPPED: str(len(skipped_files))}
    outbox.tags(tags or {})
    if skipped_files:
        with tempfile.TemporaryDirectory(prefix="ganorch-skipped-") as tmp:
            listing = Path(tmp) / "skipped_files.txt"
            listing.write_text("".join(f"{p}\n" for p in skipped_files))
            outbox.artifacts([listing], "data")
    outbox.end(status)
    return outbox.close(wait_s)


def ui_hint(uri: str, run_id: str) -> str:
    """How to look at run `run_id` in a browser: a link to its page in MLflow's model-training view (MLflow's UI
    opens in its GenAI view unless the link asks for the other)."""
    page = ""
    try:
        with own_http_settings():  # a link is not worth minutes of MLflow's retries
            experiment_id = client(uri).get_run(run_id).info.experiment_id
        page = f"/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    except Exception:
        pass
    return store_ui_hint(uri, page)
