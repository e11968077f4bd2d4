"""The generator as an MLflow model (pt2, two flavors, signature, example, pinned requirements, the spec as metadata;
loaded in a fresh process by runs:/, models:/<id> and registry URIs), kept on disk while MLflow is down and sent by
`ganorch sync`, and `ganorch sample` / `ganorch export` from a model, a run id or a checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gan_models import build_models
from orchestrator import cli
from orchestrator.generate import dataset, generator_source, samples
from orchestrator.spec import load
from orchestrator.track import generator_model, store
from orchestrator.track.outbox import Outbox, sync
from orchestrator.train import checkpoint

REPO = Path(__file__).resolve().parents[1]


def tiny_generator(classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    G, _ = build_models("dcgan", latent_dim=8, image_size=28, channels=1, g_width=4, d_width=4, num_classes=classes)
    return G.eval()


def logged(uri: str, classes: int, tmp_path: Path, register_as: str | None = None,
           aliases: tuple[str, ...] = ()) -> tuple[str, str]:
    """A run with a tiny generator logged as its model; the run id and model id."""
    client = store.client(uri)
    run_id = client.create_run(client.create_experiment(f"e{classes}{register_as}")).info.run_id
    folder = generator_model.save(tiny_generator(classes), tmp_path / f"model{classes}", latent_dim=8,
                                  num_classes=classes, image_shape=(1, 28, 28),
                                  metadata={"spec": {"name": "tiny"}, "step": 7})
    model_id = generator_model.log_folder(uri, run_id, folder, generator_model.MODEL_NAME, 7, register_as, aliases)
    return run_id, model_id


LOAD_EVERYWHERE = """
import json, sys
import mlflow, numpy as np, torch
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
found = {}
for uri in sys.argv[2:]:
    z = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    labels = np.array([0, 1, 2, 1, 0])
    model = mlflow.pyfunc.load_model(uri)
    conditional = len(model.metadata.signature.inputs.inputs) == 2
    images = model.predict({"z": z, "labels": labels} if conditional else z)
    module = mlflow.pytorch.load_model(uri)
    direct = module(*[torch.from_numpy(z)] + ([torch.from_numpy(labels)] if conditional else [])).detach().numpy()
    found[uri] = [list(images.shape), str(images.dtype), float(images.min()), float(images.max()),
                  float(abs(images - direct).max()), conditional]
print(json.dumps(found))
"""


def test_the_generator_model_loads_in_a_fresh_process_by_every_kind_of_uri(mlflow_store, tmp_path):
    """Unconditional and conditional (3 classes); one fresh process loads both by every kind of URI."""
    uris = []
    for classes in (0, 3):
        run_id, model_id = logged(mlflow_store, classes, tmp_path, register_as=f"gen{classes}", aliases=("best",))
        client = store.client(mlflow_store)
        model = client.get_logged_model(model_id)
        assert model.name == "generator" and model.source_run_id == run_id
        assert [(o.model_id, o.step) for o in client.get_run(run_id).outputs.model_outputs] == [(model_id, 7)]
        folder = Path(generator_model_folder(mlflow_store, model_id))
        mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
        assert set(mlmodel["flavors"]) == {"pytorch", "python_function"}
        assert mlmodel["flavors"]["python_function"]["loader_module"] == "generator_pyfunc"
        assert (folder / "data" / "model.pt2").is_file() and not list(folder.rglob("*.pth"))  # pt2: no pickle file
        inputs = json.loads(mlmodel["signature"]["inputs"])
        assert [(i["name"], i["tensor-spec"]["dtype"], i["tensor-spec"]["shape"]) for i in inputs] == \
            [("z", "float32", [-1, 8])] + ([("labels", "int64", [-1])] if classes else [])
        outputs = json.loads(mlmodel["signature"]["outputs"])
        assert outputs[0]["tensor-spec"]["shape"] == [-1, 1, 28, 28]
        example = json.loads((folder / "input_example.json").read_text())
        assert set(example["inputs"] if "inputs" in example else example) == ({"z", "labels"} if classes else {"z"})
        requirements = (folder / "requirements.txt").read_text().split()
        assert f"torch=={torch.__version__.split('+')[0]}" in requirements, requirements
        assert mlmodel["metadata"]["ganorch"]["spec"] == {"name": "tiny"}
        assert mlmodel["metadata"]["ganorch"]["num_classes"] == classes
        uris += [f"runs:/{run_id}/generator", f"models:/{model_id}", f"models:/gen{classes}/latest",
                 f"models:/gen{classes}@best", f"models:/gen{classes}/1"]

    out = subprocess.run([sys.executable, "-c", LOAD_EVERYWHERE, mlflow_store, *uris],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    for i, uri in enumerate(uris):
        shape, dtype, low, high, differs, conditional = found[uri]
        assert (shape, dtype, conditional) == ([5, 1, 28, 28], "float32", i >= 5), uri
        assert -1 <= low < high <= 1 and differs < 1e-5, (uri, found[uri])


def test_saving_skips_mlflows_requirements_scan_and_leaves_mlflow_as_it_was(tmp_path, monkeypatch):
    """The pinned requirements are this process's own versions: MLflow's check of them (seconds: it reads every
    installed distribution) is not run, and MLflow's check is back in place afterwards."""
    from mlflow.utils import environment, requirements_utils

    checked = []
    monkeypatch.setattr(requirements_utils, "_check_requirement_satisfied", lambda req: checked.append(req))
    check = environment.warn_dependency_requirement_mismatches
    generator_model.save(tiny_generator(0), tmp_path / "model", latent_dim=8, num_classes=0,
                         image_shape=(1, 28, 28), metadata={})
    assert checked == [] and environment.warn_dependency_requirement_mismatches is check
    check(["torch"])  # the real check, called outside a save, does run
    assert checked == ["torch"]


