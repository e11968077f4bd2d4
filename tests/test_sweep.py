"""Ray Tune sweeps on real Ray and a real MLflow store: trials are Ray Train runs, tracked as nested runs."""

import re
from pathlib import Path

import pytest
import yaml

from orchestrator.spec import load, parse, search_space
from orchestrator.track import store
from orchestrator.track.tags import (
    TAG_BEST_TRIAL,
    TAG_CHECKPOINT,
    TAG_OUTCOME,
    TAG_RESTART,
    TAG_RESTARTS,
    TAG_RESUMED_FROM,
    TAG_SWEEP,
    TAG_TRIAL,
)
from orchestrator.tune import schedulers, sweep

REPO = Path(__file__).resolve().parents[1]


def test_param_space_maps_every_kind_to_tune():
    from ray import tune
    from ray.tune.search.sample import Categorical, Float

    spec = parse({"name": "t", "eval": {"every": 10}, "tracking": {"checkpoint_every": 10},
                  "tune": {"space": {"optim.g.lr": {"loguniform": [1.0e-5, 1.0e-3]},
                                     "optim.g.betas": {"choice": [[0.5, 0.999], [0.0, 0.9]]},
                                     "train.n_critic": {"grid": [1, 2]},
                                     "optim.lr_ratio": {"uniform": [1, 4]}}}})
    space = schedulers.param_space(spec)
    assert isinstance(space["optim.g.lr"], Float) and space["optim.g.lr"].lower == 1.0e-5
    assert isinstance(space["optim.g.betas"], Categorical)
    assert space["train.n_critic"] == tune.grid_search([1, 2])
    assert isinstance(space["optim.lr_ratio"], Float)


def test_a_sample_becomes_a_job_spec_with_ttur_ratio():
    base = parse({"name": "t", "optim": {"g": {"lr": 1.0e-4}}, "eval": {"every": 10},
                  "tracking": {"checkpoint_every": 10},
                  "tune": {"space": {"optim.g.lr": {"choice": [3.0e-4]}, "optim.lr_ratio": {"choice": [4]}}}})
    spec = parse(search_space.apply(base.to_dict(), {"optim.lr_ratio": 4, "optim.g.lr": 3.0e-4}))
    assert spec.tune is None
    assert spec.optim.g.lr == 3.0e-4 and spec.optim.d.lr == pytest.approx(1.2e-3)


@pytest.mark.parametrize("every, stop_on, expected", [
    (10, None, ["diverged", "d_overpowering", "mode_collapse"]), (0, None, ["diverged", "d_overpowering"]),
    (10, ["oscillation"], ["oscillation"])], ids=["evaluating", "not evaluating", "the spec's own"])
def test_trials_stop_on_instability_and_with_evaluation_on_mode_collapse(every, stop_on, expected):
    from orchestrator.tune.trial import trial_spec

    base = {"name": "t", "eval": {"every": every}, "tracking": {"checkpoint_every": 10},
            "tune": {"metric": "loss_g", "space": {"optim.g.lr": {"choice": [3.0e-4]}}}}
    if stop_on:
        base["train"] = {"stop_on": stop_on}
    assert list(trial_spec(parse(base).to_dict(), {"optim.g.lr": 3.0e-4}, ["optim.g.lr"]).train.stop_on) == expected


def test_concurrent_trials_counts_workers_and_the_limit():
    spec = parse({"name": "t", "resources": {"num_workers": 2, "cpus_per_worker": 1}, "eval": {"every": 10},
                  "tracking": {"checkpoint_every": 10}, "tune": {"space": {"optim.g.lr": {"choice": [1.0e-4]}}}})
    assert schedulers.concurrent_trials(spec, cpus=8, gpus=0) == 3   # 2.01 CPUs a trial
    evaluated = parse({**spec.to_dict(), "eval": {"every": 10, "background": True, "resources": {"cpus": 0.5}}})
    assert schedulers.concurrent_trials(evaluated, cpus=8, gpus=0) == 3   # 2.51 CPUs a trial
    evaluated = parse({**spec.to_dict(), "eval": {"every": 10, "background": True, "resources": {"cpus": 1}}})
    assert schedulers.concurrent_trials(evaluated, cpus=8, gpus=0) == 2   # 3.01 CPUs a trial, its evaluator's too
    gpu = parse({**spec.to_dict(), "resources": {"num_workers": 1, "use_gpu": True, "gpus_per_worker": 0.25},
                 "tune": {"space": {"optim.g.lr": {"choice": [1.0e-4]}}, "max_concurrent_trials": 6}})
    assert schedulers.concurrent_trials(gpu, cpus=16, gpus=1) == 4   # four quarter-GPU trials share one GPU
    assert schedulers.concurrent_trials(gpu, cpus=16, gpus=2) == 6   # the limit


