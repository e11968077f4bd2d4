"""The whole path on real components: Ray Train with 2 DDP workers (gloo), a real MLflow SQLite store."""

import contextlib
import json
import sys
from pathlib import Path

import pytest
import torch

from orchestrator.spec import load, parse
from orchestrator.track import store
from orchestrator.track.tags import (
    TAG_BEST_CHECKPOINT,
    TAG_BEST_FID,
    TAG_BEST_STEP,
    TAG_CHECKPOINT,
    TAG_CLASSIFIER,
    TAG_CLASSIFIER_ACCURACY,
    TAG_COLLAPSE_YARDSTICK,
    TAG_DESCRIPTION,
    TAG_EVALUATED,
    TAG_EXPERIMENT_KIND,
    TAG_OUTCOME,
    TAG_RAY_CHECKPOINT,
    TAG_REGISTERED,
    TAG_UNSTABLE,
)
from orchestrator.train import checkpoint, launch, locate
from orchestrator.train.networks import build_networks

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def counting_collectives():
    """The torch.distributed collectives called inside, by name."""
    import torch.distributed as dist

    names = ("all_reduce", "broadcast", "all_gather", "all_gather_object", "broadcast_object_list", "barrier",
             "reduce", "gather", "scatter")
    called, real = [], {name: getattr(dist, name) for name in names}

    def counted(name):
        return lambda *args, **kwargs: (called.append(name), real[name](*args, **kwargs))[1]

    for name in names:
        setattr(dist, name, counted(name))
    try:
        yield called
    finally:
        for name, function in real.items():
            setattr(dist, name, function)


def compare_ranks_after_every_phase(config):
    """The real per-worker loop, with every rank's G and D parameters compared after each phase."""
    import orchestrator.train.loop as loop
    from orchestrator.distributed import ddp
    from orchestrator.train import worker

    checks = []
    real_run_phase = loop.run_phase

    def run_phase_then_compare(phase, *args):
        with counting_collectives() as collectives:  # beyond DDP's own all-reduce, which is the reducer's
            stats = real_run_phase(phase, *args)
        digests = ddp.gather_digests({"trained": ddp.unwrap(phase.trains), "frozen": phase.frozen},
                                             parameters_only=True)
        checks.append((phase.name, all(len(set(per_rank)) == 1 for per_rank in digests.values()), collectives))
        return stats

    loop.run_phase = run_phase_then_compare
    summary = worker.train_loop_per_worker(config)
    summary["phase_checks"] = checks
    return summary


@pytest.fixture(scope="module")
def debug_run(ray_session, tmp_path_factory, mnist_classifier):
    """One 2-worker run of jobs/debug_dcgan.yaml, shared by the tests below."""
    import os

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    workdir = tmp_path_factory.mktemp("debug_run")
    old_cwd, old_uri = Path.cwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(workdir)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    try:
        spec = load(REPO / "jobs/debug_dcgan.yaml", [f"tracking.storage_path={workdir / 'ray_storage'}",
                                                     "eval.every=3", "eval.num_samples=301",
                                                     f"eval.cache_dir={mnist_classifier[1]}",
                                                     "tracking.register_as=debug-generator",
                                                     "tracking.system_metrics_every_s=1",
                                                     "data.labels_per_class=40"])
        outcome = launch.run(spec, loop=compare_ranks_after_every_phase)
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    return spec, outcome, store.client(outcome.tracking_uri), workdir


def test_parameters_identical_on_every_rank_after_every_phase(debug_run):
    spec, outcome, _, _ = debug_run
    checks = outcome.summary["phase_checks"]
    assert [name for name, _, _ in checks] == ["D", "G"] * spec.train.steps
    assert all(equal for _, equal, _ in checks), checks
    assert all(not collectives for _, _, collectives in checks), checks  # a step's only all-reduce is DDP's
    assert outcome.summary["ddp_imports_early"]  # Ray Train's backend started DDP's imports (warm_start)
    digests = outcome.summary["parameter_digests"]
    assert set(digests) == {"generator", "generator_ema", "discriminator"}
    for name, per_rank in digests.items():
        assert len(per_rank) == spec.resources.num_workers == 2
        assert len(set(per_rank)) == 1, f"{name} differs across ranks: {per_rank}"


