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

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.track import generator_pyfunc
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
        mlflow.pytorch.save_model(G, str(folder), mlflow_model=model, serialization_format="pt2",
                                  signature=signature(latent_dim, num_classes, image_shape),
                                  input_example=tuple(inputs.values()), pip_requirements=requirements(),
                                  code_paths=[generator_pyfunc.__file__])
    except Exception as err:
        raise ValueError(f"torch.export could not trace the generator ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0][:200] if str(err).strip() else ''})") from err
    # The pytorch flavor's pyfunc takes one array and refuses to move a pt2 program to CUDA: ganorch's takes both.
    model.flavors.pop(pyfunc.FLAVOR_NAME, None)
    pyfunc.add_to_model(model, loader_module=Path(generator_pyfunc.__file__).stem, data="data", code="code",
                        conda_env="conda.yaml", python_env="python_env.yaml", model_config={"device": None})
    (folder / "input_example.json").unlink(missing_ok=True)  # a one-array example; the named one replaces it
    _save_example(model, inputs, str(folder))
    model.save(str(folder / "MLmodel"))
    return folder


class Prebuilt:
    """A 'flavor' for `mlflow.models.Model.log` that logs a model folder `save` wrote, keeping its flavors,
    signature, input example and metadata."""

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
               aliases: tuple[str, ...] = ()) -> str:
    """Log the model `save` wrote in `folder` as model `name` of the run, at `step`; with `register_as`, as a new
    version of that registered model, given `aliases`. Returns the logged model's id."""
    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(uri)  # Model.log takes the process's tracking URI and experiment
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id)
    info = Model.log(artifact_path=None, name=name, flavor=Prebuilt(folder), run_id=run_id, step=step,
                     flavor_name="pytorch", serialization_format="pt2", validate_serving_input=False)
    if register_as:
        version = register(uri, info.model_id, register_as, aliases)
        mlflow.MlflowClient(uri).set_tag(run_id, TAG_REGISTERED, f"{register_as} version {version}: {name}")
    return info.model_id


def register(uri: str, model_id: str, name: str, aliases: tuple[str, ...] = ()) -> str:
    """Logged model `model_id` as a new version of registered model `name` (made if missing), given `aliases`;
    the version."""
    import mlflow

    mlflow.set_registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(f"models:/{model_id}", name).version
    client = mlflow.MlflowClient(uri)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, str(version))
    return str(version)