def test_pbt_perturbs_optimizer_keys_and_n_critic_within_the_space():
    from ray.tune.schedulers import TrialScheduler

    spec = parse({"name": "t", "train": {"steps": 10}, "tracking": {"checkpoint_every": 2},
                  "tune": {"metric": "loss_g", "scheduler": "pbt", "perturbation_interval": 4,
                           "space": {"optim.g.lr": {"loguniform": [1.0e-5, 1.0e-3]},
                                     "optim.g.betas": {"choice": [[0.5, 0.999], [0.0, 0.99]]},
                                     "train.n_critic": {"choice": [1, 2, 5]},
                                     "model.g_width": {"choice": [4, 8]}}}})
    pbt = schedulers.population_based_training(spec)
    assert set(pbt._hyperparam_mutations) == {"optim.g.lr", "optim.g.betas", "train.n_critic"}
    assert pbt._hyperparam_mutations["train.n_critic"] == [1, 2, 5]
    assert pbt._time_attr == "step" and pbt._perturbation_interval == 4
    assert pbt.within_ranges({"optim.g.lr": 1.2e-3, "train.n_critic": 5}) == {"optim.g.lr": 1.0e-3, "train.n_critic": 5}
    assert pbt.within_ranges({"optim.g.lr": 8e-6})["optim.g.lr"] == 1.0e-5
    assert pbt.on_trial_result(None, None, {"step": 10, "loss_g": 1.0}) == TrialScheduler.CONTINUE


