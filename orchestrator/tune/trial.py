"""One trial of a sweep: a small Tune function trainable that builds a TorchTrainer for its trial's spec, fits it, and
turns each of rank 0's reports into a Tune result with a checkpoint (a pointer to the Train checkpoint).

When Tune restarts a trial (a retry, a PBT pause or exploit) the trial continues from that checkpoint, in the same
child MLflow run; each start is a fresh Train run, which would otherwise restore its own latest checkpoint.
"""

import dataclasses
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ray.train import UserCallback

from orchestrator.spec import JobSpec, parse, search_space
from orchestrator.spec.job import trial_data
from orchestrator.track import runs, store
from orchestrator.track.tags import TAG_OUTCOME, TAG_TRIAL

TRIAL_STOP_ON = ("diverged", "d_overpowering")   # a trial's train.stop_on when the spec has none
POINTER = "train_checkpoint.json"           # a Tune checkpoint's content: which Train checkpoint it stands for


def trial_spec(base: dict[str, Any], config: dict[str, Any], keys: list[str]) -> JobSpec:
    """The job spec of one trial. Unless train.stop_on says otherwise, a trial stops when it diverges, when D
    overpowers G, or (with evaluation) when its modes collapse: it is recorded as unstable, with the reason. A trial
    registers no generator (the sweep registers its best trial's)."""
    spec = parse(trial_data(base, {k: config[k] for k in keys}))
    # The sweep registers its best trial's generator, not every trial's.
    spec = dataclasses.replace(spec, tracking=dataclasses.replace(spec.tracking, register_as=None))
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
    import ray
    import ray.tune
    from ray.train import Checkpoint
    from ray.util.queue import Queue

    from orchestrator.train.ray_init import on_this_node
    from orchestrator.train.trainer import ray_datasets, ray_train_settings, torch_trainer

    started_at = time.time()
    store.adopt(mlflow_env)
    spec = trial_spec(base, config, keys)
    trial_id = ray.tune.get_context().get_trial_id()
    restored = ray.tune.get_checkpoint()  # set when Tune restarts the trial
    origin = read_pointer(restored) if restored else None
    datasets, skipped = ray_datasets(spec)  # opened before the child run exists or reopens
    run_id, start = trial_run(spec, config, keys, tracking_uri, experiment_id, parent_run_id,
                              f"{sweep_name}-{trial_id}", trial_id, origin)
    resume_from = Checkpoint(origin["path"], filesystem=restored.filesystem) if origin else None
    here = {"num_cpus": 0, **on_this_node()}
    reports, verdicts = Queue(1, actor_options=here), Queue(1, actor_options=here)
    # A trial's failures are Tune's to retry (tune.max_failures), from its latest checkpoint, in a fresh Train run:
    # workers Ray Train restarted inside the trial would find the verdict of a report their predecessors did not
    # live to wait for in `verdicts`, and run one report ahead of Tune.
    trainer = torch_trainer(spec, {"spec": spec.to_dict(), "tracking_uri": tracking_uri, "run_id": run_id,
                                   "resume_from": resume_from, "verdicts": verdicts, "mlflow_env": mlflow_env,
                                   "started_at": started_at},
                            name=f"{sweep_name}-{trial_id}" + (f"-restart{start}" if start else ""),
                            callbacks=[ReportForwarder(reports)], datasets=datasets, max_failures=0)
    status, tags, summary = "FAILED", {}, {}
    try:
        with ray_train_settings(spec):
            result = fit_reporting(trainer, reports, verdicts, {"trial": trial_id, "run_id": run_id})
        summary = result.return_value or {}
        tags[TAG_OUTCOME] = f"stopped: {summary['stopped']}" if summary.get("stopped") else "completed"
        status = "FINISHED"
    except SystemExit:  # Tune ended the trial in `report` (ASHA stop, PBT pause): a restart or `run` closes it
        status = ""
        raise
    finally:
        if status:
            tags.update(runs.description_tag(spec, summary, tags.get(TAG_OUTCOME) or status.lower(),
                                             time.time() - started_at))
            skipped_files = ray.get(skipped.read.remote()) if skipped is not None else []
            runs.end_run(tracking_uri, run_id, status, tags, skipped_files)


def trial_run(spec: JobSpec, config: dict[str, Any], keys: list[str], uri: str, experiment_id: str,
              parent_run_id: str, name: str, trial_id: str, origin: dict[str, Any] | None) -> tuple[str, int]:
    """The trial's child run and how many times the trial was restarted before. A first start creates the run; a
    restart reopens it and records what it continues from, and under which spec."""
    client = store.client(uri)
    found = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and "
                                                              f"tags.`{TAG_TRIAL}` = '{trial_id}'")
    if not found:
        return runs.create_run(spec, uri, experiment_id, name,
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
    return run_id, runs.reopen_run(uri, run_id, spec, f"{where}; {values}")


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
