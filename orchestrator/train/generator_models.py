"""G_ema as MLflow models (orchestrator.track.generator_model): rank 0's at the end of a run, and one made afterwards
from a run's checkpoint (a sweep's best trial that its scheduler stopped before it could log its own)."""

import copy
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.spec import parse
from orchestrator.track import generator_model
from orchestrator.track.generator_model import BEST_MODEL_NAME, MODEL_NAME
from orchestrator.track.outbox import own_http_settings
from orchestrator.track.redact import masked
from orchestrator.train import locate
from orchestrator.train.networks import build_networks


def log_generators(logger: Any, t: Any, out: Any) -> None:
    """Rank 0, at the end (`t` a Training, `out` the loop's Outcome): G_ema as the run's MLflow model `generator`,
    registered as tracking.register_as unless train.stop_on stopped the run; and G_ema at the best FID as
    `generator_best` (from the run's best checkpoint when an earlier start of the workers found it)."""
    m = t.spec.model
    shape = {"latent_dim": m.latent_dim, "num_classes": t.classes,
             "image_shape": (m.channels, m.image_size, m.image_size)}
    meta = {"spec": masked(t.spec.to_dict())}
    register_as = t.spec.tracking.register_as if out.stopped is None else None
    logger.log_generator(MODEL_NAME, t.ema.module, t.step, **shape, metadata=meta, register_as=register_as)
    best_state = out.best_generator
    if best_state is None and out.best_step:  # found by an earlier start of the run: its best checkpoint
        try:
            with own_http_settings():  # MLflow down: no minutes of its own retries
                best_state = locate.resolve(logger.run_id, True, logger.uri).state["generator_ema"]
        except Exception as err:  # MLflow down, say: the run has its best checkpoint still
            logger.warn(f"no MLflow model {BEST_MODEL_NAME}: the best checkpoint could not be read "
                        f"({type(err).__name__}: {str(err).strip()[:200]})")
    if best_state is not None:
        best = copy.deepcopy(t.ema.module)
        best.load_state_dict(best_state)
        logger.log_generator(BEST_MODEL_NAME, best, out.best_step, **shape, metadata={**meta, "fid": out.best_fid})


def log_from_checkpoint(uri: str, run_id: str) -> str:
    """Log G_ema of run `run_id`'s best checkpoint (as `generator_best`), or else of its latest (`generator`), as a
    model of the run; its id. ValueError when the run has no checkpoint."""
    try:
        found, name = locate.resolve(run_id, True, uri), BEST_MODEL_NAME
    except ValueError:
        found, name = locate.resolve(run_id, False, uri), MODEL_NAME
    state = found.state
    G, spec, classes = checkpoint_generator(state, found.description)
    m = spec.model
    with tempfile.TemporaryDirectory(prefix="ganorch-model-") as tmp:
        folder = generator_model.save(G, Path(tmp) / "model", latent_dim=m.latent_dim, num_classes=classes,
                                      image_shape=(m.channels, m.image_size, m.image_size),
                                      metadata={"spec": state["spec"], "step": state["step"], "run_id": run_id})
        return generator_model.log_folder(uri, run_id, folder, name, int(state["step"]))


def checkpoint_generator(state: dict[str, Any], source: str) -> tuple[Any, Any, int]:
    """G_ema of a checkpoint's `state` (from `source`), built from the checkpoint's own spec; with that JobSpec and
    the number of classes (0: unconditional)."""
    spec = parse(state["spec"], source)
    classes = int(state.get("num_classes", 0))
    G, _ = build_networks(spec, classes)
    G.load_state_dict(state["generator_ema"])
    return G.eval(), spec, classes
