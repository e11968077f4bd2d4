"""A Ray Tune sweep over a job spec: one Tune trial per sampled spec, each trial a Ray Train run of its own.

Ray Train V2's pattern: the Tune trainable is a small driver function that builds a TorchTrainer for its trial's
spec and fits it. The trial driver reserves almost nothing (DRIVER_CPUS); the trainer reserves its workers
itself, so `max_concurrent_trials` is what keeps trials from waiting on each other's workers.

Each of rank 0's reports (one per checkpoint) becomes a Tune result with a Tune checkpoint: a small file naming
the Train checkpoint (Ray's TuneReportCallback forwards metrics only, and PBT can only clone what Tune holds).
When Tune restarts a trial (a retry, a PBT pause or exploit) the driver hands that checkpoint to the workers,
which continue from it; each start is a fresh Train run, which would otherwise restore its own latest checkpoint.

In MLflow the sweep is one parent run (its spec, the search space, the best trial) with a nested child run per
trial, which the trial's rank 0 fills as `ganorch run` would; a restarted trial goes on in the same child run.
"""

import collections
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from orchestrator.spec import JobSpec, parse, search_space
from orchestrator.spec.job import trial_data
from orchestrator.track import runs, store
from orchestrator.track.redact import redact
from orchestrator.track.tags import (
    TAG_BEST_TRIAL,
    TAG_DESCRIPTION,
    TAG_OUTCOME,
    TAG_REGISTERED,
    TAG_SWEEP,
    TAG_TRIAL,
    TAG_UNSTABLE,
)
from orchestrator.tune.schedulers import (
    DRIVER_CPUS,
    concurrent_trials,
    param_space,
    population_based_training,
    search_algorithm,
)
from orchestrator.tune.trial import run_trial, trial_spec

BEST_JOB_ARTIFACT = "best_job.yaml"


@dataclass
class SweepOutcome:
    parent_run_id: str
    tracking_uri: str
    trials: list[dict[str, Any]]     # per trial: id, child run id, params, status, last metric
    best: dict[str, Any] | None      # the best trial's entry
    best_spec: JobSpec | None        # its job spec, ready to run


