"""Every shipped job spec validates, docs/spec.md documents every spec key, and CI runs README's test command."""

import dataclasses
import re
from pathlib import Path

import pytest

from orchestrator.spec import field_reference, load

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted((REPO / "jobs").glob("*.yaml"))


DEBUG_JOBS = [p for p in JOBS if p.name.startswith("debug_")]


def test_jobs_exist():
    assert {p.name for p in JOBS} >= {"quickstart.yaml", "debug_dcgan.yaml", "debug_resnet.yaml"}


def test_every_model_family_has_a_debug_job():
    from gan_models import FAMILIES

    assert {load(p).model.family for p in DEBUG_JOBS} == set(FAMILIES)


@pytest.mark.parametrize("path", DEBUG_JOBS, ids=[p.name for p in DEBUG_JOBS])
def test_debug_job_trains(path, process_group):
    """Each debug job's networks, loss and data train a few steps in this process (one worker)."""
    import torch

    from orchestrator.train.loop import WorkerContext, train

    spec = load(path, ["resources.num_workers=1"])
    summary = train(spec, WorkerContext(device=torch.device("cpu")))
    assert summary["step"] == spec.train.steps
    assert all(v == v for v in summary["metrics"].values()), "no NaN"


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_job_validates(path):
    spec = load(path)
    assert spec.name == path.stem


def test_quickstart_is_two_cpu_workers():
    spec = load(REPO / "jobs/quickstart.yaml")
    assert spec.resources.num_workers == 2 and not spec.resources.use_gpu


def test_spec_reference_is_generated_from_the_code_and_up_to_date():
    from orchestrator.spec.reference import markdown

    assert (REPO / "docs/spec.md").read_text() == markdown(), \
        "docs/spec.md is out of date: run `python docs/generate_spec.py` and commit it"
    reference = (REPO / "docs/spec.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z0-9_.]+)` \|.*$", reference, re.M)}
    for key, type_, default, meaning in field_reference():
        assert key in rows, f"docs/spec.md lacks {key}"
        assert f"`{default}`" in rows[key] and meaning.replace("|", "/") in rows[key], key


def test_ci_runs_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.*?)```", readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0], re.S)
    assert len(commands) == 2, "Quickstart holds exactly two commands"
    test_command = commands[1].strip()
    assert all(step in test_command for step in ("pytest", "ruff check", "lint-imports"))
    assert test_command in (REPO / ".ci/run").read_text()


def test_the_sweep_that_chose_the_quickstart_differs_from_it_only_in_the_keys_it_searched():
    """The quickstart is one of its trials: the quickstart's values of the searched keys are in the sweep's grid, and
    at them every setting of the model, data, training, optimizers and evaluation is the quickstart's (the sweep runs
    one worker a trial where the quickstart runs two)."""
    from orchestrator.spec import parse, search_space

    quickstart, sweep = load(REPO / "jobs/quickstart.yaml"), load(REPO / "jobs/tune_quickstart_conditional.yaml")
    plain = quickstart.to_dict()

    def value(key: str):
        node = plain
        for part in key.split("."):
            node = node[part]
        return node

    for key, dimension in sweep.tune.space.items():
        assert value(key) in dimension["grid"], (key, value(key), dimension)
    best = parse(search_space.apply(sweep.to_dict(), {key: value(key) for key in sweep.tune.space}))
    for section in ("seed", "model", "data", "train", "optim", "eval"):
        assert getattr(best, section) == getattr(quickstart, section), section


def test_the_few_labels_job_is_the_quickstart_on_50_labelled_digits_a_class():
    """README's few-labels table trains the quickstart's GAN on K per class: only what K needs differs."""
    quickstart, few = load(REPO / "jobs/quickstart.yaml"), load(REPO / "jobs/few_labels.yaml")
    assert (few.data.labels_per_class, quickstart.data.labels_per_class) == (50, None)
    for section in ("seed", "model", "train", "optim", "resources", "tracking", "eval"):
        assert getattr(few, section) == getattr(quickstart, section), section
    assert dataclasses.replace(few.data, labels_per_class=None) == quickstart.data
