"""Malformed specs: every problem reported at once, each naming its dotted key, the value and what is allowed."""

import textwrap

import pytest

from orchestrator.spec import SpecError, load, parse

VALID = {"name": "t", "train": {"batch_size": 8}, "resources": {"num_workers": 2}}


def spec_with(section: str, key: str, value):
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in VALID.items()}
    if section:
        data.setdefault(section, {})[key] = value
    else:
        data[key] = value
    return data


# (section, key, value, fragments every one of which the message must hold)
CASES = [
    ("train", "n_critc", 2, ["train.n_critc", "unknown key", "did you mean 'n_critic'"]),
    ("", "trian", {}, ["trian", "unknown key", "did you mean 'train'"]),
    ("model", "familly", "dcgan", ["model.familly", "did you mean 'family'"]),
    ("train", "batch_size", "sixty", ["train.batch_size", "'sixty' (str)", "expected an integer"]),
    ("train", "batch_size", 12.5, ["train.batch_size", "12.5 (float)", "expected an integer"]),
    ("train", "steps", 0, ["train.steps", "got 0", "must be >= 1"]),
    ("train", "n_critic", -1, ["train.n_critic", "got -1", "must be >= 1"]),
    ("train", "loss", "hinge-ish", ["train.loss", "'hinge-ish'", "allowed: 'nonsaturating'"]),
    ("model", "image_size", 30, ["model.image_size", "got 30", "allowed: 28, 32, 64"]),
    ("model", "family", "dcgna", ["model.family", "'dcgna'", "did you mean 'dcgan'"]),
    ("model", "latent_dim", 0, ["model.latent_dim", "must be >= 1"]),
    ("model", "channels", 3, ["model.channels", "got 3", "'mnist5k' has 1 channel"]),
    ("resources", "use_gpu", "yes", ["resources.use_gpu", "'yes' (str)", "expected true or false"]),
    ("resources", "num_workers", 0, ["resources.num_workers", "must be >= 1"]),
    ("resources", "num_workers", 3, ["train.batch_size", "multiple of resources.num_workers (3)"]),
    ("resources", "cpus_per_worker", -1, ["resources.cpus_per_worker", "must be > 0"]),
    ("data", "source", "imagenet", ["data.source", "'imagenet'", "allowed: 'mnist5k', 'digits', 'folder', 'torchvision', 'ray-data'"]),
    ("data", "source", "folder", ["data.path", "missing; data.source 'folder' reads from a directory"]),
    ("data", "source", "ray-data", ["data.path", "missing; data.source 'ray-data' reads from a directory"]),
    ("data", "source", "raydata", ["data.source", "did you mean 'ray-data'"]),
    ("data", "download", "yes", ["data.download", "expected true or false"]),
    ("data", "path", "/data/imgs", ["data.path", "is not used with data.source 'mnist5k'"]),
    ("data", "dataset", "MNIST", ["data.dataset", "is not used with data.source 'mnist5k'"]),
    ("tracking", "metrics_every", 0, ["tracking.metrics_every", "must be >= 1"]),
    ("tracking", "num_samples", 5000, ["tracking.num_samples", "must be <= 1024"]),
    ("optim", "g", {"lr": -0.1}, ["optim.g.lr", "got -0.1", "must be > 0"]),
    ("optim", "d", {"lr": "fast"}, ["optim.d.lr", "'fast' (str)", "expected a number"]),
    ("optim", "g", {"betas": [0.5]}, ["optim.g.betas", "expected a list of 2 numbers"]),
    ("optim", "d", {"betas": [0.5, 1.0]}, ["optim.d.betas[1]", "got 1.0", "must be in [0, 1)"]),
    ("", "model", [1, 2], ["model", "expected a mapping"]),
    ("train", "loss", "wgan", ["train.loss", "'wgan'", "did you mean 'wgan-gp'"]),
    ("model", "d_norm", "spectrum", ["model.d_norm", "did you mean 'spectral'"]),
    ("train", "r1_every", 0, ["train.r1_every", "must be >= 1"]),
    ("train", "r1_gamma", -1, ["train.r1_gamma", "must be >= 0"]),
    ("train", "n_critic", 0, ["train.n_critic", "must be >= 1"]),
    ("train", "ema_decay", 1.0, ["train.ema_decay", "got 1.0; must be < 1"]),
    ("train", "ema_rampup", "on", ["train.ema_rampup", "expected true or false"]),
    ("", "seed", "abc", ["seed", "expected an integer"]),
    ("eval", "inception", False, ["eval.inception", "got False (bool)", "quote the word"]),
    ("train", "stop_on", "diverged", ["train.stop_on", "expected a list, each one of 'diverged'"]),
    ("train", "stop_on", ["diverged", "colapse"], ["train.stop_on[1]", "got 'colapse'"]),
    ("train", "stop_on", ["mode_collapse"], ["train.stop_on", "set eval.every > 0"]),
    ("train", "stability_window", 0, ["train.stability_window", "must be >= 1"]),
    ("train", "augment", {"policy": ["colour"]}, ["train.augment.policy[0]", "did you mean 'color'"]),
    ("train", "augment", {"policy": ["cutout", "cutout"]}, ["train.augment.policy", "'cutout' more than once"]),
    ("train", "augment", {"p": 0.5}, ["train.augment.p", "is not used with train.augment.policy empty"]),
    ("train", "augment", {"policy": ["color"], "target": 1.0}, ["train.augment.target", "must be < 1"]),
    ("train", "augment", {"policy": ["color"], "cutout": 0.3}, ["train.augment.cutout", "without 'cutout'"]),
    ("train", "augment", {"policy": ["color"], "images_to_full": 10}, ["train.augment.images_to_full",
                                                                      "train.augment.target null"]),
    ("train", "augment", {"policy": ["color"], "target": 0.6, "p": 1.5}, ["train.augment.p", "must be <= 1"]),
    ("train", "condition_ramp", [0, 500], ["train.condition_ramp", "is not used with model.conditional false"]),
    ("train", "condition_ramp", [500], ["train.condition_ramp", "expected a list of 2 items: an integer, an integer"]),
    ("train", "condition_ramp", [-1, 500], ["train.condition_ramp[0]", "must be >= 0"]),
]


