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

import dataclasses
import json
import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray.train import UserCallback
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from orchestrator import search_space, tracking
from orchestrator.spec import JobSpec, parse

# The trial driver's reservation: Tune needs a non-empty one, the workers reserve their own.
DRIVER_CPUS = 0.01
TAG_SWEEP = "ganorch.sweep"                 # on the parent run: the search space, as YAML
TAG_TRIAL = "ganorch.trial"                 # on a child run: its Tune trial id
TAG_BEST_TRIAL = "ganorch.best_trial"       # on the parent: the best trial's child run id; on that child: "true"
TAG_RESTARTS, TAG_RESTART = tracking.TAG_RESTARTS, tracking.TAG_RESTART  # on a child run: Tune's restarts
BEST_JOB_ARTIFACT = "best_job.yaml"
TRIAL_STOP_ON = ("diverged", "d_overpowering")   # a trial's train.stop_on when the spec has none
POINTER = "train_checkpoint.json"           # a Tune checkpoint's content: which Train checkpoint it stands for


@dataclass
class SweepOutcome:
    parent_run_id: str
    tracking_uri: str
    trials: list[dict[str, Any]]     # per trial: id, child run id, params, status, last metric
    best: dict[str, Any] | None      # the best trial's entry
    best_spec: JobSpec | None        # its job spec, ready to run


def concurrent_trials(spec: JobSpec, cpus: float, gpus: float) -> int:
    """How many trials fit at once on a cluster with `cpus` and `gpus`, within tune.max_concurrent_trials."""
    r = spec.resources
    fits = math.floor(cpus / (r.num_workers * r.cpus_per_worker + DRIVER_CPUS) + 1e-9)
    if r.use_gpu:
        fits = min(fits, math.floor(gpus / (r.num_workers * r.gpus_per_worker) + 1e-9))
    fits = max(fits, 1)
    return min(fits, spec.tune.max_concurrent_trials) if spec.tune.max_concurrent_trials else fits


def param_space(spec: JobSpec) -> dict[str, Any]:
    from ray import tune

    dimensions, problems = search_space.parse_dimensions(spec.tune.space)
    assert not problems, "the spec was validated"
    space = {}
    for d in dimensions:
        if d.kind == "grid" or (d.kind == "choice" and spec.tune.searcher == "grid"):
            space[d.key] = tune.grid_search(list(d.values))
        elif d.kind == "choice":
            space[d.key] = tune.choice(list(d.values))
        else:
            space[d.key] = (tune.loguniform if d.kind == "loguniform" else tune.uniform)(*d.values)
    return space


def search_algorithm(spec: JobSpec) -> Any:
    """Optuna's TPE for `searcher: optuna`; None for Tune's own random and grid search."""
    if spec.tune.searcher != "optuna":
        return None
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(seed=spec.seed)


def trial_spec(base: dict[str, Any], config: dict[str, Any], keys: list[str]) -> JobSpec:
    """The job spec of one trial. Unless train.stop_on says otherwise, a trial stops when it diverges, when D
    overpowers G, or (with evaluation) when its modes collapse: it is recorded as unstable, with the reason."""
    spec = parse(search_space.apply(base, {k: config[k] for k in keys}))
    if not spec.train.stop_on:
        stop_on = list(TRIAL_STOP_ON) + (["mode_collapse"] if spec.eval.every else [])
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, stop_on=stop_on))
    return spec


class ReportForwarder(UserCallback):
    """In the trial's Train controller: hands each report (rank 0's metrics, the checkpoint's path in storage)
    to the trial driver, which turns it into a Tune result (`fit_reporting`). The workers wait for Tune's verdict
    on it through a second queue."""

    def __init__(self, queue: Any):
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.queue.put((metrics[0], checkpoint.path if checkpoint else None))


