"""Ray Train's torch backend, with DDP's first import done early. DDP's first wrapper imports `torch._dynamo` (seconds
of CPU), which a worker would otherwise do in its train function, just before its first step. Here each worker
imports it on a thread from the moment Ray Train sets up the process group, while the worker waits on the others and
on Ray Train's controller. Beside that thread run Ray Train's process-group setup and the unpickling of the train
function (which imports ganorch's training modules: they need torch and numpy only, loaded before the thread
starts); the train function waits for the thread before anything else (`wait`)."""

import importlib
import threading
from typing import Any

from ray.train.torch import TorchConfig

DDP_IMPORTS = ("torch._dynamo",)
THREAD_NAME = "ganorch-ddp-imports"
started = threading.Event()  # set on a worker whose backend started the imports


class WarmTorchConfig(TorchConfig):
    """TorchConfig, whose backend starts DDP's imports on every worker before it sets up the process group."""

    @property
    def backend_cls(self) -> type:
        return _WarmTorchBackend


class _WarmTorchBackend(TorchConfig().backend_cls):  # Ray's torch backend, whatever its class
    def on_start(self, worker_group: Any, backend_config: Any, *args: Any, **kwargs: Any) -> None:
        worker_group.execute(start_imports)
        super().on_start(worker_group, backend_config, *args, **kwargs)


def start_imports() -> None:
    """On a worker: import DDP_IMPORTS on a thread of their own (torch itself first, on this one)."""
    import torch  # noqa: F401  (torch.distributed, torch.fx, torch.export with it: what the process group needs)

    started.set()
    threading.Thread(target=import_all, daemon=True, name=THREAD_NAME).start()


def import_all() -> None:
    for name in DDP_IMPORTS:
        importlib.import_module(name)


def wait() -> bool:
    """Wait until the imports `start_imports` started are done (at once, if none were); whether they were started."""
    for thread in threading.enumerate():
        if thread.name == THREAD_NAME:
            thread.join()
    return started.is_set()
