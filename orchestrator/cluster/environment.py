"""What a submitted job takes along: the working directory, ganorch's code as it is here, and this environment's MLflow
settings as a small package (never as Ray env vars, which Ray logs); and, in the job's driver, taking them back."""

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from orchestrator.track import store
from orchestrator.track.redact import redact

# Not uploaded with the working directory: local results and stores (Ray also skips what .gitignore and
# .rayignore list).
EXCLUDES = ["mlflow.db", "mlruns/", "mlartifacts/", ".git/", "__pycache__/", "*.pt", ".ganorch/"]
ENV_PACKAGE, ENV_FILE = "ganorch_submitted_env", "mlflow_env.json"  # MLflow's settings, sent with a job


def runtime_env(workdir: Path, scratch: str) -> dict[str, Any]:
    """The working directory; ganorch's packages as they are here (unless the working directory holds them); and
    this environment's MLflow settings and credentials, as a package written in `scratch`. Not as env_vars: Ray's
    runtime-env agent logs those, and its dashboard shows them."""
    packages = [Path(importlib.util.find_spec(name).submodule_search_locations[0])
                for name in ("orchestrator", "gan_models")]
    modules = [str(p) for p in packages if not p.is_relative_to(workdir)]
    if store.environment():
        package = Path(scratch, ENV_PACKAGE)
        package.mkdir()
        (package / "__init__.py").write_text('"""MLflow settings that `ganorch submit` sent with a job."""\n')
        (package / ENV_FILE).write_text(json.dumps(store.environment()))
        modules.append(str(package))
    env: dict[str, Any] = {"working_dir": str(workdir), "excludes": EXCLUDES}
    if modules:
        env["py_modules"] = modules
    return env


def adopt_submitted_environment() -> None:
    """In a submitted job's driver: take the MLflow settings `ganorch submit` sent (over the cluster's own)."""
    found = importlib.util.find_spec(ENV_PACKAGE)
    if found is not None and found.submodule_search_locations:
        store.adopt(json.loads(Path(found.submodule_search_locations[0], ENV_FILE).read_text()))


def warn_local_tracking() -> None:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        print("ganorch: note: MLFLOW_TRACKING_URI is not set here; the job is tracked where the cluster's "
              "MLFLOW_TRACKING_URI points (cluster.yaml: its MLflow server)", file=sys.stderr)
    elif store.is_local_store(uri):
        print(f"ganorch: warning: MLFLOW_TRACKING_URI is a local store ({redact(uri)}); the job writes to "
              "that path on the cluster's machines, not to this one", file=sys.stderr)