def test_run_records_params_metrics_samples(debug_run):
    spec, outcome, client, _ = debug_run
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("debug_dcgan-")
    assert run.data.params["train.n_critic"] == "2"
    assert run.data.params["resources.num_workers"] == "2"
    assert run.data.params["optim.g.lr"] == str(spec.optim.g.lr)
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "d_accuracy_real", "d_accuracy_fake", "grad_norm_d",
                "grad_norm_g", "lr_g", "lr_d", "images_per_sec", "images_seen"):
        history = client.get_metric_history(outcome.run_id, key)
        assert [m.step for m in history] == [2, 4, 6], key
        assert all(m.value == m.value for m in history), f"{key} has NaN"
    assert all(0 <= m.value <= 1 for m in client.get_metric_history(outcome.run_id, "d_real"))
    startup = client.get_metric_history(outcome.run_id, "startup_s")
    assert [m.step for m in startup] == [0] and 0 < startup[0].value < 600, startup
    samples = [f.path for f in client.list_artifacts(outcome.run_id, "samples")]
    assert [p for p in samples if "step_" in p] == ["samples/step_000000.png", "samples/step_000003.png",
                                                   "samples/step_000006.png"]
    artifacts = {f.path for f in client.list_artifacts(outcome.run_id)}
    assert "spec.yaml" in artifacts


def test_sample_quality_is_evaluated_across_both_workers(debug_run):
    """301 samples: shares of 151 and 150 generated on the two ranks, gathered, scored the same on both."""
    spec, outcome, client, workdir = debug_run
    run = client.get_run(outcome.run_id)
    assert float(run.data.tags[TAG_CLASSIFIER_ACCURACY]) >= 0.95
    assert Path(run.data.tags[TAG_CLASSIFIER]).parent == Path(spec.eval.cache_dir) / "classifiers"
    assert run.data.tags[TAG_COLLAPSE_YARDSTICK] == "301 held-out real images against the 301 of the reference"
    for key in ("fid", "kid", "is", "precision", "recall", "density", "manifold_coverage", "mode_coverage",
                "class_kl", "class_spread", "real_precision", "real_recall", "real_manifold_coverage"):
        history = client.get_metric_history(outcome.run_id, key)
        assert [m.step for m in history] == [3, 6], key
        assert all(m.value == m.value for m in history), f"{key} has NaN"
    final = outcome.summary["eval"]
    assert final["fid"] == client.get_metric_history(outcome.run_id, "fid")[-1].value
    assert 0 < final["mode_coverage"] <= 1 and final["fid"] > 0 and final["is"] >= 1


def test_sample_grid_is_a_png_of_the_fixed_batch(debug_run):
    from PIL import Image

    _, outcome, client, workdir = debug_run
    path = client.download_artifacts(outcome.run_id, "samples/step_000006.png", str(workdir))
    image = Image.open(path)
    assert image.format == "PNG"
    # 16 samples -> 4x4 grid of 28 px tiles with 2 px padding
    assert image.size == (4 * 30 + 2, 4 * 30 + 2)


def test_final_checkpoint_loads_into_fresh_networks(debug_run):
    spec, outcome, client, workdir = debug_run
    run = client.get_run(outcome.run_id)
    artifact = run.data.tags[TAG_CHECKPOINT]
    assert artifact == "checkpoints/step_000006/checkpoint.pt"
    assert [f.path for f in client.list_artifacts(outcome.run_id, "checkpoints")] == [
        "checkpoints/best", "checkpoints/step_000003", "checkpoints/step_000006"]
    state = checkpoint.load(client.download_artifacts(outcome.run_id, artifact, str(workdir)))
    assert state["step"] == 6 and state["spec"]["name"] == "debug_dcgan"
    G, D = build_networks(parse(state["spec"]))
    G.load_state_dict(state["generator"])
    D.load_state_dict(state["discriminator"])
    G_ema, _ = build_networks(parse(state["spec"]))
    G_ema.load_state_dict(state["generator_ema"])
    assert any(not torch.equal(a, b) for a, b in zip(G.parameters(), G_ema.parameters())), "EMA is its own copy"
    torch.optim.Adam(G.parameters()).load_state_dict(state["optimizer_g"])
    torch.optim.Adam(D.parameters()).load_state_dict(state["optimizer_d"])
    assert G(torch.randn(2, spec.model.latent_dim)).shape == (2, 1, 28, 28)
    # the same checkpoint is in Ray Train's storage, and the run points at it
    ray_path = Path(run.data.tags[TAG_RAY_CHECKPOINT])
    assert ray_path == Path(outcome.checkpoint_path) and ray_path.is_relative_to(workdir / "ray_storage")
    assert torch.equal(checkpoint.load(ray_path)["generator"]["net.0.weight"], state["generator"]["net.0.weight"])


