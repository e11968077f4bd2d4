"""Where ganorch caches what it can make again: parsed datasets (here) and domain classifiers (orchestrator.evaluate)."""

import os
from pathlib import Path
from typing import Callable

import numpy as np


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganorch"


def cached_array(name: str, source: Path, make: Callable[[], np.ndarray], shape: tuple[int, ...],
                 dtype: type) -> np.ndarray:
    """`make()`'s array, kept as data/<name>-<source's size and mtime>.npy in the cache folder, so that every process
    after the first on this machine reads it instead of making it. A cached file of another shape or type (cut
    short, say) is made again; a cache that cannot be written (a read-only home) is left alone."""
    stat = source.stat()
    path = default_cache_dir() / "data" / f"{name}-{stat.st_size}-{stat.st_mtime_ns}.npy"
    try:
        kept = np.load(path)
        if kept.shape == shape and kept.dtype == dtype:
            return kept
    except (OSError, ValueError, EOFError):
        pass
    made = make()
    assert made.shape == shape and made.dtype == dtype, (made.shape, made.dtype)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # other processes may write it too
        with open(partial, "wb") as f:
            np.save(f, made)
        os.replace(partial, path)
    except OSError:
        pass
    return made