def test_the_loader_moves_every_weight_of_the_program_to_the_device_asked_for(tmp_path):
    """The path a GPU takes (an exported program's weights moved by torch.export's pass, as `.to()` cannot), run on
    the meta device, which every machine has."""
    from orchestrator.track import generator_pyfunc

    folder = generator_model.save(tiny_generator(3), tmp_path / "model", latent_dim=8, num_classes=3,
                                  image_shape=(1, 28, 28), metadata={})
    module = generator_pyfunc.load(str(folder / "data"), "meta")
    assert {t.device.type for t in [*module.parameters(), *module.buffers()]} == {"meta"}
    images = module(torch.randn(5, 8, device="meta"), torch.zeros(5, dtype=torch.int64, device="meta"))
    assert (images.shape, images.device.type) == ((5, 1, 28, 28), "meta")


LOAD_ON_CUDA = """
import json, sys
import mlflow, numpy as np
z = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
inputs = {"z": z, "labels": np.array([0, 1, 2, 1, 0])}
on_gpu = mlflow.pyfunc.load_model(sys.argv[1])  # CUDA by default where there is one
on_cpu = mlflow.pyfunc.load_model(sys.argv[1], model_config={"device": "cpu"})
gpu, cpu = on_gpu.predict(inputs), on_cpu.predict(inputs)
devices = {str(t.device.type) for t in on_gpu._model_impl.module.parameters()}
print(json.dumps([sorted(devices), list(gpu.shape), float(abs(gpu - cpu).max())]))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: loads the generator model on CUDA")
def test_the_generator_model_loads_on_a_gpu_in_a_fresh_process(mlflow_store, tmp_path):
    run_id, _ = logged(mlflow_store, 3, tmp_path)
    out = subprocess.run([sys.executable, "-c", LOAD_ON_CUDA, f"runs:/{run_id}/generator"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_store})
    assert out.returncode == 0, out.stderr[-3000:]
    devices, shape, differs = json.loads(out.stdout.strip().splitlines()[-1])
    assert devices == ["cuda"] and shape == [5, 1, 28, 28] and differs < 1e-4


@pytest.mark.parametrize("family", ["dcgan", "resnet"])
def test_every_family_exports_conditional_or_not_and_the_export_computes_what_the_network_does(family, tmp_path):
    from orchestrator.track import generator_pyfunc

    for classes in (0, 4):
        torch.manual_seed(0)
        G, _ = build_models(family, latent_dim=8, image_size=32, channels=3, g_width=8, d_width=8,
                            num_classes=classes)
        G.eval()
        folder = generator_model.save(G, tmp_path / f"{family}{classes}", latent_dim=8, num_classes=classes,
                                      image_shape=(3, 32, 32), metadata={})
        exported = generator_pyfunc.load(str(folder / "data"), "cpu")
        z = torch.randn(3, 8)  # another batch size than the example's: the batch dimension is dynamic
        args = (z, torch.tensor([3, 0, 1])) if classes else (z,)
        with torch.no_grad():
            assert torch.allclose(exported(*args), G(*args), atol=1e-5), (family, classes)


def generator_model_folder(uri: str, model_id: str) -> str:
    import mlflow

    return mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", tracking_uri=uri)


def test_logging_again_with_what_was_made_makes_nothing_twice_and_leaves_mlflows_settings(mlflow_store, tmp_path,
                                                                                         monkeypatch):
    """A retry (after an outage) or a second `ganorch sync` of a model op logs and registers it once; the process's
    tracking and registry URIs and active experiment are as they were. As in a Ray worker, the process's own
    tracking URI is not the store's."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID")
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), [os.environ.get(name) for name in names])
    client = store.client(mlflow_store)
    run_id = client.create_run(client.create_experiment("again")).info.run_id
    folder = generator_model.save(tiny_generator(0), tmp_path / "model", latent_dim=8, num_classes=0,
                                  image_shape=(1, 28, 28), metadata={})
    done: dict[str, str] = {}
    first = generator_model.log_folder(mlflow_store, run_id, folder, "generator", 3, "again-gen", ("best",), done)
    assert generator_model.log_folder(mlflow_store, run_id, folder, "generator", 3, "again-gen", ("best",),
                                      done) == first
    assert len(client.search_logged_models(experiment_ids=[client.get_run(run_id).info.experiment_id])) == 1
    (version,) = client.search_model_versions("name = 'again-gen'")
    assert version.source == f"models:/{first}" and str(client.get_model_version_by_alias("again-gen", "best").version) == "1"
    linked = json.loads(client.get_logged_model(first).tags["mlflow.modelVersions"])
    assert [(v["name"], str(v["version"])) for v in linked] == [("again-gen", "1")]
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri(), [os.environ.get(name) for name in names]) == before