def test_asha_sweep_records_parent_and_child_runs_and_exports_the_best_job(
        ray_session, mlflow_store, tmp_path, mnist_classifier):
    spec = load(REPO / "jobs/debug_dcgan.yaml", [
        "resources.num_workers=1", "resources.cpus_per_worker=0.5", "train.steps=6", "train.batch_size=8",
        "tracking.checkpoint_every=2", "tracking.metrics_every=2", "eval.every=2", "eval.num_samples=50",
        f"eval.cache_dir={mnist_classifier[1]}", f"tracking.storage_path={tmp_path / 'ray'}",
        "tune={space: {optim.g.lr: {loguniform: [1.0e-4, 1.0e-3]}, optim.lr_ratio: {choice: [1, 2]}}, "
        "num_samples: 3, max_concurrent_trials: 2, scheduler: asha, grace_period: 2}",
        "tracking.register_as=sweep-generator"])
    export = tmp_path / "best.yaml"
    outcome = sweep.run(spec, export)

    client = store.client(mlflow_store)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert "optim.lr_ratio" in parent.data.tags[TAG_SWEEP]
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    assert len(children) == len(outcome.trials) == 3
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    by_id = {c.info.run_id: c for c in children}
    for trial in outcome.trials:
        child = by_id[trial["run_id"]]
        assert child.data.tags[TAG_TRIAL] == trial["trial"]
        assert float(child.data.params["optim.g.lr"]) == pytest.approx(trial["params"]["optim.g.lr"])
        assert float(child.data.params["optim.d.lr"]) == pytest.approx(
            trial["params"]["optim.g.lr"] * trial["params"]["optim.lr_ratio"])
        assert child.data.params["optim.lr_ratio"] == str(trial["params"]["optim.lr_ratio"])
        assert [m.step for m in client.get_metric_history(child.info.run_id, "fid")][:1] == [2]
        # A trial ASHA stopped ends KILLED, saying where; one that trained to the end ends FINISHED, completed.
        expected = {"STOPPED": ("KILLED", f"stopped by asha at step {trial['step']}"),
                    "TERMINATED": ("FINISHED", "completed")}[trial["status"]]
        assert (child.info.status, child.data.tags[TAG_OUTCOME]) == expected, trial
        assert (trial["step"] < 6) == (trial["status"] == "STOPPED"), trial
        what, how = child.data.tags["mlflow.note.content"].splitlines()  # the run page's description
        assert what.startswith("DCGAN 28x28x1") and how.startswith(
            "Completed 6 steps" if trial["status"] == "TERMINATED" else f"Stopped by asha at step {trial['step']}")

    best = outcome.best
    assert best["metric"] == min(t["metric"] for t in outcome.trials if t["metric"] is not None)
    assert parent.data.tags[TAG_BEST_TRIAL] == best["run_id"]
    assert by_id[best["run_id"]].data.tags[TAG_BEST_TRIAL] == "true"
    assert parent.data.metrics["best_fid"] == pytest.approx(best["metric"])
    # Only the best trial's generator is registered, with the alias `best`: its G_ema at its best FID.
    (version,) = client.search_model_versions("name = 'sweep-generator'")
    assert client.get_model_version_by_alias("sweep-generator", "best").version == version.version
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert (model.name, model.source_run_id) == ("generator_best", best["run_id"])
    # The sweep's page: its best generator among its models, the stability map in its images, a description.
    assert [o.model_id for o in parent.outputs.model_outputs] == [model.model_id]
    images = [f.path for f in client.list_artifacts(outcome.parent_run_id, "images")]
    assert sum(p.startswith("images/stability_map+step+0+") and p.endswith(".png") for p in images) == 1, images
    assert [(i.dataset.name, i.dataset.digest) for i in parent.inputs.dataset_inputs] == \
        [(i.dataset.name, i.dataset.digest) for i in by_id[best["run_id"]].inputs.dataset_inputs][:1]
    assert parent.inputs.dataset_inputs[0].dataset.name == "mnist5k"
    what, how = parent.data.tags["mlflow.note.content"].splitlines()
    assert what.startswith("Sweep of ") and " 3 trials over optim.g.lr, optim.lr_ratio (asha)" in what, what
    assert f"best fid {best['metric']:.4g} at step {best['step']}" in how, how
    exported = yaml.safe_load(export.read_text())
    artifact = Path(client.download_artifacts(outcome.parent_run_id, sweep.BEST_JOB_ARTIFACT, str(tmp_path)))
    assert yaml.safe_load(artifact.read_text()) == exported
    assert "tune" not in exported or exported["tune"] is None
    assert exported["optim"]["g"]["lr"] == pytest.approx(best["params"]["optim.g.lr"])
    assert parse(exported).optim.d.lr == pytest.approx(best["params"]["optim.g.lr"] * best["params"]["optim.lr_ratio"])


def test_unstable_trial_is_stopped_and_marked_while_the_sweep_finishes(ray_session, mlflow_store, tmp_path, capsys):
    """A grid with one trial whose D learns 50x faster than G (and one 200x slower): the fast one stops on d_overpowering (the default
    stop_on of trials) and is recorded as unstable, on the stability map too; the others run to the end."""
    from orchestrator.cli import run_sweep

    spec = load(REPO / "jobs/debug_dcgan.yaml", [
        "resources.num_workers=1", "resources.cpus_per_worker=0.5", "train.steps=6", "train.batch_size=8",
        "tracking.checkpoint_every=2", "tracking.metrics_every=1", "train.stability_window=2",
        f"tracking.storage_path={tmp_path / 'ray'}",
        "tune={metric: loss_g, space: {optim.d.lr: {grid: [1.0e-2, 1.0e-6]}}, "
        "num_samples: 1, max_concurrent_trials: 2, scheduler: none}"])
    assert run_sweep(spec, None) == 0
    out, err = capsys.readouterr()
    # Ray's own output stays in its log files, as with ganorch run: no Tune banner, no raylet warnings.
    for noise in ("View detailed results here", "To visualize your results with TensorBoard", "tensorboard --logdir",
                  "PYTHON worker processes have been started"):
        assert noise not in out + err, noise
    client = store.client(mlflow_store)
    (parent,) = client.search_runs([client.get_experiment_by_name("debug_dcgan").experiment_id],
                                   filter_string=f"tags.{TAG_SWEEP} LIKE '%'")
    rows = (Path(client.download_artifacts(parent.info.run_id, "stability_map.csv", str(tmp_path)))
            .read_text().splitlines())
    assert rows[0] == "trial,run_id,lr_g,lr_d,n_critic,status,reason,step,loss_g,optim.d.lr"
    by_lr = {float(r.split(",")[3]): r.split(",") for r in rows[1:]}
    assert set(by_lr) == {1.0e-2, 1.0e-6}
    unstable, stable = by_lr[1.0e-2], by_lr[1.0e-6]
    assert stable[5] == "TERMINATED" and stable[6] == "" and stable[7] == "6"
    assert unstable[5] == "UNSTABLE" and unstable[6].startswith("d_overpowering at step ")
    assert "UNSTABLE" in out and "d_overpowering at step" in out
    # the live lines (not a terminal here): one per trial event, with its step, metric and parameters
    assert re.search(r": trial \w+ RUNNING step 2 loss_g [0-9.]+  optim.d.lr=1e-06", out)
    assert re.search(r": trial \w+ DONE step 6 loss_g [0-9.]+  optim.d.lr=1e-06", out)
    child = client.get_run(unstable[1])
    assert child.info.status == "FINISHED"
    assert child.data.tags[TAG_OUTCOME] == f"stopped: {unstable[6]}"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"stability_map.png", "stability_map.csv"}


