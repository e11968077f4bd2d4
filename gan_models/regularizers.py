"""Discriminator regularizers. Each adds one penalty to the D loss on the steps it is due."""

from typing import Callable

import torch

# n -> n numbers uniform in [0, 1): this rank's share of a draw made for the global batch, so that N workers x batch B
# draw what 1 worker x batch N*B draws.
Uniform = Callable[[int], torch.Tensor]


class Regularizer:
    name: str
    every: int = 1                # applied on every `every`-th D step
    needs_real_grad: bool = False  # whether it differentiates D(real) with respect to the real images

    def penalty(self, D: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, real_scores: torch.Tensor,
                fake: torch.Tensor, scale: torch.Tensor | float = 1.0, uniform: Uniform | None = None) -> torch.Tensor:
        """D scores images (under fixed labels when class-conditional). `scale`: the fp16 loss scale (a tensor, so
        reading it needs no host sync), so the input gradient does not underflow (PyTorch AMP's recipe). `uniform` draws the random numbers a penalty
        needs; torch.rand (this process alone) when None."""
        raise NotImplementedError


def _input_gradient(scores: torch.Tensor, inputs: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    (grad,) = torch.autograd.grad(scores.float().sum() * scale, inputs, create_graph=True)
    return grad.float().flatten(1) / scale


class GradientPenalty(Regularizer):
    """WGAN-GP: weight * (||grad D(x_hat)|| - 1)^2 on random interpolates of real and fake images."""

    name = "gp"

    def __init__(self, weight: float):
        self.weight = weight

    def penalty(self, D, real, real_scores, fake, scale=1.0, uniform=None):
        draw = uniform or (lambda n: torch.rand(n, device=real.device))
        mix = draw(len(real)).to(real.device, real.dtype).view(-1, 1, 1, 1)
        interpolates = (mix * real.detach() + (1 - mix) * fake.detach()).requires_grad_(True)
        grad = _input_gradient(D(interpolates), interpolates, scale)
        return self.weight * ((grad.norm(2, dim=1) - 1) ** 2).mean()


class R1Penalty(Regularizer):
    """R1 (Mescheder et al., 2018): gamma/2 * ||grad D(x)||^2 on real images. Lazy (StyleGAN2): applied every
    `every` D steps and scaled by `every`, so its average strength does not depend on the interval."""

    name = "r1"
    needs_real_grad = True

    def __init__(self, gamma: float, every: int):
        self.gamma = gamma
        self.every = every

    def penalty(self, D, real, real_scores, fake, scale=1.0, uniform=None):
        grad = _input_gradient(real_scores, real, scale)
        return 0.5 * self.gamma * self.every * grad.pow(2).sum(dim=1).mean()