def test_best_checkpoint_is_the_periodic_checkpoint_of_the_lowest_fid_step(debug_run):
    """In a real 2-worker run; this run's evaluations may all improve, so whether a worse one leaves the best alone
    is tests/test_best_checkpoint.py's to show."""
    _, outcome, client, workdir = debug_run
    tags = client.get_run(outcome.run_id).data.tags
    fids = {m.step: m.value for m in client.get_metric_history(outcome.run_id, "fid")}
    best_step = min(fids, key=fids.get)
    assert int(tags[TAG_BEST_STEP]) == best_step
    assert float(tags[TAG_BEST_FID]) == pytest.approx(fids[best_step], abs=1e-4)
    assert outcome.summary["best_fid"] == pytest.approx(fids[best_step])
    assert tags[TAG_BEST_CHECKPOINT] == "checkpoints/best/checkpoint.pt"
    state = checkpoint.load(client.download_artifacts(outcome.run_id, "checkpoints/best/checkpoint.pt",
                                                      str(workdir / "best")))
    assert state["step"] == best_step
    periodic = checkpoint.load(client.download_artifacts(
        outcome.run_id, f"checkpoints/step_{best_step:06d}/checkpoint.pt", str(workdir / "periodic")))
    assert all(torch.equal(state["generator_ema"][k], periodic["generator_ema"][k]) for k in state["generator_ema"])


def test_an_evaluator_actor_scores_what_the_workers_score_in_line(debug_run, tmp_path, monkeypatch):
    """The same 2-worker run with eval.background: the same scores at the same steps, the same best step, the same
    training, and still no collective inside a step."""
    spec, inline, client, _ = debug_run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    background_spec = load(REPO / "jobs/debug_dcgan.yaml", [
        f"tracking.storage_path={tmp_path / 'ray_storage'}", "eval.every=3", "eval.num_samples=301",
        f"eval.cache_dir={spec.eval.cache_dir}", "eval.background=true", "eval.resources.cpus=0",
        f"data.labels_per_class={spec.data.labels_per_class}"])
    outcome = launch.run(background_spec, loop=compare_ranks_after_every_phase)
    found = store.client(outcome.tracking_uri)
    for key in ("fid", "kid", "precision", "mode_coverage"):
        expected = [(m.step, m.value) for m in client.get_metric_history(inline.run_id, key)]
        scored = [(m.step, m.value) for m in found.get_metric_history(outcome.run_id, key)]
        assert [step for step, _ in scored] == [step for step, _ in expected] == [3, 6], key
        assert [v for _, v in scored] == pytest.approx([v for _, v in expected], rel=1e-4), key
    assert outcome.summary["parameter_digests"] == inline.summary["parameter_digests"]
    assert all(not collectives for _, _, collectives in outcome.summary["phase_checks"])
    tags, inline_tags = found.get_run(outcome.run_id).data.tags, client.get_run(inline.run_id).data.tags
    assert tags[TAG_BEST_STEP] == inline_tags[TAG_BEST_STEP]
    assert tags[TAG_CLASSIFIER] == inline_tags[TAG_CLASSIFIER]


def test_a_run_that_was_not_stopped_is_recorded_as_completed(debug_run):
    _, outcome, client, _ = debug_run
    run = client.get_run(outcome.run_id)
    assert run.data.tags[TAG_OUTCOME] == "completed"
    assert outcome.summary["stopped"] is None
    what, how = run.data.tags[TAG_DESCRIPTION].splitlines()
    assert what.startswith("DCGAN 28x28x1 (latent 8, widths G 4 / D 4) on mnist5k, 40 per class: 2 CPU workers on 1 node, 6 steps "
                           "of batch 16"), what
    assert how.startswith("Completed 6 steps; ") and f"best FID {outcome.summary['best_fid']:.2f} at step " \
        f"{run.data.tags[TAG_BEST_STEP]}." in how, how
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags[TAG_EXPERIMENT_KIND] == "custom_model_development"  # MLflow's model-training view


