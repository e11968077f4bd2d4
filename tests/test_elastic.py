"""Elastic worker groups: resources.num_workers as a range, and the same training at any number of workers."""

import os
from pathlib import Path

import pytest
import torch

from orchestrator.spec import SpecError, load
from orchestrator.track import store
from orchestrator.train import launch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("given", ["[1, 2]", "{min: 1, max: 2}"])
def test_a_range_of_workers_makes_an_elastic_group(given):
    from orchestrator.train.trainer import resources_line, scaling

    spec = load(REPO / "jobs/debug_dcgan.yaml", [f"resources.num_workers={given}", "resources.resize_check_s=5"])
    r = spec.resources
    assert r.elastic and (r.min_workers, r.max_workers) == (1, 2) and list(r.sizes) == [1, 2]
    config = scaling(spec)["scaling_config"]
    assert config.num_workers == (1, 2) and config.elastic_resize_monitor_interval_s == 5
    assert "an elastic group of 1 to 2 worker(s)" in resources_line(spec)
    assert "per worker: 16 on 1, 8 on 2" in resources_line(spec)
    assert spec.to_dict()["resources"]["num_workers"] == {"min": 1, "max": 2}  # as the run's params record it
    uneven = load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=[1, 3]"])  # shares of 6, 5 and 5 on 3
    assert "per worker: 16 on 1, 6 or 5 on 3" in resources_line(uneven)
    fixed = load(REPO / "jobs/debug_dcgan.yaml")
    assert not fixed.resources.elastic and scaling(fixed)["scaling_config"].num_workers == 2


@pytest.mark.parametrize("overrides, expected", [
    (["resources.num_workers={min: 3, max: 2}"], "resources.num_workers.min: got 3; must be at most max (2)"),
    (["resources.num_workers=[1, 2, 4]"], "resources.num_workers: got [1, 2, 4] (list); expected an integer or a "
                                          "mapping {min, max} or a list [min, max]"),
    (["resources.num_workers=abc"], "resources.num_workers: got 'abc' (str); expected an integer or a mapping "
                                    "{min, max} or a list [min, max]"),
    (["resources.num_workers=[0, 2]"], "resources.num_workers.min: got 0; must be >= 1"),
    (["resources.num_workers=[1, 32]"], "train.batch_size: got 16; must be at least the most workers in "
                                        "resources.num_workers (32), so every worker gets a share"),
    (["resources.num_workers=3"], "train.batch_size: got 16; must be a multiple of resources.num_workers (3)"),
    (["resources.resize_check_s=5"], "resources.resize_check_s: is not used with a fixed resources.num_workers"),
    (["resources.num_workers=[1, 2]", "tune={space: {optim.g.lr: {loguniform: [1e-4, 1e-3]}}}"],
     "resources.num_workers: is a range, and a sweep's trials share the cluster at a fixed size each"),
])
def test_a_range_that_cannot_work_is_refused_naming_its_key(overrides, expected):
    with pytest.raises(SpecError) as err:
        load(REPO / "jobs/debug_dcgan.yaml", overrides)
    assert expected in str(err.value), str(err.value)


def test_the_terminal_says_why_the_workers_restarted_and_at_what_size():
    from orchestrator.track.progress import restart_line
    from orchestrator.train.loop import Restart

    assert Restart("rank 1 was lost (x)", 2, 1).why() == "after a failure (rank 1 was lost (x))"
    assert Restart(None, 1, 2).why() == "to grow the elastic group, as the cluster had room"
    assert Restart(None, 2, 1).why() == "to shrink the elastic group, as the cluster had less room"
    assert not Restart("rank 0 raised ValueError: x", 2, 2).resized

    assert restart_line(1, "rank 1 was lost (its process died)", 2, 1) == (
        "workers restarted from the latest checkpoint after a failure (restart 1); now on 1 worker (was 2); the "
        "run's tags say why")
    assert restart_line(2, None, 1, 2) == ("the elastic group grew as the cluster got room: now on 2 workers (was "
                                           "1), restarted from the latest checkpoint (restart 2)")
    assert restart_line(3, None, 2, 1) == ("the elastic group shrank as the cluster had less room: now on 1 worker "
                                           "(was 2), restarted from the latest checkpoint (restart 3)")
    assert restart_line(1, "rank 0 raised ValueError: x", 2, 2) == (
        "workers restarted from the latest checkpoint after a failure (restart 1); the run's tags say why")


