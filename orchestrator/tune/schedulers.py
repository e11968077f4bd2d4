"""The sweep's search, for Ray Tune: the tune.space as Tune's param space, the searcher, and the schedulers (ASHA on
the training step; PBT that keeps perturbed values in range), and how many trials fit on the cluster at once."""

import math
from typing import Any

from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from orchestrator.spec import JobSpec, search_space
from orchestrator.spec.job import EvalResourcesSpec

# The trial driver's reservation: Tune needs a non-empty one, the workers reserve their own.
DRIVER_CPUS = 0.01


def concurrent_trials(spec: JobSpec, cpus: float, gpus: float) -> int:
    """How many trials fit at once on a cluster with `cpus` and `gpus`, within tune.max_concurrent_trials: each
    takes its workers and, with eval.background, its evaluator."""
    r, evaluator = spec.resources, spec.eval.resources if spec.eval.background else EvalResourcesSpec(0, 0)
    fits = math.floor(cpus / (r.max_workers * r.cpus_per_worker + DRIVER_CPUS + evaluator.cpus) + 1e-9)
    trial_gpus = (r.max_workers * r.gpus_per_worker if r.use_gpu else 0) + evaluator.gpus
    if trial_gpus:
        fits = min(fits, math.floor(gpus / trial_gpus + 1e-9))
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