def run(spec: JobSpec, export: str | Path | None = None, show_progress: bool = True) -> SweepOutcome:
    """Run the sweep `spec.tune` describes; returns every trial and the best one."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from orchestrator.train.ray_init import check_spare_resources, check_tracking_store, init_ray_and_store
    from orchestrator.train.trainer import for_workers
    from orchestrator.tune.trial_table import TrialTable

    uri = store.tracking_uri()
    init_ray_and_store(uri)
    spec = for_workers(spec)
    check_spare_resources(spec)  # what each trial needs; once, before the sweep's run exists
    t = spec.tune
    check_tracking_store(uri)
    parent_run_id, sweep_name = runs.start_run(spec, uri)
    client = store.client(uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    client.set_tag(parent_run_id, TAG_SWEEP, yaml.safe_dump(t.space, default_flow_style=True).strip())
    keys = list(t.space)
    if t.scheduler == "asha":
        # max_t past the last step: ASHA would otherwise stop every trial at its last report, before the trial
        # closes its MLflow run.
        scheduler = ASHAScheduler(time_attr="step", max_t=spec.train.steps + 1, reduction_factor=t.reduction_factor,
                                  grace_period=t.grace_period or spec.tracking.checkpoint_every)
    elif t.scheduler == "pbt":
        scheduler = population_based_training(spec)
    else:
        scheduler = FIFOScheduler()
    resources = ray.cluster_resources()
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=spec.to_dict(), keys=keys, tracking_uri=uri, experiment_id=experiment_id,
                             parent_run_id=parent_run_id, sweep_name=sweep_name, mlflow_env=store.environment()),
        {"cpu": DRIVER_CPUS})
    tuner = tune.Tuner(
        trainable, param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=t.num_samples, scheduler=scheduler,
                                    search_alg=search_algorithm(spec), reuse_actors=False,
                                    max_concurrent_trials=concurrent_trials(spec, resources.get("CPU", 0),
                                                                            resources.get("GPU", 0))),
        run_config=tune.RunConfig(name=sweep_name, storage_path=spec.tracking.storage_path,
                                  failure_config=tune.FailureConfig(max_failures=t.max_failures), verbose=0,
                                  callbacks=[TrialTable(keys, t.metric, sweep_name)] if show_progress else None))
    status = "FAILED"
    try:
        grid = tuner.fit()
        outcome = summarise(spec, grid, uri, parent_run_id, keys, export)
        status = "FINISHED"
    finally:
        runs.end_run(uri, parent_run_id, status)
    return outcome


def summarise(spec: JobSpec, grid: Any, uri: str, parent_run_id: str, keys: list[str],
              export: str | Path | None) -> SweepOutcome:
    """Close the child runs Tune stopped, tag the best trial, and write its job spec (artifact and `export`); the
    sweep's run gets the stability map, the trials' data as its input, a description and the best generator."""
    client = store.client(uri)
    t = spec.tune
    children: dict[str, Any] = {}
    for run in client.search_runs([client.get_run(parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                  order_by=["attributes.start_time DESC"]):
        children.setdefault(run.data.tags.get(TAG_TRIAL), run)
    trials, best = [], None
    for result in grid:
        trial_id = result.metrics.get("trial_id") if result.metrics else None
        trial_id = trial_id or Path(result.path).name
        child = children.get(trial_id)
        value = (result.metrics or {}).get(t.metric)
        params = {k: result.config[k] for k in keys}
        effective = trial_spec(spec.to_dict(), params, keys)
        entry = {"trial": trial_id, "run_id": child.info.run_id if child else None, "params": params,
                 "metric": value, "step": (result.metrics or {}).get("step"), "reason": "",
                 "status": "ERROR" if result.error else "TERMINATED", "lr_g": effective.optim.g.lr,
                 "lr_d": effective.optim.d.lr, "n_critic": effective.train.n_critic}
        flags = {name: (child.data.tags.get(TAG_UNSTABLE + name) if child else None)
                 for name in effective.train.stop_on}
        raised = [reason for reason in flags.values() if reason]
        if raised:  # its stability monitor stopped it (ASHA may have ended it in the same report)
            entry["status"], entry["reason"] = "UNSTABLE", min(raised, key=lambda r: int(r.split(" at step ")[1].split(":")[0]))
            if child.info.status == "RUNNING":
                close_child(client, child, effective, entry["step"], f"stopped: {entry['reason']}", "FINISHED")
        elif child is not None and not result.error and child.info.status in ("RUNNING", "FAILED") and \
                (entry["step"] or 0) < spec.train.steps:
            # Stopped by the scheduler mid-training: Tune ends the trial's driver, either killing it (the run stays
            # RUNNING) or failing its `fit` at the next report (the run ended FAILED).
            close_child(client, child, effective, entry["step"], f"stopped by {t.scheduler} at step {entry['step']}",
                        "KILLED")
            entry["status"] = "STOPPED"
        if result.error:
            entry["reason"] = redact(str(result.error)).splitlines()[0][:200]  # redacted before it is cut
        trials.append(entry)
        if entry["status"] in ("TERMINATED", "STOPPED") and value is not None and value == value and (
                best is None or (value < best["metric"] if t.mode == "min" else value > best["metric"])):
            best = entry
    log_stability_map(client, parent_run_id, trials, spec)
    log_trials_data(client, parent_run_id, list(children.values()))
    best_spec = None
    if best is not None:
        best_spec = parse(trial_data(spec.to_dict(), best["params"]))
        client.set_tag(parent_run_id, TAG_BEST_TRIAL, best["run_id"])
        if best["run_id"]:
            client.set_tag(best["run_id"], TAG_BEST_TRIAL, "true")
        client.log_metric(parent_run_id, f"best_{t.metric}", best["metric"])
        text = best_spec.to_yaml()
        client.log_text(parent_run_id, text, BEST_JOB_ARTIFACT)
        if export:
            Path(export).write_text(text)
    try:
        client.set_tag(parent_run_id, TAG_DESCRIPTION, sweep_description(spec, keys, trials, best))
    except Exception as err:  # the sweep's record and its best generator matter more
        print(f"ganorch: warning: the sweep's description could not be written ({type(err).__name__}: {err})")
    if best is not None and best["run_id"]:  # last: the sweep's record does not depend on it
        try:
            link_best(client, uri, spec.tracking.register_as, best, parent_run_id)
        except Exception as err:  # no generator and no checkpoint, or the registry refused
            print(f"ganorch: warning: the best trial's generator is not on the sweep's run"
                  f"{' nor registered as ' + spec.tracking.register_as if spec.tracking.register_as else ''}: "
                  f"{type(err).__name__}: {str(err).strip()[:300]}")
    return SweepOutcome(parent_run_id, uri, trials, best, best_spec)


def log_trials_data(client: Any, parent_run_id: str, children: list[Any]) -> None:
    """The datasets the trials trained on (their runs' inputs, each once) as inputs of the sweep's run too."""
    inputs = {}
    for child in children:
        for given in child.inputs.dataset_inputs if child.inputs else []:
            inputs.setdefault((given.dataset.name, given.dataset.digest), given)
    if inputs:
        client.log_inputs(parent_run_id, list(inputs.values()))


def close_child(client: Any, child: Any, spec: JobSpec, step: int | None, outcome: str, status: str) -> None:
    """End a trial's run that its own driver could not end: its outcome, its description, its status."""
    seconds = time.time() - child.info.start_time / 1000
    for key, value in {TAG_OUTCOME: outcome, **runs.description_tag(spec, {"step": step}, outcome, seconds)}.items():
        client.set_tag(child.info.run_id, key, value)
    client.set_terminated(child.info.run_id, status)


def link_best(client: Any, uri: str, register_as: str | None, best: dict[str, Any], parent_run_id: str) -> None:
    """The best trial's generator (its best checkpoint's by FID, else its last) as a model output of the sweep's
    run; with `register_as`, a new version of that registered model, with the alias `best`, and the sweep's run
    tagged with it. A trial its scheduler stopped logged no generator: it is made from the trial's checkpoint."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    from orchestrator.track.generator_model import BEST_MODEL_NAME, MODEL_NAME, register
    from orchestrator.train.generator_models import log_from_checkpoint

    run_id = best["run_id"]
    found = client.search_logged_models(
        experiment_ids=[client.get_run(run_id).info.experiment_id], filter_string=f"source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_time", "ascending": True}])
    models = {m.name: m.model_id for m in found if m.status == LoggedModelStatus.READY}  # the latest of each name
    model_id = models.get(BEST_MODEL_NAME) or models.get(MODEL_NAME) or log_from_checkpoint(uri, run_id)
    outputs = client.get_run(run_id).outputs
    step = next((o.step for o in (outputs.model_outputs if outputs else []) if o.model_id == model_id), 0)
    client.log_outputs(parent_run_id, [LoggedModelOutput(model_id, step)])
    if register_as:
        version = register(uri, model_id, register_as, ("best",))
        client.set_tag(parent_run_id, TAG_REGISTERED, f"{register_as} version {version} (@best): model {model_id} "
                                                      f"of run {run_id}")


def sweep_description(spec: JobSpec, keys: list[str], trials: list[dict[str, Any]],
                      best: dict[str, Any] | None) -> str:
    """The sweep's run's description, in two lines: what was searched, and what came of it."""
    t = spec.tune
    counts = collections.Counter(trial["status"] for trial in trials)
    what = (f"Sweep of {spec.name}: {len(trials)} trials over {', '.join(keys)} "
            f"({t.scheduler if t.scheduler != 'none' else 'no scheduler'}), {spec.train.steps:,} steps each at "
            f"most, {t.metric} ({t.mode}).")
    words = {"TERMINATED": "completed", "STOPPED": f"stopped by {t.scheduler}", "UNSTABLE": "unstable",
             "ERROR": "failed"}
    ended = ", ".join(f"{n} {words.get(status, status.lower())}" for status, n in sorted(counts.items()))
    if best is None:
        return f"{what}\n{ended.capitalize()}; no trial reported {t.metric}."
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
    return f"{what}\n{ended.capitalize()}; best {t.metric} {best['metric']:.4g} at step {best['step']}: {params}."


def log_stability_map(client: Any, parent_run_id: str, trials: list[dict[str, Any]], spec: JobSpec) -> None:
    from orchestrator.tune import stability_map

    t = spec.tune
    client.log_text(parent_run_id, stability_map.to_csv(trials, t.metric), "stability_map.csv")
    dimensions, _ = search_space.parse_dimensions(t.space)
    discrete = frozenset(d.key for d in dimensions if d.kind not in search_space.RANGES)
    figure = stability_map.plot(trials, t.metric, t.mode, f"{spec.name}: {len(trials)} trials", discrete)
    client.log_figure(parent_run_id, figure, "stability_map.png")
    figure.canvas.draw()
    client.log_image(parent_run_id, np.asarray(figure.canvas.buffer_rgba())[..., :3], key="stability_map", step=0,
                     synchronous=True)  # also in the run's image charts
    import matplotlib.pyplot as plt

    plt.close(figure)
