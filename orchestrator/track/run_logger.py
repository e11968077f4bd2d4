"""Rank 0's handle on its MLflow run during training: metrics, sample grids, checkpoints, flags and tags."""

import contextlib
import functools
import json
import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from orchestrator.track.outbox import (
    OPS_FILE,
    Outbox,
    first_line,
    outage,
    own_http_settings,
    read_ops,
    sync,
    unsent_root,
)
from orchestrator.track.store import client
from orchestrator.track.tags import BEST_CHECKPOINT_DIR, TAG_BEST_CHECKPOINT, TAG_BEST_FID, TAG_BEST_STEP, TAG_UNSTABLE

if TYPE_CHECKING:
    import torch

SAMPLES_KEY = "samples"  # the sample grids' key in MLflow's image logging
ANIMATION = "training.gif"       # the fixed-noise grid over training, a frame per grid, under samples/
INTERPOLATION = "interpolation.png"
MAX_FRAMES = 200                 # grids kept for the GIF (in host memory): beyond, the kept are thinned
MAX_FRAME_SIDE = 512             # larger grids are kept for it shrunk
FRAME_MS = 200


def image_grid(images: "torch.Tensor", nrow: int) -> np.ndarray:
    """Images in [-1, 1], shape (N, C, H, W) -> one uint8 HxWxC grid."""
    from torchvision.utils import make_grid

    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


