"""Differentiable augmentation of every image D sees (DiffAugment, Zhao et al. 2020), with the adaptive
probability of StyleGAN2-ADA (Karras et al. 2020).

Images are in [-1, 1] and stay there. Each transform of the policy is applied to each image with probability `p`
(1 for DiffAugment); gradients flow through every transform to G. The random numbers come from `uniform`, n -> n
numbers in [0, 1): this rank's share of a draw made for the global batch, so N workers x batch B augment exactly
as 1 worker x batch N*B. Every call draws the same count whatever `p` is, so the noise stream does not depend on it.
"""

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Uniform = Callable[[int], torch.Tensor]

# Policy names -> the transforms they stand for, in the order they are applied.
POLICIES = {"color": ("brightness", "saturation", "contrast"), "translation": ("translation",),
            "cutout": ("cutout",)}
BLACK = -1.0  # what translation shifts in and cutout leaves: the low end of the images' range


def brightness(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Towards white (u > 0.5) or black (u < 0.5), by up to half the way: an affine map that keeps [-1, 1]."""
    b = (u - 0.5).view(-1, 1, 1, 1)
    return x + b.clamp(min=0) * (1 - x) + b.clamp(max=0) * (1 + x)


def saturation(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Each pixel's colour away from or towards its grey by a factor in [0, 2); a no-op on one channel."""
    grey = x.mean(dim=1, keepdim=True)
    return ((x - grey) * (2 * u).view(-1, 1, 1, 1) + grey).clamp(-1, 1)


def contrast(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Each image away from or towards its mean by a factor in [0.5, 1.5), clipped to the range as torchvision's
    adjust_contrast does."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * (u + 0.5).view(-1, 1, 1, 1) + mean).clamp(-1, 1)


def translation(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, ratio: float) -> torch.Tensor:
    """Shift each image by whole pixels, up to `ratio` of its side in each direction, filling with black."""
    n, _, height, width = x.shape
    reach_y, reach_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    shift_y = (u * (2 * reach_y + 1)).floor().long().clamp(max=2 * reach_y) - reach_y
    shift_x = (v * (2 * reach_x + 1)).floor().long().clamp(max=2 * reach_x) - reach_x
    rows = torch.arange(height, device=x.device).view(1, -1) - shift_y.view(-1, 1)  # source row of each output row
    cols = torch.arange(width, device=x.device).view(1, -1) - shift_x.view(-1, 1)
    padded = F.pad(x, (1, 1, 1, 1), value=BLACK)  # an index outside the image lands on the border of black
    rows, cols = rows.clamp(-1, height) + 1, cols.clamp(-1, width) + 1
    batch = torch.arange(n, device=x.device).view(-1, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, ratio: float) -> torch.Tensor:
    """Black out one square of side `ratio` x the image's, centred anywhere on it (it may reach past the edge)."""
    _, _, height, width = x.shape
    side_y, side_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    top = (u * (height + 1 - side_y % 2)).floor().long() - side_y // 2
    left = (v * (width + 1 - side_x % 2)).floor().long() - side_x // 2
    rows = torch.arange(height, device=x.device).view(1, -1) - top.view(-1, 1)
    cols = torch.arange(width, device=x.device).view(1, -1) - left.view(-1, 1)
    inside = ((rows >= 0) & (rows < side_y)).unsqueeze(2) & ((cols >= 0) & (cols < side_x)).unsqueeze(1)
    return torch.where(inside.unsqueeze(1), torch.full_like(x, BLACK), x)


class DiffAugment:
    """The transforms of `policy` (names of POLICIES), each applied to an image with probability `p`; with a
    `target`, p adapts to D's overfitting (`adapt`)."""

    def __init__(self, policy: Sequence[str], p: float = 1.0, translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5, target: float | None = None, images_to_full: int = 100_000):
        unknown = [name for name in policy if name not in POLICIES]
        assert not unknown, f"unknown augmentations {unknown}"
        assert 0 <= p <= 1
        self.transforms = [t for name in policy for t in POLICIES[name]]
        self.p = p
        self.translation_ratio = translation_ratio
        self.cutout_ratio = cutout_ratio
        self.target = target
        self.images_to_full = images_to_full

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    def adapt(self, real_sign: float, images: int) -> None:
        """ADA's update of p after an interval in which D saw `images` real images, `real_sign` its mean sign."""
        assert self.target is not None
        self.p = adjusted_p(self.p, real_sign, self.target, images, self.images_to_full)

    def __call__(self, x: torch.Tensor, uniform: Uniform | None = None) -> torch.Tensor:
        # The draws stay in fp32 whatever x is (bf16 fakes, fp32 reals under autocast): rounded to x's dtype, the
        # shifts and offsets of fakes and reals would be distributed differently, a difference D could learn.
        draw = uniform or (lambda count: torch.rand(count, device=x.device))
        n = len(x)
        for name in self.transforms:
            chosen = draw(n).to(x.device, torch.float32) < self.p
            u = draw(n).to(x.device, torch.float32)
            if name == "translation":
                changed = translation(x, u, draw(n).to(x.device, torch.float32), self.translation_ratio)
            elif name == "cutout":
                changed = cutout(x, u, draw(n).to(x.device, torch.float32), self.cutout_ratio)
            else:
                changed = TRANSFORMS[name](x, u.to(x.dtype))
            x = torch.where(chosen.view(-1, 1, 1, 1), changed, x)
        return x


TRANSFORMS = {"brightness": brightness, "saturation": saturation, "contrast": contrast}


def adjusted_p(p: float, real_sign: float, target: float, images: int, images_to_full: int) -> float:
    """ADA's step: `real_sign` is D's overfitting signal r_t, the mean sign of its outputs on real images over an
    interval (1: it calls every real image real). Above `target`, p rises; below, it falls; by `images` (the real
    images D saw in the interval) over `images_to_full`, so p could go from 0 to 1 in that many images."""
    if not math.isfinite(real_sign):
        return p
    step = math.copysign(images / images_to_full, real_sign - target) if real_sign != target else 0.0
    return min(max(p + step, 0.0), 1.0)
