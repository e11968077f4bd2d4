"""The command line: bad specs exit 2 with every problem and no traceback, before Ray or MLflow is touched; the data
and networks are checked on a dry run (which a run checks alike, while its Ray starts)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def ganorch(*args, cwd, env=None):
    code = ("import sys; from orchestrator.cli import main; rc = main(sys.argv[1:]); "
            "print('IMPORTED', sorted(m for m in ('ray', 'mlflow') if m in sys.modules), file=sys.stderr); "
            "sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=env)


def flat_folder(path: Path, count: int) -> None:
    """`count` blank 28 px images in one folder: data without classes."""
    from PIL import Image

    path.mkdir()
    for i in range(count):
        Image.new("L", (28, 28)).save(path / f"{i}.png")


@pytest.mark.parametrize("command", [["run"], ["run", "--dry-run"], ["validate"]])
def test_bad_spec_exits_2_and_starts_nothing(tmp_path, command):
    job = tmp_path / "bad.yaml"
    job.write_text("train:\n  n_critc: 2\n  steps: -1\nmodel:\n  image_size: 30\n")
    out = ganorch(*command, str(job), cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    for fragment in ("3 problems", "train.n_critc: unknown key; did you mean 'n_critic'?",
                     "train.steps: got -1; must be >= 1", "model.image_size: got 30 (int); allowed: 28, 32, 64"):
        assert fragment in out.stderr
    assert "IMPORTED []" in out.stderr, "neither Ray nor MLflow may be imported for a bad spec"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"], "nothing may be written"


@pytest.mark.parametrize("content", [None, "", "a: [1\n"])
def test_missing_empty_or_non_yaml_file_exits_2(tmp_path, content):
    job = tmp_path / "job.yaml"
    if content is not None:
        job.write_text(content)
    out = ganorch("run", str(job), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"invalid job spec {job}" in out.stderr


def test_bad_override_exits_2(tmp_path):
    out = ganorch("run", str(REPO / "jobs/quickstart.yaml"), "--set", "train.batch_size=63", cwd=tmp_path)
    assert out.returncode == 2
    assert "train.batch_size: got 63; must be a multiple of resources.num_workers (2)" in out.stderr


def test_dry_run_prints_resolved_spec_and_resources(tmp_path):
    out = ganorch("run", str(REPO / "jobs/quickstart.yaml"), "--dry-run", "--set", "resources.num_workers=4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "num_workers: 4" in out.stdout
    assert "4 worker(s) x (1 CPU, 0 GPU) = 4 CPU, 0 GPU; backend gloo; batch 64 (16 per worker)" in out.stdout
    assert f"sqlite:///{tmp_path}/mlflow.db" in out.stdout
    assert "IMPORTED []" in out.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message, ray_started", [
    (["--set", "data.source=folder", "--set", "data.path=/nonexistent"], "/nonexistent", False),
    (["--resume", "deadbeef"], "--resume deadbeef: ", True),
    (["--set", "model.generator=nowhere.nets:G"], "model.generator: cannot import module 'nowhere.nets'", True),
])
def test_dry_run_fails_where_the_run_would_before_it_starts(tmp_path, args, message, ray_started):
    """The same check fails a dry run and a run alike, before any run exists: a missing data folder before Ray
    starts; what needs torch (the networks, --resume's checkpoint) while Ray starts beside it, on a run."""
    job = str(REPO / "jobs/debug_dcgan.yaml")
    dry = ganorch("run", job, *args, "--dry-run", cwd=tmp_path)
    real = ganorch("run", job, *args, cwd=tmp_path)
    assert real.returncode == 2 and message in real.stderr and "Traceback" not in real.stderr, real.stderr
    assert dry.returncode == 2, dry.stdout
    assert dry.stderr.splitlines()[0] == real.stderr.splitlines()[0]
    assert "# resolved job spec" not in dry.stdout
    assert dry.stderr.rpartition("IMPORTED")[2].strip() == "[]"
    assert ("'ray'" in real.stderr.rpartition("IMPORTED")[2]) == ray_started
    assert list(tmp_path.iterdir()) == []  # no MLflow store, no Ray Train storage


def test_dry_run_names_the_checks_it_leaves_to_the_start(tmp_path):
    out = ganorch("run", str(REPO / "jobs/debug_dcgan.yaml"), "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "data: " in out.stdout
    assert "# not checked without starting Ray: " in out.stdout


def test_validate_prints_resolved_spec(tmp_path):
    out = ganorch("validate", str(REPO / "jobs/debug_dcgan.yaml"), cwd=tmp_path)
    assert out.returncode == 0
    assert "debug_dcgan.yaml: valid" in out.stdout and "n_critic: 2" in out.stdout


def test_console_script_is_installed(tmp_path):
    import sysconfig

    script = Path(sysconfig.get_path("scripts")) / "ganorch"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "validate" in out.stdout and "run" in out.stdout



def test_bad_data_folder_exits_2_before_anything_starts(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {{source: folder, path: {tmp_path / 'nowhere'}}}\nresources: {{num_workers: 1}}\n")
    out = ganorch("run", str(job), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"cannot run {job}: data.path: no such directory: {tmp_path / 'nowhere'}" in out.stderr
    assert "IMPORTED []" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml"]


def test_ray_data_folder_without_images_exits_2(tmp_path):
    (tmp_path / "imgs" / "cats").mkdir(parents=True)
    (tmp_path / "imgs" / "cats" / "notes.txt").write_text("x")
    job = tmp_path / "job.yaml"
    job.write_text("data: {source: ray-data, path: imgs}\nresources: {num_workers: 1}\n")
    out = ganorch("run", str(job), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"cannot run {job}: data.path: no image files under imgs in its class folders (cats)" in out.stderr
    assert "IMPORTED []" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "job.yaml"]


def test_too_small_dataset_for_the_batch_exits_2(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.new("L", (28, 28)).save(tmp_path / "imgs" / f"{i}.png")
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {{source: folder, path: {tmp_path / 'imgs'}}}\ntrain: {{batch_size: 4}}\n")
    out = ganorch("run", str(job), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2
    assert "train.batch_size: got 4, more than the 3 images the workers share" in out.stderr


def test_unimportable_generator_exits_2(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("model: {generator: 'nowhere.nets:G'}\n")
    out = ganorch("run", str(job), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "model.generator: cannot import module 'nowhere.nets': ModuleNotFoundError" in out.stderr
    assert "IMPORTED []" in out.stderr


def test_generator_from_the_working_directory_is_checked(tmp_path):
    """A module beside the job (not installed) is importable, as with `python -m`; a bad interface exits 2."""
    (tmp_path / "mynets.py").write_text((REPO / "tests/user_networks.py").read_text())
    job = tmp_path / "job.yaml"
    job.write_text("model: {generator: 'mynets:FlatGenerator', discriminator: 'mynets:MLPDiscriminator'}\n")
    out = ganorch("run", str(job), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2
    assert "model.generator: G(z) gave shape (2, 784); expected (2, 1, 28, 28)" in out.stderr


def test_conditional_model_on_unlabelled_folder_exits_2(tmp_path):
    flat_folder(tmp_path / "imgs", 8)
    job = tmp_path / "job.yaml"
    job.write_text(f"model: {{conditional: true}}\ndata: {{source: folder, path: {tmp_path / 'imgs'}}}\n"
                   "train: {batch_size: 4}\n")
    out = ganorch("run", str(job), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2
    assert "model.conditional: the data has a single class" in out.stderr


@pytest.mark.parametrize("source", ["folder", "ray-data"])
def test_evaluation_on_unlabelled_folder_exits_2(tmp_path, source):
    flat_folder(tmp_path / "imgs", 4)
    job = tmp_path / "job.yaml"
    job.write_text(f"data: {{source: {source}, path: {tmp_path / 'imgs'}}}\ntrain: {{batch_size: 2}}\n"
                   "eval: {every: 10}\n")
    out = ganorch("run", str(job), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "eval.every: the data has a single class" in out.stderr


def test_inception_weights_that_are_not_inception_exit_2(tmp_path):
    import torch

    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pth")
    job = tmp_path / "job.yaml"
    job.write_text(f"eval: {{every: 10, inception_weights: {tmp_path / 'other.pth'}}}\n")
    out = ganorch("run", str(job), "--dry-run", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "eval.inception_weights:" in out.stderr and "not the FID Inception-v3 weights" in out.stderr
    assert "IMPORTED []" in out.stderr


def test_tune_dry_run_counts_trials_and_a_job_without_tune_exits_2(tmp_path):
    out = ganorch("tune", str(REPO / "jobs/tune_quickstart.yaml"), "--dry-run", "--set", "tune.num_samples=3",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import os

    cpus = os.cpu_count()
    expected = min(int(cpus // 0.91), 10 ** 6) or 1
    assert f"# sweep: 3 trials (random search, asha scheduler); {expected} at once on {cpus} CPUs" in out.stdout
    out = ganorch("tune", str(REPO / "jobs/pbt_quickstart.yaml"), "--dry-run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "PBT perturbs optim.g.lr, optim.d.lr, train.n_critic every 500 steps" in out.stdout
    out = ganorch("tune", str(REPO / "jobs/quickstart.yaml"), cwd=tmp_path)
    assert out.returncode == 2 and "has no tune section" in out.stderr and "Traceback" not in out.stderr
    assert "IMPORTED []" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--samples", "-1"], "--samples: got -1; must be between 0 and 1024"),
    (["--samples", "5000"], "--samples: got 5000; must be between 0 and 1024"),
    (["--output", "no/such/dir/grid.png"], "--output: no directory"),
])
def test_eval_flags_are_checked_before_anything_is_read_or_written(tmp_path, args, message):
    out = ganorch("eval", "0123456789abcdef0123456789abcdef", *args, cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_tune_export_into_a_missing_directory_exits_2_before_ray_starts(tmp_path):
    out = ganorch("tune", str(REPO / "jobs/tune_quickstart.yaml"), "--export", "no/such/dir/best.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "--export: no directory" in out.stderr and "Traceback" not in out.stderr
    assert "IMPORTED []" in out.stderr


def test_results_written_before_are_never_overwritten(tmp_path):
    (tmp_path / "grid.png").write_text("an earlier grid")
    (tmp_path / "best.yaml").write_text("an earlier export")
    out = ganorch("eval", "0123456789abcdef0123456789abcdef", "--output", "grid.png", cwd=tmp_path)
    assert out.returncode == 2 and "--output: grid.png exists" in out.stderr and "Traceback" not in out.stderr
    out = ganorch("tune", str(REPO / "jobs/tune_quickstart.yaml"), "--export", "best.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "--export: best.yaml exists" in out.stderr and "IMPORTED []" in out.stderr
    assert (tmp_path / "grid.png").read_text() == "an earlier grid"
    assert (tmp_path / "best.yaml").read_text() == "an earlier export"

    from orchestrator.generate.offline_eval import unused  # the default grid name of `ganorch eval --samples`
    (tmp_path / "eval_step_000006-2.png").touch()
    (tmp_path / "eval_step_000006.png").touch()
    assert unused(tmp_path / "eval_step_000006.png") == tmp_path / "eval_step_000006-3.png"


@pytest.mark.parametrize("uri, message", [
    ("http://127.0.0.1:1", "MLFLOW_TRACKING_URI: cannot reach the MLflow tracking server at http://127.0.0.1:1"),
    ("ftp://host/store", "MLFLOW_TRACKING_URI: cannot open the MLflow tracking store ftp://host/store"),
])
def test_a_tracking_uri_that_cannot_be_used_exits_2_before_ray_starts(tmp_path, uri, message):
    import os

    out = ganorch("run", str(REPO / "jobs/debug_dcgan.yaml"), cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "'ray'" not in out.stderr.rpartition("IMPORTED")[2]


def test_an_sqlite_store_that_cannot_be_opened_exits_2_before_ray_or_mlflow_is_imported(tmp_path):
    import os

    (tmp_path / "notes.txt").write_text("not a database, but long enough for SQLite to look at its header\n" * 3)
    uri = "sqlite:///notes.txt"
    out = ganorch("run", str(REPO / "jobs/debug_dcgan.yaml"), cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 2, out.stderr
    assert f"MLFLOW_TRACKING_URI: cannot open the MLflow tracking store {uri}" in out.stderr, out.stderr
    assert out.stderr.rpartition("IMPORTED")[2].strip() == "[]", out.stderr


def test_a_storage_uri_ray_cannot_write_is_a_spec_error(tmp_path):
    out = ganorch("validate", str(REPO / "jobs/debug_dcgan.yaml"), "--set", "tracking.storage_path=foo://bucket/x",
                  cwd=tmp_path)
    assert out.returncode == 2 and "tracking.storage_path: got 'foo://bucket/x'" in out.stderr


def test_sync_refuses_a_folder_no_run_kept(tmp_path):
    (tmp_path / "other").mkdir()
    out = ganorch("sync", "other", cwd=tmp_path)
    assert out.returncode == 2 and "other is not a folder a run kept (no run.json)" in out.stderr
    assert "Traceback" not in out.stderr