def test_an_upload_cut_short_is_taken_up_where_it_stopped(mlflow_store, tmp_path, monkeypatch):
    """The connection drops during the upload, after the model was made and linked to the run: the retry neither
    makes nor links it again (MLflow refuses a second link), and registers it once."""
    client = store.client(mlflow_store)
    run_id = client.create_run(client.create_experiment("cut")).info.run_id
    folder = generator_model.save(tiny_generator(0), tmp_path / "model", latent_dim=8, num_classes=0,
                                  image_shape=(1, 28, 28), metadata={})
    kind, real, calls = type(client), type(client).log_model_artifacts, []

    def cut_once(self, model_id, local_dir, artifact_path=None):
        calls.append(model_id)
        if len(calls) == 1:
            raise ConnectionError("connection reset by peer")
        return real(self, model_id, local_dir, artifact_path)

    monkeypatch.setattr(kind, "log_model_artifacts", cut_once)
    done: dict[str, str] = {}
    with pytest.raises(ConnectionError):
        generator_model.log_folder(mlflow_store, run_id, folder, "generator", 4, "cut-gen", (), done)
    assert set(done) == {"model_id", "linked"}
    model_id = generator_model.log_folder(mlflow_store, run_id, folder, "generator", 4, "cut-gen", (), done)
    assert [(o.model_id, o.step) for o in client.get_run(run_id).outputs.model_outputs] == [(model_id, 4)]
    assert str(client.get_logged_model(model_id).status) == "READY" and calls == [model_id, model_id]
    (version,) = client.search_model_versions("name = 'cut-gen'")
    assert version.source == f"models:/{model_id}"


def test_a_model_made_while_mlflow_is_down_is_kept_and_sync_logs_it(tmp_path, monkeypatch, mlflow_store):
    monkeypatch.setenv("GANORCH_HOME", str(tmp_path / "home"))
    client = store.client(mlflow_store)
    run_id = client.create_run(client.create_experiment("down")).info.run_id
    box = Outbox("http://127.0.0.1:9", run_id, "rank0", notify=lambda line: None)
    G = tiny_generator(0)
    box.model(generator_model.save(G, tmp_path / "built", latent_dim=8, num_classes=0, image_shape=(1, 28, 28),
                                   metadata={}), "generator", 5)
    kept = box.close(wait_s=0)
    assert kept is not None and (next(kept.glob("*/model")) / "data" / "model.pt2").is_file()
    run, sent = sync(kept, mlflow_store)
    assert (run, sent) == (run_id, 1)
    (output,) = client.get_run(run_id).outputs.model_outputs
    assert client.get_logged_model(output.model_id).name == "generator" and output.step == 5


