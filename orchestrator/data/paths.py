"""The one check of a local data folder that needs no torch: that it is there. `ganorch run` makes it before Ray
starts, the sources again as they open the folder."""

import os
from pathlib import Path

from orchestrator.spec import DataSpec


def check_folder(path: str | Path) -> Path:
    """`path` (a local folder of images) expanded; ValueError naming data.path if it is missing or a file."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ValueError(f"data.path: no such directory: {root}")
    if not root.is_dir():
        raise ValueError(f"data.path: {root} is a file; expected a folder of images")
    return root


def check_local_path(data: DataSpec) -> None:
    """A `folder` or `ray-data` source on this machine's disk must be a folder. Not checked for a URI, or for a
    remote cluster (RAY_ADDRESS), whose workers may see paths this machine does not."""
    if data.source in ("folder", "ray-data") and data.path and "://" not in data.path \
            and not os.environ.get("RAY_ADDRESS"):
        check_folder(data.path)
