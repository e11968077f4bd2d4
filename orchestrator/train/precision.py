"""Mixed precision: autocast for the phases' forward passes and, for fp16, a gradient scaler per optimizer."""

import contextlib
from typing import Callable, ContextManager

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, name: str, device: torch.device):
        assert name == "fp32" or name in DTYPES, name
        self.dtype = DTYPES.get(name)
        self.device_type = device.type

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def new_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        return torch.amp.GradScaler(self.device_type) if self.dtype is torch.float16 else None


def loss_scale(scaler: torch.amp.GradScaler | None) -> Callable[[], torch.Tensor | float]:
    """The scaler's current loss scale, read without a host sync: its device tensor (GradScaler.get_scale() reads
    it back), or the initial scale before the first scaled backward creates that tensor; 1 without a scaler."""
    if scaler is None:
        return lambda: 1.0

    def current() -> torch.Tensor | float:
        scale = scaler._get_scale_async()  # PyTorch's private API, as its own GradScaler.unscale_ uses it
        return scale if scale is not None else scaler.get_scale()
    return current
