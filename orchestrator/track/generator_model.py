"""The generator as an MLflow model.

G_ema is exported with torch.export (MLflow's `pt2` format: the traced graph and its weights as raw tensors, no
pickle), so loading it runs no code of the file's and needs no ganorch, nor the network's Python class. The model
has two flavors over the same `data/model.pt2`: `pytorch` (`mlflow.pytorch.load_model`: the exported module) and
`python_function` (`mlflow.pyfunc.load_model`), which is ganorch's own `generator_pyfunc`, shipped in the model's
`code/`: it takes the conditional generator's two inputs (MLflow's pytorch pyfunc takes one array) and puts the
program on CUDA when there is one (an exported program's tensors do not move with `.to()`). Signature: `z` float32
(N, latent_dim), plus `labels` int64 (N,) when conditional -> images float32 (N, C, H, W) in [-1, 1].

A model is built into a local folder first (`save`), then logged from it (`log_folder`), so that rank 0's outbox
can keep it on disk while MLflow cannot be reached.
"""

import contextlib
import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from orchestrator.track import generator_pyfunc, store
from orchestrator.track.tags import TAG_REGISTERED

MODEL_NAME = "generator"             # G_ema when the run ended
BEST_MODEL_NAME = "generator_best"   # G_ema of the run's best checkpoint by FID
METADATA_KEY = "ganorch"             # the model's metadata: what `ganorch sample` needs, and the spec
EXAMPLE_BATCH = 2                    # torch.export keeps a batch dimension of 1 static


def signature(latent_dim: int, num_classes: int, image_shape: tuple[int, int, int]) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    inputs = [TensorSpec(np.dtype(np.float32), (-1, latent_dim), "z")]
    if num_classes:
        inputs.append(TensorSpec(np.dtype(np.int64), (-1,), "labels"))
    return ModelSignature(Schema(inputs), Schema([TensorSpec(np.dtype(np.float32), (-1, *image_shape), "images")]))


def example(latent_dim: int, num_classes: int) -> dict[str, np.ndarray]:
    """The input example: EXAMPLE_BATCH latents (and labels), the same every time."""
    z = torch.randn(EXAMPLE_BATCH, latent_dim, generator=torch.Generator().manual_seed(0)).numpy()
    if not num_classes:
        return {"z": z}
    return {"z": z, "labels": (np.arange(EXAMPLE_BATCH) % num_classes).astype(np.int64)}


def requirements() -> list[str]:
    """What loading the model needs, pinned to this process's versions: a pt2 archive is read by the torch that
    wrote it. Given, not inferred (MLflow's inference loads the model in a subprocess: seconds)."""
    import mlflow

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}"]


@contextlib.contextmanager
def own_versions_trusted() -> Iterator[None]:
    """Inside, MLflow does not check a model's pip requirements against the installed packages: `requirements()`
    pins this process's own versions, so the check cannot find a mismatch, and it costs seconds (it reads the
    metadata of every installed distribution) at the end of every run."""
    from mlflow.utils import environment

    check = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if check is None:  # another MLflow: its check runs
        yield
        return
    environment.warn_dependency_requirement_mismatches = lambda *args, **kwargs: None
    try:
        yield
    finally:
        environment.warn_dependency_requirement_mismatches = check


def save(G: torch.nn.Module, folder: Path, *, latent_dim: int, num_classes: int,
         image_shape: tuple[int, int, int], metadata: dict[str, Any]) -> Path:
    """Export G (a copy: on CPU, in eval mode, float32) and write it as an MLflow model in `folder` (made here).
    `metadata` goes to the model's metadata under METADATA_KEY. Raises ValueError when torch.export cannot trace G
    (a network of one's own that does what export does not support)."""
    import mlflow.pytorch
    from mlflow import pyfunc
    from mlflow.models import Model
    from mlflow.models.utils import _save_example

    G = copy.deepcopy(G).float().cpu().eval()
    inputs = example(latent_dim, num_classes)
    model = Model(metadata={METADATA_KEY: {**metadata, "latent_dim": latent_dim, "num_classes": num_classes,
                                           "image_shape": list(image_shape)}})
    try:
        with own_versions_trusted():
            mlflow.pytorch.save_model(G, str(folder), mlflow_model=model, serialization_format="pt2",
                                      signature=signature(latent_dim, num_classes, image_shape),
                                      input_example=tuple(inputs.values()), pip_requirements=requirements(),
                                      code_paths=[generator_pyfunc.__file__])
    except Exception as err:
        if not type(err).__module__.startswith("torch"):
            raise
        raise ValueError(f"torch.export could not trace the generator ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})") from err
    check_export(G, folder / "data", latent_dim, num_classes)
    # The pytorch flavor's pyfunc takes one array and refuses to move a pt2 program to CUDA: ganorch's takes both.
    model.flavors.pop(pyfunc.FLAVOR_NAME, None)
    pyfunc.add_to_model(model, loader_module=Path(generator_pyfunc.__file__).stem, data="data", code="code",
                        conda_env="conda.yaml", python_env="python_env.yaml", model_config={"device": None})
    (folder / "input_example.json").unlink(missing_ok=True)  # a one-array example; the named one replaces it
    _save_example(model, inputs, str(folder))
    model.save(str(folder / "MLmodel"))
    return folder