def run_trial(config: dict[str, Any], *, base: dict[str, Any], keys: list[str], tracking_uri: str,
              experiment_id: str, parent_run_id: str, sweep_name: str, mlflow_env: dict[str, str]) -> None:
    """The Tune trainable: train one sampled spec on its own TorchTrainer, recorded in a child MLflow run."""
    import ray.tune
    from ray.train import Checkpoint, RunConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from orchestrator.launch import scaling
    from orchestrator.worker import train_loop_per_worker

    tracking.adopt(mlflow_env)
    spec = trial_spec(base, config, keys)
    trial_id = ray.tune.get_context().get_trial_id()
    restored = ray.tune.get_checkpoint()  # set when Tune restarts the trial
    origin = read_pointer(restored) if restored else None
    run_id, start = trial_run(spec, config, keys, tracking_uri, experiment_id, parent_run_id,
                              f"{sweep_name}-{trial_id}", trial_id, origin)
    resume_from = Checkpoint(origin["path"], filesystem=restored.filesystem) if origin else None
    reports, verdicts = Queue(1, actor_options={"num_cpus": 0}), Queue(1, actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.to_dict(), "tracking_uri": tracking_uri, "run_id": run_id,
                           "resume_from": resume_from, "verdicts": verdicts, "mlflow_env": mlflow_env},
        **scaling(spec),
        run_config=RunConfig(name=f"{sweep_name}-{trial_id}" + (f"-restart{start}" if start else ""),
                             storage_path=spec.tracking.storage_path, callbacks=[ReportForwarder(reports)]),
    )
    status, tags = "FAILED", {}
    try:
        result = fit_reporting(trainer, reports, verdicts, {"trial": trial_id, "run_id": run_id})
        stopped = (result.return_value or {}).get("stopped")
        tags[tracking.TAG_OUTCOME] = f"stopped: {stopped}" if stopped else "completed"
        status = "FINISHED"
    except SystemExit:  # Tune ended the trial in `report` (ASHA stop, PBT pause): a restart or `run` closes it
        status = ""
        raise
    finally:
        if status:
            tracking.end_run(tracking_uri, run_id, status, tags)


def trial_run(spec: JobSpec, config: dict[str, Any], keys: list[str], uri: str, experiment_id: str,
              parent_run_id: str, name: str, trial_id: str, origin: dict[str, Any] | None) -> tuple[str, int]:
    """The trial's child run and how many times the trial was restarted before. A first start creates the run; a
    restart reopens it and records what it continues from, and under which spec."""
    client = tracking.client(uri)
    found = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                                              f"tags.`{TAG_TRIAL}` = '{trial_id}'")
    if not found:
        return tracking.create_run(spec, uri, experiment_id, name,
                                   tags={TAG_TRIAL: trial_id, "mlflow.parentRunId": parent_run_id},
                                   params={k: config[k] for k in keys if k == search_space.LR_RATIO}), 0
    if origin is None:
        where = "from the start (no checkpoint yet)"
    elif origin["trial"] == trial_id:
        where = f"its own checkpoint at step {origin['step']}"
    else:
        where = f"cloned trial {origin['trial']} (run {origin['run_id']}) at step {origin['step']}: {origin['path']}"
    values = ", ".join(f"{k}={config[k]:.4g}" if isinstance(config[k], float) else f"{k}={config[k]}" for k in keys)
    run_id = found[0].info.run_id
    return run_id, tracking.reopen_run(uri, run_id, spec, f"{where}; {values}")


def fit_reporting(trainer: Any, reports: Any, verdicts: Any, pointer: dict[str, Any]) -> Any:
    """Fit the trainer in a thread while this one turns its reports into Tune results, each with a checkpoint:
    a small file with `pointer`, the step and the Train checkpoint's path (not a copy of the checkpoint).
    `ray.tune.report` returns once Tune lets the trial go on (it exits the thread when Tune stops or pauses the
    trial); only then do the workers, waiting on `verdicts`, take another step."""
    from queue import Empty

    import ray.tune

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # re-raised in the trial's own thread below
            outcome["error"] = err

    thread = threading.Thread(target=fit, name="ganorch-trial-fit", daemon=True)
    thread.start()
    while thread.is_alive() or not reports.empty():
        try:
            metrics, path = reports.get(timeout=1.0)
        except Empty:
            continue
        with tempfile.TemporaryDirectory(prefix="ganorch-pointer-") as tmp:
            checkpoint = None
            if path:
                Path(tmp, POINTER).write_text(json.dumps({**pointer, "step": metrics["step"], "path": path}))
                checkpoint = ray.tune.Checkpoint.from_directory(tmp)
            ray.tune.report(metrics, checkpoint=checkpoint)  # Tune copies the directory into the trial's storage
        verdicts.put(True)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def read_pointer(checkpoint: Any) -> dict[str, Any]:
    with checkpoint.as_directory() as directory:
        return json.loads(Path(directory, POINTER).read_text())