def test_a_run_that_goes_from_2_to_1_to_2_workers_ends_as_one_that_did_not(ray_session, mlflow_store, tmp_path):
    """Three starts of one Ray Train run on 2, then 1, then 2 workers, each continuing from the checkpoint of the
    one before (what a resize does), end with the parameters, optimizer state and G_ema of an uninterrupted run on
    2 workers, up to float rounding; the MLflow run holds one metric point per step, and num_workers says the size
    at each."""
    common = [f"tracking.storage_path={tmp_path / 'ray_storage'}", "tracking.metrics_every=1",
              "tracking.checkpoint_every=3", "tracking.samples_every=1000", "eval.every=0", "model.g_norm=none",
              "model.d_norm=none", "tracking.system_metrics_every_s=0"]  # no batch-dependent layers
    spec = lambda workers, steps: load(REPO / "jobs/debug_dcgan.yaml",  # noqa: E731
                                       [*common, f"resources.num_workers={workers}", f"train.steps={steps}"])
    reference = launch.run(spec(2, 9), run_name="reference", show_progress=False)
    for workers, steps in ((2, 3), (1, 6), (2, 9)):
        resized = launch.run(spec(workers, steps), run_name="resized", show_progress=False)
    assert resized.summary["step"] == 9 and resized.run_id != reference.run_id

    from orchestrator.train import checkpoint

    ours, theirs = checkpoint.load(resized.checkpoint_path), checkpoint.load(reference.checkpoint_path)
    assert ours["step"] == theirs["step"] == 9 and ours["images_seen"] == theirs["images_seen"]
    for part in ("generator", "generator_ema", "discriminator"):
        for name, tensor in theirs[part].items():
            torch.testing.assert_close(ours[part][name], tensor, rtol=1e-4, atol=1e-5, msg=f"{part}.{name}")
    for part in ("optimizer_g", "optimizer_d"):
        for index, state in theirs[part]["state"].items():
            for name, tensor in state.items():
                torch.testing.assert_close(ours[part]["state"][index][name], tensor, rtol=1e-4, atol=1e-6,
                                           msg=f"{part}[{index}].{name}")
    assert ours["loop"]["data_position"] == theirs["loop"]["data_position"]

    c = store.client(mlflow_store)
    for key in ("loss_d", "loss_g", "images_per_sec"):
        assert [m.step for m in c.get_metric_history(resized.run_id, key)] == list(range(1, 10)), key
    assert [(m.step, m.value) for m in c.get_metric_history(resized.run_id, "num_workers")] == \
        [(s, 2.0 if s <= 3 or s > 6 else 1.0) for s in range(1, 10)]


def test_the_start_timeout_is_among_what_ray_train_passes_its_controller_for_that_fit_alone(monkeypatch):
    """resources.start_timeout_s is Ray Train's worker-group start timeout, which its controller takes from the
    environment of the process that fits (Ray passes it on): set for the fit, and put back after it. (The cluster
    test's job sets it too; its controller logged "timed out after 20.0 seconds" where the lost node was counted.)"""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    from orchestrator.train.trainer import START_TIMEOUT_ENV, ray_train_settings

    monkeypatch.delenv(START_TIMEOUT_ENV, raising=False)
    with ray_train_settings(load(REPO / "jobs/debug_dcgan.yaml", ["resources.start_timeout_s=20"])):
        assert get_env_vars_to_propagate()[START_TIMEOUT_ENV] == "20"
    assert START_TIMEOUT_ENV not in os.environ
    monkeypatch.setenv(START_TIMEOUT_ENV, "90")  # the user's own, which a spec without the key keeps
    with ray_train_settings(load(REPO / "jobs/debug_dcgan.yaml")):
        assert os.environ[START_TIMEOUT_ENV] == "90"
    with ray_train_settings(load(REPO / "jobs/debug_dcgan.yaml", ["resources.start_timeout_s=30.5"])):
        assert os.environ[START_TIMEOUT_ENV] == "30.5"
    assert os.environ[START_TIMEOUT_ENV] == "90"