def check_export(G: torch.nn.Module, data: Path, latent_dim: int, num_classes: int) -> None:
    """The exported program computes what G does at another batch size than the example's: a network that fixes
    its batch size (a view with a literal size, say) is traced with it fixed. ValueError if not."""
    batch = EXAMPLE_BATCH + 1
    args = [torch.randn(batch, latent_dim, generator=torch.Generator().manual_seed(1))]
    if num_classes:
        args.append(torch.arange(batch) % num_classes)
    with torch.no_grad():
        try:
            expected = G(*args)
        except Exception as err:
            raise ValueError(f"the generator cannot draw a batch of {batch} ({type(err).__name__}: "
                             f"{str(err).strip()[:200]}); size views by the input (x.view(x.shape[0], ...)), "
                             "not by a number") from None
        try:
            got = generator_pyfunc.load(str(data), "cpu")(*args)
        except Exception as err:
            got, why = None, f"{type(err).__name__}: {str(err).strip()[:200]}"
    if got is None or got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
        raise ValueError(f"torch.export traced the generator with its batch size fixed at {EXAMPLE_BATCH}: at "
                         f"batch {batch} it " + (f"fails ({why})" if got is None else "computes something else")
                         + "; size views by the input (x.view(x.shape[0], ...)), not by a number")


class Prebuilt:
    """A model folder `save` wrote, copied as the MLflow model being logged (in `Model.log`'s terms, a flavor),
    keeping its flavors, signature, input example and metadata."""

    def __init__(self, folder: Path):
        self.folder = folder

    def save_model(self, path: str, mlflow_model: Any, **_: Any) -> None:
        from mlflow.models import Model

        shutil.copytree(self.folder, path)
        built = Model.load(os.path.join(path, "MLmodel"))
        for field in ("flavors", "signature", "saved_input_example_info", "metadata", "model_size_bytes"):
            setattr(mlflow_model, field, getattr(built, field))
        mlflow_model.save(os.path.join(path, "MLmodel"))


def log_folder(uri: str, run_id: str, folder: Path, name: str, step: int, register_as: str | None = None,
               aliases: tuple[str, ...] = (), done: dict[str, str] | None = None) -> str:
    """Log the model `save` wrote in `folder` as model `name` of the run, at `step`; with `register_as`, as a new
    version of that registered model, given `aliases`. Returns the logged model's id. Each stage is recorded in
    `done` as it ends (the model made, linked to the run, uploaded and ready, registered), and none is done twice:
    a call again with the same `done` (a retry after an outage, `ganorch sync`) takes up where the last stopped;
    a model the run already logged whole at that step (before a restart) is not logged again. (What `Model.log`
    does, on a client of `uri`: its retry after a half-done upload would link the model to the run twice, which
    MLflow refuses.)"""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    done = {} if done is None else done
    client = store.client(uri)
    run = client.get_run(run_id)
    if "model_id" not in done:
        found = logged_at(client, run, name, step)
        done.update({"model_id": found, "linked": "yes", "logged": "yes"} if found else {
            "model_id": client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                                   params=run.data.params).model_id})
    model_id = done["model_id"]
    if "linked" not in done:
        if not any(o.model_id == model_id for o in (run.outputs.model_outputs if run.outputs else [])):
            client.log_outputs(run_id, [LoggedModelOutput(model_id, step)])
        done["linked"] = "yes"
    if "logged" not in done:
        upload(client, model_id, run_id, folder)
        client.finalize_logged_model(model_id, LoggedModelStatus.READY)
        done["logged"] = "yes"
    if register_as and "version" not in done:
        done["version"] = register(uri, model_id, register_as, aliases, folder)
        client.set_tag(run_id, TAG_REGISTERED, f"{register_as} version {done['version']}: {name}")
    return model_id


