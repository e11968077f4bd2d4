"""Where ganorch caches what it can make again: parsed datasets (here) and domain classifiers (orchestrator.evaluate)."""

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganorch"


def cached_array(name: str, source: Path, make: Callable[[], np.ndarray], shape: tuple[int, ...],
                 dtype: type) -> np.ndarray:
    """`make()`'s array, kept as data/<name>-<source's size and mtime>.npy in the cache folder, so that every process
    after the first on this machine reads it instead of making it (`name` carries the recipe's version). A file that
    does not load as an array of `shape` and `dtype` (cut short, say) is made again; without a cache that can be
    written (a read-only or missing home), the array is made each time."""
    try:
        stat = source.stat()
        path = default_cache_dir() / "data" / f"{name}-{stat.st_size}-{stat.st_mtime_ns}.npy"
    except (OSError, RuntimeError):  # RuntimeError: no home directory to be found
        path = None
    if path is not None:
        with contextlib.suppress(OSError, ValueError, EOFError):
            kept = np.load(path)
            if kept.shape == shape and kept.dtype == dtype:
                return kept
    made = make()
    if made.shape != shape or made.dtype != dtype:
        raise ValueError(f"{source}: read as {made.shape} {made.dtype}; expected {shape} {dtype.__name__}")
    if path is not None:
        keep(made, path)
    return made


def keep(array: np.ndarray, path: Path) -> None:
    """Write `array` to `path` whole or not at all (other processes may write it at the same time)."""
    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f"{path.name}.", suffix=".partial",
                                         delete=False) as f:
            partial = Path(f.name)
            np.save(f, array)
        os.replace(partial, path)
    except OSError:
        if partial is not None:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