def a_checkpoint(tmp_path: Path, classes: int) -> Path:
    spec = load(REPO / "jobs/debug_dcgan.yaml", ["model.conditional=true"] if classes else [])
    G, D = tiny_generator(classes), build_models("dcgan", latent_dim=8, image_size=28, channels=1, g_width=4,
                                                 d_width=4, num_classes=classes)[1]
    opt = torch.optim.Adam(G.parameters())
    state = checkpoint.build(G=G, G_ema=G, D=D, opt_g=opt, opt_d=opt, step=11, images_seen=0,
                             spec=spec.to_dict(), num_classes=classes)
    folder = tmp_path / f"ckpt{classes}"
    folder.mkdir()
    return checkpoint.save(state, folder)


def test_sample_writes_a_grid_with_a_row_per_class_and_a_png_per_image(tmp_path, mlflow_store, capsys):
    path = a_checkpoint(tmp_path, 3)
    rc = cli.main(["sample", str(path), "--num", "7", "--classes", "2,0", "--seed", "3", "--grid",
                   str(tmp_path / "grid.png"), "--out", str(tmp_path / "each"), "--truncation", "0.5"])
    assert rc == 0, capsys.readouterr().err
    from PIL import Image

    files = sorted(p.name for p in (tmp_path / "each").iterdir())
    assert files == [f"{i:06d}_class{c}.png" for i, c in enumerate([2, 2, 2, 2, 0, 0, 0])]
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 + 2 * 30, 2 + 4 * 30)  # 2 rows (one per class) of at most 4 images, 28 px + 2 padding
    # The same seed gives the same images; the truncation keeps z in [-psi, psi].
    assert cli.main(["sample", str(path), "--num", "7", "--classes", "2,0", "--seed", "3", "--truncation", "0.5",
                     "--out", str(tmp_path / "again")]) == 0
    assert all((tmp_path / "each" / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    z = samples.latents(1000, 8, 3, 0.5)
    assert z.abs().max() <= 0.5 and z.std() > 0.2


@pytest.mark.parametrize("args, message", [
    (["--classes", "3"], "checkpoint.pt draws classes 0 to 2"),
    (["--classes", "x"], "--classes: got 'x'; class numbers"),
    (["--num", "0"], "--num: got 0"),
    (["--truncation", "0"], "--truncation: got 0.0"),
    (["--grid", "{tmp}/exists.png"], "--grid: {tmp}/exists.png exists"),
    (["--out", "{tmp}/full"], "is not an empty directory"),
    (["--grid", "{tmp}/no/such/dir/g.png"], "--grid: no directory"),
])
def test_sample_refuses_with_the_reason_and_writes_nothing(tmp_path, mlflow_store, capsys, args, message):
    path = a_checkpoint(tmp_path, 3)
    (tmp_path / "exists.png").write_bytes(b"x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.png").write_bytes(b"x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--grid" not in args and "--out" not in args:
        args += ["--grid", str(tmp_path / "new.png")]
    assert cli.main(["sample", str(path), *args]) == 2
    assert message.replace("{tmp}", str(tmp_path)) in capsys.readouterr().err
    assert not (tmp_path / "new.png").exists() and (tmp_path / "exists.png").read_bytes() == b"x"


def test_sample_refuses_classes_for_an_unconditional_model_and_a_bad_source(tmp_path, mlflow_store, capsys):
    path = a_checkpoint(tmp_path, 0)
    assert cli.main(["sample", str(path), "--classes", "1", "--grid", str(tmp_path / "g.png")]) == 2
    assert "is unconditional" in capsys.readouterr().err
    for source, message in [("nonsense", "not an MLflow model URI"), ("0" * 32, "no MLflow run with this id"),
                            ("models:/nope/1", "cannot be loaded")]:
        assert cli.main(["sample", source, "--grid", str(tmp_path / "g.png")]) == 2
        assert message in capsys.readouterr().err, source
    assert not (tmp_path / "g.png").exists()


def test_export_writes_class_folders_that_image_folder_and_ganorch_read_back(tmp_path, mlflow_store, capsys):
    run_id, model_id = logged(mlflow_store, 3, tmp_path)
    out = tmp_path / "synthetic"
    assert cli.main(["export", run_id, "--num", "301", "--out", str(out), "--seed", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == f"models:/{model_id}" and manifest["step"] == 7 and manifest["seed"] == 1
    assert manifest["classes"] == {"0": 101, "1": 100, "2": 100} and manifest["num"] == 301

    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(out))
    assert len(folder) == 301 and folder.classes == ["0", "1", "2"]
    assert np.bincount(folder.targets).tolist() == [101, 100, 100]
    from orchestrator.data.sources import load_dataset, num_classes
    from orchestrator.spec import DataSpec, ModelSpec

    ours = load_dataset(DataSpec("folder", path=str(out)), ModelSpec(image_size=28, channels=1))
    assert len(ours) == 301 and num_classes(ours) == 3

    # some classes: ImageFolder numbers their folders from 0; the manifest maps its labels to the generator's
    some = tmp_path / "some"
    assert cli.main(["export", run_id, "--num", "1", "--classes", "1,2", "--out", str(some)]) == 2
    assert "--num: 1 images cannot fill 2 classes" in capsys.readouterr().err and not some.exists()
    assert cli.main(["export", run_id, "--num", "4", "--classes", "1,2", "--out", str(some)]) == 0
    assert ImageFolder(str(some)).classes == ["1", "2"]
    assert json.loads((some / "manifest.json").read_text())["image_folder_labels"] == {"0": 1, "1": 2}


def test_export_to_npz_from_a_model_uri_and_never_over_a_file(tmp_path, mlflow_store, capsys):
    run_id, _ = logged(mlflow_store, 0, tmp_path)
    out = tmp_path / "synthetic.npz"
    assert cli.main(["export", f"runs:/{run_id}/generator", "--num", "10", "--out", str(out)]) == 0
    with np.load(out) as data:
        assert data["images"].shape == (10, 28, 28, 1) and data["images"].dtype == np.uint8
        assert data["labels"].tolist() == [-1] * 10
    manifest = json.loads((tmp_path / "synthetic.manifest.json").read_text())
    assert manifest["format"] == "npz" and manifest["classes"] == {"-1": 10}
    before = out.read_bytes()
    assert cli.main(["export", f"runs:/{run_id}/generator", "--num", "10", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before


def test_a_run_id_without_a_model_falls_back_to_its_latest_checkpoint(tmp_path, mlflow_store):
    client = store.client(mlflow_store)
    run_id = client.create_run(client.create_experiment("old")).info.run_id
    path = a_checkpoint(tmp_path, 0)
    client.log_artifact(run_id, str(path), "checkpoints/step_000011")
    client.set_tag(run_id, "ganorch.checkpoint", "checkpoints/step_000011/checkpoint.pt")
    G = generator_source.resolve(run_id, mlflow_store, torch.device("cpu"))
    assert (G.step, G.num_classes, G.latent_dim) == (11, 0, 8)
    assert dataset.folder_name(3, 12) == "03" and dataset.folder_name(-1, 0) == "unlabelled"


def test_where_mlflow_disallows_pickle_the_archive_is_checked_and_a_tampered_one_refused(tmp_path, monkeypatch):
    """ganorch's archives pass MLflow's pickle-free check; one with a pickled object in it is refused unread."""
    import pickle
    import shutil
    import zipfile

    from mlflow.exceptions import MlflowException

    from orchestrator.track import generator_pyfunc

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    folder = generator_model.save(tiny_generator(0), tmp_path / "model", latent_dim=8, num_classes=0,
                                  image_shape=(1, 28, 28), metadata={})
    assert generator_pyfunc.load(str(folder / "data"), "cpu")(torch.zeros(3, 8)).shape == (3, 1, 28, 28)

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled",))

    tampered = tmp_path / "tampered"
    shutil.copytree(folder / "data", tampered)
    archive = tampered / generator_pyfunc.PROGRAM_FILE
    with zipfile.ZipFile(archive) as z:
        root = z.namelist()[0].split("/")[0]
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr(f"{root}/extra/payload.pkl", pickle.dumps(Payload()))
    with pytest.raises(MlflowException, match="pickle"):
        generator_pyfunc.load(str(tampered), "cpu")


def test_a_generator_that_fixes_its_batch_size_is_refused_with_the_reason(tmp_path):
    class FixedBatch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 28 * 28)

        def forward(self, z):
            return torch.tanh(self.fc(z)).view(2, 1, 28, 28)  # batch 2: the example's

    with pytest.raises(ValueError, match="cannot draw a batch of 3"):
        generator_model.save(FixedBatch(), tmp_path / "model", latent_dim=8, num_classes=0, image_shape=(1, 28, 28),
                             metadata={})