class RunLogger:
    """Rank 0's handle on the run the driver created. Reads happen at once; writes go through an Outbox, so an
    MLflow outage never stops training (`close` says where what could not be sent was kept)."""

    def __init__(self, uri: str, run_id: str, notify: Callable[[str], None] | None = None, held: bool = False):
        self.uri = uri
        self.run_id = run_id
        self.outbox = Outbox(uri, run_id, "rank0", notify, held)
        self.logged_through: dict[str, int] = {}  # metric -> the last step logged before a resume
        self.floor = -1                            # when those could not be read: the checkpoint's step
        self.best_fid = math.inf                   # the FID of the run's best checkpoint before a resume,
        self.best_step = 0                         # and its step
        self.frames: dict[int, np.ndarray] = {}    # step -> sample grid, for the GIF (filled by the outbox's thread)
        self.grids = 0                             # sample grids put in the outbox by this start

    @functools.cached_property
    def client(self) -> Any:
        """For reads (at a resume): made when first needed, so a fresh run's first step waits on no MLflow import."""
        return client(self.uri)

    def resuming(self, step: int) -> None:
        """Training goes on from the checkpoint of `step`, so it takes again steps that may have been logged after
        it: those are not logged twice. On the same hardware a resume retakes them exactly. (With MLflow out of
        reach, only the steps up to the checkpoint's are known to be logged.) The run's best checkpoint, if any,
        is replaced only by a better one. What an earlier start of the run kept on this host (the writes it had
        not sent when it failed, MLflow down) is sent first, so that it is among what was logged; if it cannot be,
        its steps are left to it (sent at `close`, or by `ganorch sync`), not logged again."""
        kept = self.kept_before()
        earlier: dict[str, int] = {}  # metric -> the last step kept, read before any of it is sent
        try:
            for op in read_ops(kept / OPS_FILE):
                for key in op["values"] if op["op"] == "metrics" else ():
                    earlier[key] = max(earlier.get(key, -1), op["step"])
        except (OSError, ValueError, KeyError) as err:  # a file training must not die of: `ganorch sync` tells more
            self.warn(f"could not read what an earlier start of this run kept in {kept} ({first_line(err)})")
        try:
            with own_http_settings():  # with MLflow down, no minutes of MLflow's own retries at every start
                self.send_kept(kept)
                run = self.client.get_run(self.run_id)
                self.best_fid = float(run.data.tags.get(TAG_BEST_FID, math.inf))
                self.best_step = int(run.data.tags.get(TAG_BEST_STEP, 0))
                for key in run.data.metrics:
                    history = self.client.get_metric_history(self.run_id, key)
                    self.logged_through[key] = max((m.step for m in history), default=-1)
        except Exception:
            self.floor = step
            for key, last in earlier.items():
                self.logged_through[key] = max(self.logged_through.get(key, -1), last)

    def kept_before(self) -> Path:
        return unsent_root() / self.run_id / self.outbox.name

    def send_kept(self, kept: Path) -> None:
        if not (kept / "run.json").is_file():
            return
        try:
            sync(kept, self.uri)
        except Exception as err:
            if outage(err):
                raise
            self.warn(f"what an earlier start of this run kept in {kept} could not be sent ({first_line(err)}); "
                      "`ganorch sync` on this host says more")

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        fresh = {k: v for k, v in metrics.items() if step > max(self.logged_through.get(k, -1), self.floor)}
        if fresh:
            self.outbox.metrics(step, fresh)

    def log_samples(self, step: int, images: "torch.Tensor", columns: int) -> None:
        """`images` as one grid `samples/step_N.png`, and as MLflow's image `samples` at `step` (its charts show it
        with a step slider, side by side across runs), drawn by the outbox's thread from a copy in host memory."""
        self.grids += 1
        self.outbox.render(f"step_{step:06d}.png", self.grid_writer(images, columns, frame=step), "samples",
                           image_key=self.image_key(SAMPLES_KEY, step), step=step)

    def image_key(self, key: str, step: int) -> str | None:
        """`key`, unless a start before this one may have logged the image of `step` (a step retaken after a
        restart): MLflow's image log does not replace an image, it adds one."""
        return key if step > max(self.floor, *self.logged_through.values(), -1) else None

    def grid_writer(self, images: "torch.Tensor", columns: int, frame: int | None = None) -> Callable[[Path], None]:
        """What writes `images` (copied to host memory now) as a grid PNG; with `frame`, keeps it for the GIF."""
        images = images.detach().cpu()

        def write(path: Path) -> None:
            from PIL import Image

            grid = image_grid(images, columns)
            Image.fromarray(grid).save(path)
            if frame is not None:
                self.keep_frame(frame, grid)

        return write

    def keep_frame(self, step: int, grid: np.ndarray) -> None:
        """Keep a grid for the GIF: shrunk to MAX_FRAME_SIDE; past MAX_FRAMES, the frame whose neighbours are
        closest goes, so the frames kept stay spread over training."""
        factor = -(-max(grid.shape[:2]) // MAX_FRAME_SIDE)
        if factor > 1:
            from PIL import Image

            grid = np.asarray(Image.fromarray(grid).reduce(factor))
        self.frames[step] = grid
        if len(self.frames) > MAX_FRAMES:
            steps = sorted(self.frames)
            closest = min(range(1, len(steps) - 1), key=lambda i: steps[i + 1] - steps[i - 1])
            del self.frames[steps[closest]]

    def log_animation(self) -> None:
        """`samples/training.gif`: the fixed-noise grids of this start of the workers, a frame each in step order
        (written by the outbox's thread after the grids before it). None when this start logged no grid."""
        if not self.grids:
            return

        def write(path: Path) -> None:
            from PIL import Image

            frames = [Image.fromarray(grid) for _, grid in sorted(self.frames.items())]
            frames[0].save(path, save_all=True, append_images=frames[1:], duration=FRAME_MS, loop=0)

        self.outbox.render(ANIMATION, write, "samples")

    def log_interpolation(self, step: int, images: "torch.Tensor", columns: int) -> None:
        """`samples/interpolation.png`: G_ema along paths between latents, a path a row; also MLflow's image
        `interpolation` at `step`."""
        self.outbox.render(INTERPOLATION, self.grid_writer(images, columns), "samples",
                           image_key=self.image_key("interpolation", step), step=step)

    def log_generator(self, name: str, G: "torch.nn.Module", step: int, *, latent_dim: int, num_classes: int,
                      image_shape: tuple[int, int, int], metadata: dict[str, Any], register_as: str | None = None,
                      aliases: tuple[str, ...] = ()) -> None:
        """G as MLflow model `name` of the run at `step` (orchestrator.track.generator_model), exported here (on
        this thread: torch.export patches process-wide state, so not beside training) and logged by the outbox;
        with `register_as`, a new version of that registered model. A generator torch.export cannot trace is
        reported, and the run goes on."""
        import tempfile

        from orchestrator.track import generator_model

        made = Path(tempfile.mkdtemp(prefix="ganorch-model-"))
        try:
            generator_model.save(G, made / "model", latent_dim=latent_dim, num_classes=num_classes,
                                 image_shape=image_shape, metadata={**metadata, "step": step, "run_id": self.run_id})
            self.outbox.model(made / "model", name, step, register_as, aliases)
        except Exception as err:  # a generator torch.export cannot take: the run goes on
            self.warn(f"no MLflow model {name}: {err if isinstance(err, ValueError) else repr(err)[:300]}")
        finally:
            shutil.rmtree(made, ignore_errors=True)

    def log_dataset(self, record: Callable[[], dict[str, Any]]) -> None:
        """The training data as the run's MLflow dataset input (`record()`: orchestrator.data.record's)."""
        self.outbox.dataset(record)

    def log_json(self, content: Any, artifact_file: str) -> None:
        """`content` as a JSON artifact at `artifact_file` (folder/name.json)."""
        folder, _, name = artifact_file.rpartition("/")

        def write(path: Path) -> None:
            path.write_text(json.dumps(content))

        self.outbox.render(name, write, folder)

    def release(self) -> None:
        """Start sending, for a logger made `held`."""
        self.outbox.release()

    def wait_logged(self, timeout_s: float = 120.0) -> None:
        """Wait until what was logged so far is in MLflow, unless MLflow cannot be reached: a restart from a
        checkpoint logs again only the steps after it, so the steps before it must not be lost with this process."""
        self.outbox.wait_sent(timeout_s)

    def log_checkpoint(self, step: int, path: Path, keep: int | None = None) -> str:
        """Log the checkpoint (and its checksum) as `checkpoints/step_N/`; with `keep`, delete all but the latest
        `keep` of those. Returns the checkpoint's artifact path."""
        artifact_dir = f"checkpoints/step_{step:06d}"
        self.outbox.artifacts(sorted(path.parent.iterdir()), artifact_dir)
        if keep is not None:
            self.outbox.prune(keep)
        return f"{artifact_dir}/{path.name}"

    def log_best_checkpoint(self, step: int, path: Path, fid: float) -> None:
        """Replace the run's best checkpoint (`checkpoints/best/`) and say which step and FID it holds."""
        self.outbox.artifacts(sorted(path.parent.iterdir()), BEST_CHECKPOINT_DIR)
        self.outbox.tags({TAG_BEST_CHECKPOINT: f"{BEST_CHECKPOINT_DIR}/{path.name}", TAG_BEST_FID: f"{fid:.4f}",
                          TAG_BEST_STEP: step})

    def log_flag(self, name: str, step: int, description: str) -> None:
        """A stability flag: metric `unstable.<name>` = 1 at its step, and a tag with `description`."""
        self.log_metrics(step, {f"unstable.{name}": 1.0})
        self.set_tag(TAG_UNSTABLE + name, description)

    def record_restart(self, where: str, resize: str | None = None) -> None:
        self.outbox.restart(where, resize)

    def warn(self, text: str) -> None:
        """A warning on the driver's terminal (through the progress board, on a worker)."""
        self.outbox.notify(f"warning: {text}")

    def set_tag(self, key: str, value: Any) -> None:
        self.outbox.tags({key: value})

    def close(self, wait_s: float) -> Path | None:
        """Send what is left, waiting up to `wait_s` for MLflow; returns where what it did not take was kept. What
        an earlier start kept here and MLflow could not take at this start's beginning is sent now if it can be
        (its tags but those this start set since), or is where this returns."""
        kept = self.outbox.close(wait_s)
        earlier = self.kept_before()
        if kept is None and (earlier / "run.json").is_file():
            with own_http_settings(), contextlib.suppress(Exception):
                sync(earlier, self.uri, newer_tags=self.outbox.tagged)
            if earlier.exists():
                return earlier
        return kept