def test_sample_grids_are_mlflow_images_with_a_step_each_and_a_gif_and_an_interpolation_end_the_run(debug_run,
                                                                                                      tmp_path):
    from PIL import Image

    _, outcome, client, _ = debug_run
    names = [f.path.split("/")[-1] for f in client.list_artifacts(outcome.run_id, "images")]
    steps = {key: sorted(int(n.split("+step+")[1].split("+")[0]) for n in names
                         if n.startswith(f"{key}+step+") and n.endswith(".png")) for key in ("samples", "interpolation")}
    assert steps == {"samples": [0, 3, 6], "interpolation": [6]}, names
    files = {f.path for f in client.list_artifacts(outcome.run_id, "samples")}
    assert {"samples/training.gif", "samples/interpolation.png"} <= files, files
    with Image.open(client.download_artifacts(outcome.run_id, "samples/training.gif", str(tmp_path))) as gif:
        assert gif.n_frames == 3 and gif.size == Image.open(
            client.download_artifacts(outcome.run_id, "samples/step_000006.png", str(tmp_path))).size
    with Image.open(client.download_artifacts(outcome.run_id, "samples/interpolation.png", str(tmp_path))) as strip:
        assert strip.size == (10 * 30 + 2, 8 * 30 + 2)  # 8 paths of 10 images, 28 px and 2 px of padding


def test_every_node_logs_its_system_metrics_under_its_name(debug_run):
    import socket

    _, outcome, client, _ = debug_run
    metrics = client.get_run(outcome.run_id).data.metrics
    node = f"system/{socket.gethostname()}/"
    assert {f"{node}cpu_utilization_percentage", f"{node}system_memory_usage_megabytes"} <= set(metrics), metrics
    assert not [k for k in metrics if k.startswith("system/") and not k.startswith(node)]  # one node: one name


def test_the_dataset_is_the_runs_input_and_the_labelled_images_it_kept_an_artifact(debug_run, tmp_path):
    """data.labels_per_class 40: G trained on 40 images of each class, none of the held-out split, listed in
    data/labelled_indices.json; evaluation still took the whole dataset (test_sample_quality_...)."""
    from orchestrator.data import splits
    from orchestrator.data.sources import load_mnist5k

    _, outcome, client, _ = debug_run
    (found,) = client.get_run(outcome.run_id).inputs.dataset_inputs
    assert (found.dataset.name, found.dataset.source_type) == ("mnist5k", "code") and len(found.dataset.digest) == 12
    assert json.loads(found.dataset.profile) == {"images": 400, "labels_per_class": 40, "classes": 10,
                                                 "image_shape": [1, 28, 28]}
    assert [(t.key, t.value) for t in found.tags] == [("mlflow.data.context", "training")]
    kept = json.loads(Path(client.download_artifacts(outcome.run_id, "data/labelled_indices.json", tmp_path))
                      .read_text())
    assert (kept["labels_per_class"], kept["seed"]) == (40, 0)
    images, labels = load_mnist5k()
    assert torch.bincount(labels[kept["indices"]]).tolist() == [40] * 10
    held_out = splits.classifier_split(torch.utils.data.TensorDataset(images, labels), seed=0)[1]
    assert not set(kept["indices"]) & set(held_out.tolist())


def test_the_generator_and_the_best_are_mlflow_models_and_the_generator_is_registered(debug_run, tmp_path):
    """The run's models: G_ema at the end, registered as tracking.register_as; G_ema at the best FID, the same
    network as the best checkpoint's."""
    from orchestrator.generate import generator_source

    _, outcome, client, _ = debug_run
    run = client.get_run(outcome.run_id)
    models = {client.get_logged_model(o.model_id).name: o for o in run.outputs.model_outputs}
    assert set(models) == {"generator", "generator_best"} and len(run.outputs.model_outputs) == 2
    assert models["generator"].step == 6 and models["generator_best"].step == int(run.data.tags[TAG_BEST_STEP])
    (version,) = client.search_model_versions("name = 'debug-generator'")
    assert version.source == f"models:/{models['generator'].model_id}" and version.run_id == outcome.run_id
    assert version.description.startswith("G_ema of ganorch job debug_dcgan at step 6: DCGAN 1x28x28, latent 8.")
    assert "ganorch sample models:/debug-generator/latest" in client.get_registered_model("debug-generator").description
    assert run.data.tags["mlflow.source.name"] == "ganorch job debug_dcgan" and run.data.tags["mlflow.user"]
    assert run.data.tags[TAG_REGISTERED] == "debug-generator version 1: generator"

    cpu = torch.device("cpu")
    best = generator_source.resolve(f"models:/{models['generator_best'].model_id}", outcome.tracking_uri, cpu)
    state = checkpoint.load(client.download_artifacts(outcome.run_id, "checkpoints/best/checkpoint.pt",
                                                      str(tmp_path)))
    expected = generator_source.from_checkpoint(locate.Source(state, "best"), cpu)
    assert (best.run_id, best.spec["name"], best.spec["data"]["labels_per_class"]) == (outcome.run_id, "debug_dcgan", 40)
    z = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    assert best.step == state["step"] and torch.allclose(best(z, None), expected(z, None), atol=1e-5)
    final = generator_source.resolve("models:/debug-generator/latest", outcome.tracking_uri, cpu)
    assert (final.step, final.latent_dim, final.num_classes, final.image_shape) == (6, 8, 0, (1, 28, 28))