def upload(client: Any, model_id: str, run_id: str, folder: Path) -> None:
    """The model folder as logged model `model_id`'s artifacts, its MLmodel naming the model and the run."""
    from mlflow.models import Model

    model = client.get_logged_model(model_id)
    with tempfile.TemporaryDirectory(prefix="ganorch-model-") as tmp:
        described = Model(artifact_path=model.artifact_location, run_id=run_id, model_uuid=model_id,
                          model_id=model_id)
        Prebuilt(folder).save_model(os.path.join(tmp, "model"), described)
        client.log_model_artifacts(model_id, os.path.join(tmp, "model"))


def logged_at(client: Any, run: Any, name: str, step: int) -> str | None:
    """The id of model `name` the run logged at `step` (whole: READY), if it did."""
    from mlflow.entities import LoggedModelStatus

    for output in run.outputs.model_outputs if run.outputs else []:
        model = client.get_logged_model(output.model_id)
        if model.name == name and output.step == step and model.status == LoggedModelStatus.READY:
            return model.model_id
    return None


def registered_as(client: Any, name: str, model_id: str) -> str | None:
    """The version of registered model `name` made of logged model `model_id`, if there is one."""
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.source == f"models:/{model_id}":
            return str(version.version)
    return None


def version_description(uri: str, model_id: str, folder: Path | None = None) -> str:
    """What a registered version holds, in a line: the job, the step, the FID, the network and its inputs. Read
    from `folder`, the model's local copy, when given; else from MLflow."""
    from mlflow.models import Model
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with tempfile.TemporaryDirectory(prefix="ganorch-model-") as tmp:
        if folder is not None:
            path = str(folder / "MLmodel")
        else:
            location = store.client(uri).get_logged_model(model_id).artifact_location
            path = get_artifact_repository(location, tracking_uri=uri).download_artifacts("MLmodel", tmp)
        meta = (Model.load(path).metadata or {}).get(METADATA_KEY, {})
    spec = meta.get("spec") or {}
    model = spec.get("model") or {}
    fid = f", FID {meta['fid']:.2f}" if isinstance(meta.get("fid"), (int, float)) else ""
    classes = f", conditional on {meta['num_classes']} classes" if meta.get("num_classes") else ""
    shape = "x".join(str(n) for n in meta.get("image_shape", []))
    return (f"G_ema of ganorch job {spec.get('name', '?')} at step {meta.get('step', '?')}{fid}: "
            f"{str(model.get('family', '')).upper()} {shape}, latent {meta.get('latent_dim', '?')}{classes}. "
            f"From run {meta.get('run_id', '?')}.")


def register(uri: str, model_id: str, name: str, aliases: tuple[str, ...] = (), folder: Path | None = None) -> str:
    """Logged model `model_id` as a version of registered model `name` (made if missing) in the registry of
    tracking URI `uri`, given `aliases`; the version. Called again, it finds the version it made. (What
    `mlflow.register_model` does, on a client of `uri` rather than the process's registry URI.) `folder`: the
    model's local copy, if at hand."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    client = store.client(uri)
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = registered_as(client, name, model_id)
    if version is None:
        with store.process_uris(uri):  # the registry store resolves a models:/ source through them
            version = str(client.create_model_version(name, f"models:/{model_id}", model_id=model_id,
                                                      description=version_description(uri, model_id, folder)).version)
    if not client.get_registered_model(name).description:  # a team's own description stays
        client.update_registered_model(name, description=(
            f"Generators trained by ganorch. Draw images with `ganorch sample models:/{name}/latest --grid "
            f"samples.png`, or in Python: `mlflow.pyfunc.load_model('models:/{name}/latest').predict({{'z': z}})` "
            "(z: float32 (N, latent_dim); a conditional generator also takes 'labels', int64 (N,)); each "
            "version's description says what it is."))
    linked = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    if not any(v.get("name") == name and str(v.get("version")) == version for v in linked):
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
            [*linked, {"name": name, "version": version}])})  # the model's page links its versions
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)
    return version
