"""An exponential moving average of the generator's weights, the G that samples and evaluation use."""

import copy

import torch
from torch import nn


class GeneratorEMA:
    """G_ema <- decay * G_ema + (1 - decay) * G after every G step; buffers (BatchNorm statistics) are copied.

    With ramp-up the decay starts small and grows to `decay` as min(decay, (1 + t) / (10 + t)) at step t,
    so the average does not drag the random initial weights along for thousands of steps."""

    def __init__(self, generator: nn.Module, decay: float, rampup: bool = True):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.rampup = rampup
        self.module = copy.deepcopy(generator).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.rampup else self.decay

    @torch.no_grad()
    def update(self, generator: nn.Module, step: int) -> None:
        """One fused update of all parameters and buffers (torch._foreach_*), not a kernel per tensor."""
        torch._foreach_lerp_(list(self.module.parameters()), list(generator.parameters()), 1 - self.decay_at(step))
        buffers = list(self.module.buffers())
        if buffers:
            torch._foreach_copy_(buffers, list(generator.buffers()))