def test_a_retried_trial_continues_from_its_checkpoint_in_the_same_child_run(ray_session, mlflow_store, tmp_path):
    """A trial whose worker fails once at step 4, after step 2's checkpoint and step 3's metrics: Tune retries it
    (tune.max_failures 1) from step 2, in the same child run, which logs every step once."""
    import os

    from user_networks import FailsOnceAtStep4

    marker = Path(os.environ["GANORCH_HOME"], FailsOnceAtStep4.MARKER)
    marker.touch()
    spec = load(REPO / "jobs/debug_dcgan.yaml", [
        "resources.num_workers=1", "resources.cpus_per_worker=0.5", "train.steps=4", "train.batch_size=8",
        "train.n_critic=1", "model.discriminator=user_networks:FailsOnceAtStep4", "tracking.checkpoint_every=2",
        "tracking.metrics_every=1", f"tracking.storage_path={tmp_path / 'ray'}",
        "tune={metric: loss_g, space: {optim.g.lr: {choice: [2.0e-4]}}, num_samples: 1, scheduler: none}"])
    outcome = sweep.run(spec, show_progress=False)

    assert not marker.exists(), "the worker did not fail"
    (trial,) = outcome.trials
    assert (trial["status"], trial["step"]) == ("TERMINATED", 4), trial
    client = store.client(mlflow_store)
    (child,) = client.search_runs([client.get_run(outcome.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    assert child.info.run_id == trial["run_id"]
    assert (child.info.status, child.data.tags[TAG_OUTCOME]) == ("FINISHED", "completed")
    tags = child.data.tags
    assert tags[TAG_RESTARTS] == "1" and tags[TAG_RESTART + "1"].startswith("its own checkpoint at step 2;"), tags
    assert tags[TAG_RESUMED_FROM].startswith("step 2: "), tags
    for key in ("loss_d", "loss_g", "images_seen"):
        assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [1, 2, 3, 4], key
    assert [m.value for m in client.get_metric_history(child.info.run_id, "images_seen")] == [8, 16, 24, 32]


def test_optuna_searcher_suggests_valid_trial_specs():
    pytest.importorskip("optuna")
    spec = parse({"name": "t", "eval": {"every": 10}, "tracking": {"checkpoint_every": 10},
                  "tune": {"searcher": "optuna", "space": {"optim.g.lr": {"loguniform": [1.0e-5, 1.0e-3]},
                                                           "optim.lr_ratio": {"choice": [1, 4]}}}})
    searcher = schedulers.search_algorithm(spec)
    searcher.set_search_properties(spec.tune.metric, spec.tune.mode, schedulers.param_space(spec))
    for trial in ("a", "b", "c"):
        config = searcher.suggest(trial)
        trial_spec = sweep.trial_spec(spec.to_dict(), config, list(spec.tune.space))
        assert 1.0e-5 <= trial_spec.optim.g.lr <= 1.0e-3
        assert trial_spec.optim.d.lr / trial_spec.optim.g.lr in (pytest.approx(1), pytest.approx(4))
    with pytest.raises(Exception, match="chooses among numbers and strings only"):
        parse({"name": "t", "eval": {"every": 10}, "tracking": {"checkpoint_every": 10},
               "tune": {"searcher": "optuna", "space": {"optim.g.betas": {"choice": [[0.5, 0.9], [0.0, 0.9]]}}}})


def test_pbt_exploit_continues_from_the_donors_checkpoint_with_new_learning_rates(
        ray_session, mlflow_store, tmp_path, process_group):
    """Synchronous PBT over two trials: at step 2 both pause; the worse clones the better's checkpoint under
    perturbed rates, the better resumes its own. Replaying the clone here, from the donor's step-2 checkpoint
    under the recipient's new spec, gives the recipient's step-4 networks."""
    import torch

    from orchestrator.train.checkpoint import load as load_checkpoint
    from orchestrator.train.loop import WorkerContext, train

    spec = load(REPO / "jobs/debug_dcgan.yaml", [
        "resources.num_workers=1", "resources.cpus_per_worker=0.5", "train.steps=4", "train.batch_size=8",
        "tracking.checkpoint_every=2", "tracking.metrics_every=2", f"tracking.storage_path={tmp_path / 'ray'}",
        "tune={metric: loss_g, space: {optim.g.lr: {loguniform: [1.0e-4, 1.0e-3]}, "
        "optim.d.lr: {loguniform: [1.0e-4, 1.0e-3]}}, num_samples: 2, max_concurrent_trials: 2, scheduler: pbt, "
        "perturbation_interval: 2, quantile_fraction: 0.5, synchronous: true}"])
    outcome = sweep.run(spec, show_progress=False)

    client = store.client(mlflow_store)
    children = {c.data.tags[TAG_TRIAL]: c for c in client.search_runs(
        [client.get_run(outcome.parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")}
    assert len(children) == 2 and {c.info.status for c in children.values()} == {"FINISHED"}
    restarts = {trial: child.data.tags.get(TAG_RESTART + "1", "") for trial, child in children.items()}
    (recipient,) = [trial for trial, text in restarts.items() if "cloned trial" in text]
    (donor,) = set(children) - {recipient}
    assert restarts[donor].startswith("its own checkpoint at step 2;")
    cloned = re.match(r"cloned trial (\w+) \(run (\w+)\) at step (\d+): (.+?); ", restarts[recipient])
    assert cloned.groups()[:3] == (donor, children[donor].info.run_id, "2")

    def artifact(run_id, path):
        return Path(client.download_artifacts(run_id, path, str(tmp_path / run_id)))

    recipient_id, donor_id = children[recipient].info.run_id, children[donor].info.run_id
    new_spec = parse(yaml.safe_load(artifact(recipient_id, "restarts/1/spec.yaml").read_text()))
    donor_spec = parse(yaml.safe_load(artifact(donor_id, "spec.yaml").read_text()))
    assert (new_spec.optim.g.lr, new_spec.optim.d.lr) != (donor_spec.optim.g.lr, donor_spec.optim.d.lr)
    for key, lr in (("lr_g", new_spec.optim.g.lr), ("lr_d", new_spec.optim.d.lr)):
        history = client.get_metric_history(recipient_id, key)
        assert [m.step for m in history] == [2, 4] and history[1].value == pytest.approx(lr)

    donor_state = load_checkpoint(cloned.group(4))
    assert donor_state["step"] == 2
    recipient_final = load_checkpoint(artifact(recipient_id, children[recipient].data.tags[TAG_CHECKPOINT]))
    donor_final = load_checkpoint(artifact(donor_id, children[donor].data.tags[TAG_CHECKPOINT]))
    assert recipient_final["step"] == donor_final["step"] == 4
    replayed = {}
    train(new_spec, WorkerContext(device=torch.device("cpu"), resume=donor_state),
          report=lambda metrics, checkpoint=None: replayed.update(load_checkpoint(checkpoint.path)))
    assert replayed["step"] == 4
    for net in ("generator", "generator_ema", "discriminator"):
        for name, value in recipient_final[net].items():
            assert torch.allclose(value.float(), replayed[net][name].float(), rtol=1e-4, atol=1e-6), (net, name)
    assert any(not torch.allclose(value.float(), donor_final["generator"][name].float(), rtol=1e-4, atol=1e-6)
               for name, value in recipient_final["generator"].items()), "the new rates took it elsewhere"
    assert {t["trial"]: t["status"] for t in outcome.trials} == {recipient: "TERMINATED", donor: "TERMINATED"}