@pytest.mark.parametrize("section,key,value,fragments", CASES, ids=[f"{c[0]}.{c[1]}={c[2]!r}" for c in CASES])
def test_malformed_spec_is_reported_with_its_key(section, key, value, fragments):
    with pytest.raises(SpecError) as info:
        parse(spec_with(section, key, value), "job.yaml")
    assert len(info.value.problems) == 1, info.value.problems
    for fragment in fragments:
        assert fragment in info.value.problems[0], (fragment, info.value.problems[0])


def test_adaptive_augmentation_needs_a_threshold_and_checkpoints_at_metrics_steps():
    with pytest.raises(SpecError) as info:
        parse({"name": "t", "model": {"d_norm": "none"}, "tracking": {"metrics_every": 50, "checkpoint_every": 120},
               "train": {"loss": "wgan-gp", "augment": {"policy": ["translation"], "target": 0.6}}})
    problems = dict(p.split(": ", 1) for p in info.value.problems)
    assert sorted(problems) == ["tracking.checkpoint_every", "train.augment.target"]
    assert "a multiple of tracking.metrics_every, 50" in problems["tracking.checkpoint_every"]
    assert "use a fixed train.augment.p" in problems["train.augment.target"]
    fixed = parse({"name": "t", "tracking": {"metrics_every": 50, "checkpoint_every": 120},
                   "train": {"augment": {"policy": ["translation"], "p": 0.3}}})
    assert fixed.train.augment.start_p == 0.3
    adaptive = parse({"name": "t", "train": {"augment": {"policy": ["color"], "target": 0.6}}})
    assert adaptive.train.augment.start_p == 0.0


def test_all_problems_are_reported_together():
    data = {"name": "t", "train": {"n_critc": 2, "steps": -5, "batch_size": "x"},
            "model": {"image_size": 30}, "optim": {"g": {"lr": 0}}, "bogus": True}
    with pytest.raises(SpecError) as info:
        parse(data, "job.yaml")
    keys = sorted(p.split(":")[0] for p in info.value.problems)
    assert keys == ["bogus", "model.image_size", "optim.g.lr", "train.batch_size", "train.n_critc", "train.steps"]
    assert str(info.value).startswith("job.yaml: 6 problems:")


def test_cross_field_rule_is_skipped_when_its_keys_already_failed():
    """A bad batch_size is reported once, as a type error, not again as 'not a multiple of num_workers'."""
    with pytest.raises(SpecError) as info:
        parse({"name": "t", "train": {"batch_size": "x"}, "resources": {"num_workers": 3}})
    assert len(info.value.problems) == 1 and "expected an integer" in info.value.problems[0]


def test_valid_spec_resolves_defaults_and_accepts_yaml_float_strings():
    spec = parse({"name": "t", "optim": {"g": {"lr": "2e-4"}}})  # PyYAML reads 2e-4 as a string
    assert spec.optim.g.lr == pytest.approx(2e-4)
    assert spec.train.n_critic == 1 and spec.experiment == "t" and spec.batch_share(0, 1) == 64


