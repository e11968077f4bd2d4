"""A trained generator named the ways a user names one: an MLflow model URI (`runs:/<run id>/generator`,
`models:/<model id>`, `models:/NAME@best`, `models:/NAME/3`, or a downloaded model folder), an MLflow run id (its
generator model; for a run that has none, its latest checkpoint), or a checkpoint file."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator.track import store
from orchestrator.track.generator_model import METADATA_KEY, MODEL_NAME
from orchestrator.train import locate
from orchestrator.train.generator_models import checkpoint_generator

MODEL_URI = re.compile(r"[a-z][a-z0-9+.-]*:/")


@dataclass
class Generator:
    """G_ema ready to draw from, and what drawing needs to know."""
    module: torch.nn.Module
    latent_dim: int
    num_classes: int                    # 0: unconditional
    image_shape: tuple[int, int, int]   # C, H, W
    step: int                           # the training step it was taken at
    source: str                         # what it was loaded from, as a URI or a path
    spec: dict[str, Any] | None = None  # the job spec it was trained with (credentials masked), when known
    run_id: str | None = None           # the MLflow run that trained it, when known

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return self.module(z) if labels is None else self.module(z, labels)


def resolve(source: str, uri: str, device: torch.device) -> Generator:
    """The generator `source` names, on `device`. ValueError naming what is wrong."""
    path = Path(source).expanduser()
    if path.is_dir() and (path / "MLmodel").is_file():
        return from_model_folder(path, str(path), device)
    if path.exists():
        return from_checkpoint(locate.resolve(source, False, uri), device)
    if MODEL_URI.match(source):
        return from_model_uri(source, uri, device)
    if locate.RUN_ID.fullmatch(source):
        model_uri = run_model(source, uri)
        if model_uri is None:  # a run from before generators were logged as models: its latest checkpoint
            try:
                return from_checkpoint(locate.resolve(source, False, uri), device)
            except ValueError as err:
                raise ValueError(f"{err}, and no generator model") from None
        return from_model_uri(model_uri, uri, device)
    raise ValueError(f"{source}: no such file, not an MLflow model URI (runs:/..., models:/...) and not an MLflow "
                     "run id (32 hex digits)")


def run_model(run_id: str, uri: str) -> str | None:
    """`models:/<id>` of run `run_id`'s generator model, or None when it logged none. ValueError for no such run."""
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    client = store.client(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ValueError(f"{run_id}: no MLflow run with this id in {uri}") from None
    found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'",
                                        order_by=[{"field_name": "creation_time", "ascending": False}])
    ready = [m for m in found if m.status == LoggedModelStatus.READY]  # not one whose upload failed half-way
    return f"models:/{ready[0].model_id}" if ready else None


def from_model_uri(model_uri: str, uri: str, device: torch.device) -> Generator:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        with store.process_uris(uri):  # a models:/NAME URI is read from the process's registry
            folder = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    except (MlflowException, OSError) as err:
        raise ValueError(f"{model_uri}: cannot be loaded from {uri} ({str(err).strip().splitlines()[0][:200]})") \
            from None
    return from_model_folder(Path(folder), model_uri, device)


def from_model_folder(folder: Path, source: str, device: torch.device) -> Generator:
    from mlflow.models import Model

    from orchestrator.track import generator_pyfunc

    model = Model.load(str(folder / "MLmodel"))
    meta = (model.metadata or {}).get(METADATA_KEY)
    if meta is None or not (folder / "data" / generator_pyfunc.PROGRAM_FILE).is_file():
        raise ValueError(f"{source}: not a ganorch generator model (no {METADATA_KEY} metadata, or no "
                         f"data/{generator_pyfunc.PROGRAM_FILE})")
    module = generator_pyfunc.load(str(folder / "data"), device)
    return Generator(module, int(meta["latent_dim"]), int(meta["num_classes"]), tuple(meta["image_shape"]),
                     int(meta.get("step", 0)), source, meta.get("spec"), model.run_id)


def from_checkpoint(found: Any, device: torch.device) -> Generator:
    """From a locate.Source: G_ema built from the checkpoint's own spec."""
    G, spec, classes = checkpoint_generator(found.state, found.description)
    m = spec.model
    return Generator(G.to(device), m.latent_dim, classes, (m.channels, m.image_size, m.image_size),
                     int(found.state["step"]), found.description, found.state["spec"], found.run_id)