def run(spec: JobSpec, export: str | Path | None = None, show_progress: bool = True) -> SweepOutcome:
    """Run the sweep `spec.tune` describes; returns every trial and the best one."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from orchestrator.launch import check_tracking_store, for_workers, init_ray
    from orchestrator.sweep_view import TrialTable

    init_ray()
    spec = for_workers(spec)
    t = spec.tune
    uri = tracking.tracking_uri()
    check_tracking_store(uri)
    parent_run_id, sweep_name = tracking.start_run(spec, uri)
    client = tracking.client(uri)
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
                             parent_run_id=parent_run_id, sweep_name=sweep_name, mlflow_env=tracking.environment()),
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
        tracking.end_run(uri, parent_run_id, status)
    return outcome


class StepPBT(PopulationBasedTraining):
    """Ray's PBT on the training step, with perturbed values kept within the space's ranges (a beta past 1 would
    fail the trial), and never at a trial's last step: an exploit there would restart the trial only to end."""

    def __init__(self, last_step: int, ranges: dict[str, tuple[float, float]], **kwargs: Any):
        super().__init__(time_attr="step", custom_explore_fn=self.within_ranges, **kwargs)
        self.last_step, self.ranges = last_step, ranges

    def within_ranges(self, config: dict[str, Any]) -> dict[str, Any]:
        for key, (low, high) in self.ranges.items():
            config[key] = min(max(config[key], low), high)
        return config

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get("step", 0) >= self.last_step:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def population_based_training(spec: JobSpec) -> StepPBT:
    """PBT over the space's perturbable keys (search_space.perturbable); the others stay as each trial drew them,
    and an exploit copies them from the donor with its weights."""
    from ray import tune

    t = spec.tune
    dimensions, _ = search_space.parse_dimensions(t.space)
    mutations = {d.key: list(d.values) if d.kind == "choice" else
                 (tune.loguniform if d.kind == "loguniform" else tune.uniform)(*d.values)
                 for d in dimensions if search_space.perturbable(d.key)}
    ranges = {d.key: d.values for d in dimensions if d.key in mutations and d.kind in search_space.RANGES}
    return StepPBT(spec.train.steps, ranges, hyperparam_mutations=mutations,
                   perturbation_interval=t.perturbation_interval or spec.tracking.checkpoint_every,
                   quantile_fraction=t.quantile_fraction, resample_probability=t.resample_probability,
                   synch=t.synchronous)


def summarise(spec: JobSpec, grid: Any, uri: str, parent_run_id: str, keys: list[str],
              export: str | Path | None) -> SweepOutcome:
    """Close the child runs Tune stopped, tag the best trial, and write its job spec (artifact and `export`)."""
    client = tracking.client(uri)
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
        flags = {name: (child.data.tags.get(tracking.TAG_UNSTABLE + name) if child else None)
                 for name in effective.train.stop_on}
        raised = [reason for reason in flags.values() if reason]
        if raised:  # its stability monitor stopped it (ASHA may have ended it in the same report)
            entry["status"], entry["reason"] = "UNSTABLE", min(raised, key=lambda r: int(r.split(" at step ")[1].split(":")[0]))
            if child.info.status == "RUNNING":
                client.set_tag(child.info.run_id, tracking.TAG_OUTCOME, f"stopped: {entry['reason']}")
                client.set_terminated(child.info.run_id, "FINISHED")
        elif child is not None and not result.error and child.info.status in ("RUNNING", "FAILED") and \
                (entry["step"] or 0) < spec.train.steps:
            # Stopped by the scheduler mid-training: Tune ends the trial's driver, either killing it (the run stays
            # RUNNING) or failing its `fit` at the next report (the run ended FAILED).
            client.set_tag(child.info.run_id, tracking.TAG_OUTCOME, f"stopped by {t.scheduler} at step {entry['step']}")
            client.set_terminated(child.info.run_id, "KILLED")
            entry["status"] = "STOPPED"
        if result.error:
            entry["reason"] = str(result.error).splitlines()[0][:200]
        trials.append(entry)
        if entry["status"] in ("TERMINATED", "STOPPED") and value is not None and value == value and (
                best is None or (value < best["metric"] if t.mode == "min" else value > best["metric"])):
            best = entry
    log_stability_map(client, parent_run_id, trials, spec)
    best_spec = None
    if best is not None:
        best_spec = parse(search_space.apply(spec.to_dict(), best["params"]))
        client.set_tag(parent_run_id, TAG_BEST_TRIAL, best["run_id"])
        if best["run_id"]:
            client.set_tag(best["run_id"], TAG_BEST_TRIAL, "true")
        client.log_metric(parent_run_id, f"best_{t.metric}", best["metric"])
        text = best_spec.to_yaml()
        client.log_text(parent_run_id, text, BEST_JOB_ARTIFACT)
        if export:
            Path(export).write_text(text)
    return SweepOutcome(parent_run_id, uri, trials, best, best_spec)


def log_stability_map(client: Any, parent_run_id: str, trials: list[dict[str, Any]], spec: JobSpec) -> None:
    from orchestrator import stability_map

    t = spec.tune
    client.log_text(parent_run_id, stability_map.to_csv(trials, t.metric), "stability_map.csv")
    figure = stability_map.plot(trials, t.metric, t.mode, f"{spec.name}: {len(trials)} trials")
    client.log_figure(parent_run_id, figure, "stability_map.png")
    import matplotlib.pyplot as plt

    plt.close(figure)