def test_eval_command_scores_a_run_as_training_did(debug_run, capsys, monkeypatch):
    """`ganorch eval RUN_ID`: the final checkpoint's G_ema on the same reference and z gives the FID training
    logged, in a run nested under the training run, with a grid of --samples images."""
    from PIL import Image

    from orchestrator.cli import main

    spec, outcome, client, workdir = debug_run
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outcome.tracking_uri)
    assert main(["eval", outcome.run_id, "--samples", "9"]) == 0
    out = capsys.readouterr().out
    assert "step 6, 301 samples" in out and "eval_step_000006.png" in out
    assert Image.open(workdir / "eval_step_000006.png").size == (3 * 30 + 2, 3 * 30 + 2)
    (run,) = client.search_runs([client.get_run(outcome.run_id).info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{outcome.run_id}'")
    assert run.data.tags[TAG_EVALUATED].endswith("checkpoints/step_000006/checkpoint.pt")
    assert run.data.metrics["fid"] == pytest.approx(outcome.summary["eval"]["fid"], rel=1e-3)
    assert run.data.metrics["mode_coverage"] == outcome.summary["eval"]["mode_coverage"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "fid")] == [6]
    assert [f.path for f in client.list_artifacts(run.info.run_id, "samples")] == ["samples/step_000006.png"]

    # the best checkpoint by run id, and a checkpoint file given by path
    assert main(["eval", outcome.run_id, "--best", "--set", "eval.num_samples=50"]) == 0
    best_step = client.get_run(outcome.run_id).data.tags[TAG_BEST_STEP]
    assert f"checkpoints/best/checkpoint.pt: step {best_step}, 50 samples" in capsys.readouterr().out
    assert main(["eval", outcome.checkpoint_path, "--set", "eval.num_samples=50"]) == 0
    out = capsys.readouterr().out
    assert f"{Path(outcome.checkpoint_path) / 'checkpoint.pt'}: step 6" in out
    assert "Inception features off: no Inception weights" in out and "fid_inception" not in out
    torch.save({"weight": torch.zeros(1)}, workdir / "not_inception.pth")
    assert main(["eval", outcome.checkpoint_path, "--set", f"eval.inception_weights={workdir / 'not_inception.pth'}"]) == 2
    assert "eval.inception_weights: " in capsys.readouterr().err


def test_eval_command_adds_inception_metrics_from_a_weights_file(debug_run, inception_weights_file, capsys,
                                                                  monkeypatch):
    from orchestrator.cli import main

    _, outcome, client, workdir = debug_run
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outcome.tracking_uri)
    assert main(["eval", outcome.checkpoint_path, "--set", "eval.num_samples=12",
                 "--set", f"eval.inception_weights={inception_weights_file}"]) == 0
    out = capsys.readouterr().out
    assert f"Inception features on: {inception_weights_file}" in out
    run_id = out.split("MLflow run ")[1].split(";")[0]
    metrics = client.get_run(run_id).data.metrics
    assert {"fid_inception", "kid_inception", "is_inception", "fid"} <= set(metrics)
    assert all(v == v for v in metrics.values())


