"""Ray Train's torch backend, with DDP's first import done early. DDP's first wrapper imports `torch._dynamo` (seconds
of CPU), which a worker would otherwise do in its train function, just before its first step. Here each worker
imports it on a thread from the moment Ray Train sets up the process group, while the worker waits on the others and
on Ray Train's controller; the train function waits for that thread first (`wait`), so no import runs beside it."""

import importlib
import threading

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

DDP_IMPORTS = ("torch._dynamo",)
THREAD_NAME = "ganorch-ddp-imports"


class WarmTorchConfig(TorchConfig):
    """TorchConfig, whose backend starts DDP's imports on every worker before it sets up the process group."""

    @property
    def backend_cls(self):
        return _WarmTorchBackend


class _WarmTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config):
        worker_group.execute(start_imports)
        super().on_start(worker_group, backend_config)


def start_imports() -> None:
    """On a worker: import DDP_IMPORTS on a thread of their own (torch itself first, on this one)."""
    import torch  # noqa: F401  (torch.distributed, torch.fx, torch.export with it: what the process group needs)

    threading.Thread(target=lambda: [importlib.import_module(name) for name in DDP_IMPORTS], daemon=True,
                     name=THREAD_NAME).start()


def wait() -> None:
    """Wait until the imports `start_imports` started are done (at once, if none were)."""
    for thread in threading.enumerate():
        if thread.name == THREAD_NAME:
            thread.join()
