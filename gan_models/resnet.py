"""SNGAN-style ResNet generator and discriminator (Miyato et al., 2018), for 28, 32 and 64 pixel images.

G upsamples a small base grid with residual blocks (BatchNorm, ReLU, nearest upsampling, 3x3 convolutions);
D downsamples with residual blocks (ReLU, 3x3 convolutions, average pooling), then sums over space and
scores with one linear layer. Channel counts double towards the base grid, as in BigGAN.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gan_models.conditioning import LatentInput, Projection
from gan_models.dcgan import BASE_GRID, D_NORMS, G_NORMS, _check_norm, num_resolution_steps


def _layer(layer: nn.Module, spectral: bool) -> nn.Module:
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return spectral_norm(layer) if spectral else layer


class GeneratorBlock(nn.Module):
    def __init__(self, w_in: int, w_out: int, batch_norm: bool):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(w_in) if batch_norm else nn.Identity()
        self.conv1 = _layer(nn.Conv2d(w_in, w_out, 3, 1, 1), False)
        self.norm2 = nn.BatchNorm2d(w_out) if batch_norm else nn.Identity()
        self.conv2 = _layer(nn.Conv2d(w_out, w_out, 3, 1, 1), False)
        self.shortcut = _layer(nn.Conv2d(w_in, w_out, 1), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x)), scale_factor=2)
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2))


class DiscriminatorBlock(nn.Module):
    """first: the input block, which must not apply ReLU to the raw image."""

    def __init__(self, w_in: int, w_out: int, norm: str, downsample: bool, first: bool = False):
        super().__init__()
        spectral, batch_norm = norm == "spectral", norm == "batch"
        self.first, self.downsample = first, downsample
        self.conv1 = _layer(nn.Conv2d(w_in, w_out, 3, 1, 1), spectral)
        self.norm = nn.BatchNorm2d(w_out) if batch_norm else nn.Identity()
        self.conv2 = _layer(nn.Conv2d(w_out, w_out, 3, 1, 1), spectral)
        self.shortcut = _layer(nn.Conv2d(w_in, w_out, 1), spectral) if (w_in != w_out or downsample) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.norm(self.conv1(h))))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        if self.shortcut is None:
            return h + x
        if self.first:  # pool before the 1x1 convolution: cheaper, and the same for a linear shortcut
            return h + self.shortcut(F.avg_pool2d(x, 2))
        s = self.shortcut(x)
        return h + (F.avg_pool2d(s, 2) if self.downsample else s)


class ResNetGenerator(nn.Module):
    """z of shape (N, latent_dim) -> images of shape (N, channels, image_size, image_size) in [-1, 1]."""

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int, norm: str = "batch",
                 num_classes: int = 0):
        super().__init__()
        _check_norm(norm, G_NORMS, "generator")
        self.latent_dim = latent_dim
        self.base = BASE_GRID[image_size]
        steps = num_resolution_steps(image_size)
        widths = [width * 2 ** i for i in reversed(range(steps + 1))]
        self.input = LatentInput(latent_dim, num_classes)
        self.project = _layer(nn.Linear(self.input.out_dim, widths[0] * self.base ** 2), False)
        batch_norm = norm == "batch"
        self.blocks = nn.Sequential(*(GeneratorBlock(a, b, batch_norm) for a, b in zip(widths, widths[1:])))
        self.out_norm = nn.BatchNorm2d(widths[-1]) if batch_norm else nn.Identity()
        self.to_image = _layer(nn.Conv2d(widths[-1], channels, 3, 1, 1), False)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.project(self.input(z, labels)).view(z.shape[0], -1, self.base, self.base)  # not len(z): torch.export keeps it symbolic
        return torch.tanh(self.to_image(F.relu(self.out_norm(self.blocks(h)))))


class ResNetDiscriminator(nn.Module):
    """images -> one unnormalised score per image, shape (N,). norm: "spectral" (SNGAN), "batch" or "none"."""

    def __init__(self, image_size: int, channels: int, width: int, norm: str = "spectral", num_classes: int = 0):
        super().__init__()
        _check_norm(norm, D_NORMS, "discriminator")
        steps = num_resolution_steps(image_size)
        widths = [width * 2 ** i for i in range(steps)]
        blocks = [DiscriminatorBlock(channels, widths[0], norm, downsample=True, first=True)]
        blocks += [DiscriminatorBlock(a, b, norm, downsample=True) for a, b in zip(widths, widths[1:])]
        blocks.append(DiscriminatorBlock(widths[-1], widths[-1], norm, downsample=False))
        self.blocks = nn.Sequential(*blocks)
        self.score = _layer(nn.Linear(widths[-1], 1), norm == "spectral")
        self.projection = Projection(num_classes, widths[-1], norm == "spectral") if num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        features = F.relu(self.blocks(images)).sum(dim=(2, 3))
        score = self.score(features).flatten()
        return score if self.projection is None else score + self.projection(features, labels)