@pytest.mark.parametrize("content,fragment", [
    (None, "no such file"),
    ("", "file is empty"),
    ("   \n# only a comment\n", "holds no settings"),
    ("---\n...\n", "holds no settings"),
    ("model: [1, 2\n", "not valid YAML at line"),
    ("train:\n  steps: 1\n    bad: indent\n", "not valid YAML at line 3"),
    ("- a\n- b\n", "top level is a list"),
    ("just a string\n", "top level is a str"),
])
def test_bad_files(tmp_path, content, fragment):
    path = tmp_path / "job.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SpecError) as info:
        load(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(SpecError, match="is a directory"):
        load(tmp_path)


def test_name_defaults_to_file_stem(tmp_path):
    path = tmp_path / "my_job.yaml"
    path.write_text("seed: 3\n")
    assert load(path).name == "my_job"


def test_overrides_apply_and_are_validated(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent("""
        name: t
        train: {steps: 10, batch_size: 8}
    """))
    spec = load(path, ["train.steps=3", "optim.d.lr=1e-3", "tracking.experiment=exp"])
    assert (spec.train.steps, spec.optim.d.lr, spec.experiment) == (3, 1e-3, "exp")
    with pytest.raises(SpecError) as info:
        load(path, ["train.stpes=3", "novalue", "train.steps.deeper=1"])
    text = str(info.value)
    assert "expected KEY=VALUE" in text
    assert "train.steps is not a section" in text
    assert "train.stpes: unknown key; did you mean 'steps'" in text


def test_wgan_gp_refuses_a_batchnorm_critic_and_defaults_to_five_critic_steps():
    with pytest.raises(SpecError) as info:
        parse({"name": "t", "train": {"loss": "wgan-gp"}})
    assert info.value.problems == [
        "model.d_norm: got 'batch'; train.loss 'wgan-gp' penalises each image's gradient, which BatchNorm couples "
        "across the batch: use 'none' or 'spectral'"]
    spec = parse({"name": "t", "train": {"loss": "wgan-gp"}, "model": {"d_norm": "spectral"}})
    assert spec.train.n_critic == 5
    assert parse({"name": "t", "train": {"loss": "wgan-gp", "n_critic": 2}, "model": {"d_norm": "none"}}).train.n_critic == 2
    assert parse({"name": "t", "train": {"loss": "hinge"}}).train.n_critic == 1


def test_torchvision_source_needs_a_known_dataset():
    with pytest.raises(SpecError) as info:
        parse({"name": "t", "data": {"source": "torchvision", "path": "/data", "dataset": "cifar10"}})
    assert info.value.problems == ["data.dataset: got 'cifar10'; allowed: MNIST, FashionMNIST, KMNIST, CIFAR10, "
                                   "CIFAR100, SVHN; did you mean 'CIFAR10'?"]
    spec = parse({"name": "t", "model": {"channels": 3}, "data": {"source": "folder", "path": "/imgs"}})
    assert spec.data.path == "/imgs", "folder images are converted to model.channels"


@pytest.mark.parametrize("source", ["folder", "torchvision"])
def test_a_uri_needs_the_ray_data_source(source):
    data = {"name": "t", "data": {"source": source, "path": "s3://bucket/images", "dataset": "MNIST"}}
    if source == "folder":
        del data["data"]["dataset"]
    with pytest.raises(SpecError) as info:
        parse(data)
    assert info.value.problems == [f"data.path: got 's3://bucket/images'; data.source {source!r} reads a local "
                                   "directory: use data.source 'ray-data' for s3:// and gs:// URIs"]
    assert parse({"name": "t", "data": {"source": "ray-data", "path": "gs://bucket/images"}}).data.path == \
        "gs://bucket/images"


def test_inception_weights_are_refused_with_inception_off():
    with pytest.raises(SpecError, match="eval.inception_weights: is not used with eval.inception 'off'"):
        parse({"name": "t", "eval": {"inception": "off", "inception_weights": "w.pth"}})
    assert parse({"name": "t", "eval": {"inception_weights": "w.pth"}}).eval.inception == "auto"


TUNE_BASE = {"name": "t", "eval": {"every": 10}, "tracking": {"checkpoint_every": 10}}
LR = {"optim.g.lr": {"loguniform": [1.0e-5, 1.0e-3]}}
TUNE_CASES = [
    ({"space": {}}, "tune.space: is empty"),
    ({"space": {"optim.g.lr": {"loguniform": [0, 1.0e-3]}}}, "tune.space.optim.g.lr: loguniform: got low 0"),
    ({"space": {"optim.g.lr": {"uniform": [1.0e-3, 1.0e-5]}}}, "low must be below high"),
    ({"space": {"optim.g.lr": {"loguniform": [1.0e-5, 2.0]}}}, "loguniform value 2.0: optim.g.lr: got 2.0; must be <= 1"),
    ({"space": {"optim.g.lrr": {"choice": [1.0e-4]}}}, "tune.space.optim.g.lrr: unknown spec key"),
    ({"space": {"train.n_critic": {"choice": [0, 1]}}}, "choice value 0: train.n_critic: got 0; must be >= 1"),
    ({"space": {"optim.g.lr": [1, 2]}}, "expected one of {loguniform: [...]}"),
    ({"space": {"optim.lr_ratio": {"choice": [1]}, "optim.d.lr": {"choice": [1.0e-4]}}}, "do not search optim.d.lr as well"),
    ({"space": {"optim.lr_ratio": {"choice": [0, 1]}}}, "ratios must be numbers > 0"),
    ({"space": LR, "searcher": "grid"}, "tune.searcher: 'grid' enumerates values"),
    ({"space": {"optim.g.lr": {"grid": [1.0e-4]}}, "searcher": "optuna"}, "use choice instead of grid"),
    ({"space": LR, "metric": "fdi"}, "tune.metric: got 'fdi'; allowed: fid,"),
    ({"space": LR, "scheduler": "pbt", "searcher": "optuna"}, "tune.searcher: got 'optuna'; 'pbt' starts from random"),
    ({"space": {"optim.g.lr": {"grid": [1.0e-4, 2.0e-4]}}, "scheduler": "pbt"}, "tune.space.optim.g.lr: 'pbt' mutates"),
    ({"space": {"model.g_width": {"choice": [4, 8]}}, "scheduler": "pbt"}, "tune.space: 'pbt' perturbs optim.* keys"),
    ({"space": LR, "scheduler": "pbt", "perturbation_interval": 15},
     "tune.perturbation_interval: got 15; a trial can only be cloned at a checkpoint"),
    ({"space": LR, "scheduler": "pbt", "quantile_fraction": 0.75}, "tune.quantile_fraction: got 0.75; must be <= 0.5"),
]


@pytest.mark.parametrize("tune, fragment", TUNE_CASES, ids=[c[1][:40] for c in TUNE_CASES])
def test_tune_section_problems_name_their_key(tune, fragment):
    with pytest.raises(SpecError) as info:
        parse({**TUNE_BASE, "tune": tune})
    assert len(info.value.problems) == 1, info.value.problems
    assert fragment in info.value.problems[0]


def test_asynchronous_pbt_refuses_pruned_checkpoints():
    spec = {**TUNE_BASE, "tracking": {"checkpoint_every": 10, "keep_checkpoints": 2},
            "tune": {"space": LR, "scheduler": "pbt"}}
    with pytest.raises(SpecError) as info:
        parse(spec)
    assert info.value.problems == ["tracking.keep_checkpoints: got 2; asynchronous PBT clones a trial from another "
                                   "trial's checkpoint, which that trial's later checkpoints would delete meanwhile: "
                                   "leave it null, or set tune.synchronous: true"]
    assert parse({**spec, "tune": {**spec["tune"], "synchronous": True}}).tracking.keep_checkpoints == 2


def test_tune_eval_metric_needs_evaluation_at_every_checkpoint():
    with pytest.raises(SpecError, match="tune.metric: got 'fid', an eval metric: set eval.every > 0"):
        parse({"name": "t", "tune": {"space": LR}})
    with pytest.raises(SpecError, match="tracking.checkpoint_every: got 15; trials report fid at every checkpoint"):
        parse({"name": "t", "eval": {"every": 10}, "tracking": {"checkpoint_every": 15}, "tune": {"space": LR}})
    assert parse({"name": "t", "tune": {"space": LR, "metric": "loss_g"}}).tune.metric == "loss_g"


WGAN = {"train": {"loss": "wgan-gp"}, "model": {"d_norm": "none"}}
IGNORED_CASES = [
    ({"train": {"loss": "hinge", "gp_lambda": 5.0}},
     "train.gp_lambda: is not used with train.loss 'hinge'; remove it or set train.loss 'wgan-gp'"),
    ({"train": {"r1_every": 4}}, "train.r1_every: is not used with train.r1_gamma 0 (R1 off)"),
    ({"resources": {"gpus_per_worker": 0.5}}, "resources.gpus_per_worker: is not used with resources.use_gpu false"),
    ({**TUNE_BASE, "tune": {"space": LR, "scheduler": "pbt", "grace_period": 20}},
     "tune.grace_period: is not used with tune.scheduler 'pbt'; remove it or set tune.scheduler 'asha'"),
    ({**TUNE_BASE, "tune": {"space": LR, "scheduler": "none", "reduction_factor": 3}},
     "tune.reduction_factor: is not used with tune.scheduler 'none'"),
    ({**TUNE_BASE, "tune": {"space": LR, "perturbation_interval": 20}},
     "tune.perturbation_interval: is not used with tune.scheduler 'asha'; remove it or set tune.scheduler 'pbt'"),
    ({**TUNE_BASE, "tune": {"space": LR, "quantile_fraction": 0.5}}, "tune.quantile_fraction: is not used with"),
    ({**TUNE_BASE, "tune": {"space": LR, "resample_probability": 0.5}}, "tune.resample_probability: is not used"),
    ({**TUNE_BASE, "tune": {"space": LR, "synchronous": True}}, "tune.synchronous: is not used with"),
    # A sweep over a key that no trial uses is caught before it starts.
    ({**TUNE_BASE, "tune": {"space": {"train.gp_lambda": {"loguniform": [1.0, 100.0]}}}},
     "tune.space.train.gp_lambda: no trial uses it: is not used with train.loss 'nonsaturating'"),
    ({**TUNE_BASE, "tune": {"space": {"train.loss": {"choice": ["hinge", "lsgan"]},
                                      "train.gp_lambda": {"choice": [10.0, 5.0]}}}},
     "tune.space.train.gp_lambda: no trial uses it"),
]


@pytest.mark.parametrize("data, problem", IGNORED_CASES, ids=[c[1][:50] for c in IGNORED_CASES])
def test_a_key_the_chosen_settings_ignore_is_refused_by_name(data, problem):
    with pytest.raises(SpecError) as info:
        parse({"name": "t", **data})
    assert len(info.value.problems) == 1, info.value.problems
    assert info.value.problems[0].startswith(problem), info.value.problems[0]


@pytest.mark.parametrize("space", [{"train.loss": {"choice": ["wgan-gp", "hinge"]}},
                                   {"train.loss": {"choice": ["wgan-gp", "hinge"]},
                                    "train.gp_lambda": {"choice": [10.0, 5.0]}}])
def test_a_key_that_only_some_trials_use_is_fine(space):
    """gp_lambda set (or searched) for the wgan-gp trials of a space over train.loss: its hinge trials leave it at
    its default."""
    from orchestrator.tune.trial import trial_spec

    spec = parse({"name": "t", **TUNE_BASE, **WGAN, "train": {**WGAN["train"], "gp_lambda": 5.0},
                  "tune": {"space": space}})
    keys = list(space)
    hinge = trial_spec(spec.to_dict(), {"train.loss": "hinge", "train.gp_lambda": 5.0}, keys)
    wgan = trial_spec(spec.to_dict(), {"train.loss": "wgan-gp", "train.gp_lambda": 5.0}, keys)
    assert (hinge.train.loss, hinge.train.gp_lambda) == ("hinge", 10.0)
    assert (wgan.train.loss, wgan.train.gp_lambda) == ("wgan-gp", 5.0)


def test_an_ignored_key_left_at_its_default_is_fine():
    spec = parse({"name": "t", "train": {"loss": "hinge", "gp_lambda": 10.0, "r1_every": 16},
                  "resources": {"gpus_per_worker": 1.0},
                  **TUNE_BASE, "tune": {"space": LR, "scheduler": "pbt", "reduction_factor": 2}})
    assert spec.train.gp_lambda == 10.0 and spec.tune.grace_period is None
    assert parse({"name": "t", **WGAN, "train": {**WGAN["train"], "gp_lambda": 5.0, "r1_gamma": 1.0,
                                                  "r1_every": 4}}).train.r1_every == 4


def test_a_condition_ramp_runs_forward_and_ends_by_the_last_step():
    conditional = {"name": "t", "model": {"conditional": True}}
    assert parse({**conditional, "train": {"steps": 100, "condition_ramp": [10, 100]}}).train.condition_ramp == (10, 100)
    assert parse(conditional).train.condition_ramp is None
    for ramp, fragment in (([50, 10], "start <= end"), ([10, 101], "must end by train.steps (100)")):
        with pytest.raises(SpecError) as info:
            parse({**conditional, "train": {"steps": 100, "condition_ramp": ramp}})
        assert len(info.value.problems) == 1 and info.value.problems[0].startswith("train.condition_ramp: ")
        assert fragment in info.value.problems[0], info.value.problems