@pytest.mark.parametrize("target, message", [
    ("no/such/file.pt", "no such checkpoint file, and not an MLflow run id"),
    ("0123456789abcdef0123456789abcdef", "no MLflow run with this id"),
    ("not-a-checkpoint.pt", "not-a-checkpoint.pt: cannot be read as a checkpoint"),
])
def test_eval_command_refuses_what_is_not_a_checkpoint(mlflow_store, tmp_path, capsys, target, message):
    from orchestrator.cli import main

    (tmp_path / "not-a-checkpoint.pt").write_text("hello")
    assert main(["eval", target]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_stop_on_ends_the_run_early_with_its_reason(ray_session, mlflow_store, tmp_path, capsys):
    """D trained 10,000x faster than G wins within a few steps: with stop_on [d_overpowering] both workers stop at
    the same step, keep a final checkpoint, and the run records why."""
    from orchestrator.cli import EXIT_STOPPED, run_job

    spec = load(REPO / "jobs/debug_dcgan.yaml", [
        f"tracking.storage_path={tmp_path / 'ray_storage'}", "train.steps=200", "tracking.metrics_every=1",
        "train.stop_on=[d_overpowering]", "train.stability_window=3", "optim.d.lr=0.01", "optim.g.lr=1.0e-6"])
    assert run_job(spec) == EXIT_STOPPED
    out = capsys.readouterr().out
    assert "stopped early (train.stop_on): d_overpowering at step" in out
    client = store.client(mlflow_store)
    (run,) = client.search_runs([client.get_experiment_by_name("debug_dcgan").experiment_id])
    assert run.info.status == "FINISHED"
    outcome = run.data.tags[TAG_OUTCOME]
    assert outcome.startswith("stopped: d_overpowering at step ")
    step = int(outcome.removeprefix("stopped: d_overpowering at step ").split(":")[0])
    assert 3 <= step < 200
    assert run.data.tags[TAG_UNSTABLE + "d_overpowering"] == outcome.removeprefix("stopped: ")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "unstable.d_overpowering")] == [step]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss_d")] == list(range(1, step + 1))
    assert run.data.tags[TAG_CHECKPOINT] == f"checkpoints/step_{step:06d}/checkpoint.pt"


@pytest.mark.parametrize("generator, collapsed", [("user_networks:TenDigitsGenerator", True),
                                                   ("user_networks:MLPGenerator", False), (None, False)],
                         ids=["ten digits", "mlp", "dcgan"])
def test_a_generator_of_one_image_per_class_is_stopped_as_collapsed(process_group, mnist_classifier, generator,
                                                                     collapsed):
    """A G that draws one real digit per class makes every class and no variety: its first evaluation flags
    mode_collapse, and train.stop_on ends the run there. Poor generators are not collapsed: an MLP's noise, or the
    debug DCGAN after 4 steps, nearly one blur for every z (it makes one or two classes)."""
    from orchestrator.train.loop import WorkerContext, train

    spec = load(REPO / "jobs/debug_dcgan.yaml", [
        "resources.num_workers=1", f"model.generator={generator or 'null'}", "train.steps=4", "eval.every=2",
        "eval.num_samples=200", f"eval.cache_dir={mnist_classifier[1]}", "train.stop_on=[mode_collapse]"])
    summary = train(spec, WorkerContext(device=torch.device("cpu")))
    scores = summary["eval"]
    assert scores["real_recall"] > 0.9 and scores["real_precision"] > 0.9  # 200 held-out digits against 200
    if collapsed:
        assert summary["step"] == 2 and summary["stopped"].startswith("mode_collapse at step 2: "), summary
        assert "class_spread 0.000" in summary["stopped"] and scores["class_spread"] < 1e-6
        assert scores["mode_coverage"] >= 0.9 and scores["recall"] < 0.05
    else:
        assert summary["step"] == 4 and summary["stopped"] is None and summary["flags"] == [], summary


def diverge_rank_one(config):
    """Rank 1 nudges one weight; the snapshot check must refuse to go on."""
    import ray.train.torch

    from orchestrator.distributed import collectives, ddp

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ddp.wrap_ddp(model, ray.train.torch.get_device())
    if collectives.rank() == 1:
        with torch.no_grad():
            model.weight[0, 0] += 1e-6
    try:
        ddp.check_consistency({"model": model})
    except ddp.RankDivergence as err:
        return str(err)
    return None


def test_consistency_check_catches_diverged_rank(ray_session, tmp_path):
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    result = TorchTrainer(diverge_rank_one, scaling_config=ScalingConfig(num_workers=2),
                          run_config=RunConfig(storage_path=str(tmp_path))).fit()
    assert result.return_value is not None and "ranks hold different model state" in result.return_value
