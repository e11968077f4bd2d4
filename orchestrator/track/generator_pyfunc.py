"""The python_function flavor of a ganorch generator model: loads the model's `data/model.pt2` (G_ema exported with
torch.export) on a device and maps latents (and labels) to images. Shipped in the model's `code/` folder, so it
imports nothing of ganorch: loading the model needs torch, numpy and MLflow only.

    mlflow.pyfunc.load_model(uri).predict({"z": z})                     # z: float32 (N, latent_dim)
    mlflow.pyfunc.load_model(uri).predict({"z": z, "labels": labels})   # conditional: labels int64 (N,)
    mlflow.pyfunc.load_model(uri, model_config={"device": "cuda:1"})    # default: CUDA when present, else CPU
"""

import os
from typing import Any

import numpy as np
import torch

PROGRAM_FILE = "model.pt2"


class GeneratorModel:
    """G_ema on `device`: predict(z or {"z", "labels"}) -> images float32 (N, C, H, W) in [-1, 1], as numpy."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.module, self.device = module, device

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        if isinstance(data, dict):
            z, labels = data["z"], data.get("labels")
        else:  # a bare array: the latents of an unconditional generator
            z, labels = data, None
        inputs = [torch.as_tensor(np.asarray(z, dtype=np.float32), device=self.device)]
        if labels is not None:
            inputs.append(torch.as_tensor(np.asarray(labels, dtype=np.int64), device=self.device))
        with torch.no_grad():
            return self.module(*inputs).float().cpu().numpy()


def load(data_path: str, device: str | torch.device | None = None) -> torch.nn.Module:
    """The exported generator as a module on `device` (default: CUDA when present, else CPU). An exported program's
    tensors cannot be moved with `.to()`: torch.export's own pass moves them. Where MLflow disallows pickle
    (MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false), an archive with anything but tensors and plain data is refused
    unread, as `mlflow.pytorch.load_model` refuses it."""
    import mlflow.pytorch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = os.path.join(data_path, PROGRAM_FILE)
    if not mlflow.pytorch._is_pickle_deserialization_allowed():  # as mlflow.pytorch.load_model checks a pt2 file
        mlflow.pytorch._validate_pt2_archive_is_pickle_free(path)
    program = torch.export.load(path)
    if device.type != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return program.module()


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> GeneratorModel:
    """MLflow's entry point for `mlflow.pyfunc.load_model`."""
    device = (model_config or {}).get("device")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return GeneratorModel(load(data_path, device), device)
