"""Which Inception-v3 weights evaluation uses, if any: a named file, torch.hub's cache, or a download only when the spec
asks for one."""

from pathlib import Path

from gan_models.inception import WEIGHTS_URL, download_weights, hub_file
from orchestrator.spec import EvalSpec


def inception_weights(spec: EvalSpec) -> tuple[Path | None, str]:
    """The Inception weights file evaluation will use (None: Inception features off) and a line saying why.
    Downloads only with eval.inception 'download'. Raises ValueError for a named file that is missing."""
    if spec.inception == "off":
        return None, "off (eval.inception: off)"
    if spec.inception_weights:
        path = Path(spec.inception_weights).expanduser()
        if not path.is_file():
            raise ValueError(f"eval.inception_weights: no file at {path}")
        return path, f"on: {path}"
    if hub_file().is_file():
        return hub_file(), f"on: {hub_file()}"
    if spec.inception == "download":
        try:
            return download_weights(), f"on: {hub_file()} (downloaded)"
        except OSError as err:  # no network, refused, disk full
            raise ValueError(f"eval.inception: 'download' could not fetch {WEIGHTS_URL}: {err}") from None
    return None, (f"off: no Inception weights in torch.hub's cache ({hub_file()}); name a local copy of "
                  f"{WEIGHTS_URL.rsplit('/', 1)[1]} in eval.inception_weights, or set eval.inception: download "
                  "to fetch it (needs internet)")
