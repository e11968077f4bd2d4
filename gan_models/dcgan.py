"""DCGAN (Radford et al., 2016) generator and discriminator for 28, 32 and 64 pixel images.

Both networks change resolution by a factor of 2 per layer from a small base grid:
7x7 for 28 px, 4x4 for 32 and 64 px. Channel counts double towards the base grid.
"""

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gan_models.conditioning import LatentInput, Projection

BASE_GRID = {28: 7, 32: 4, 64: 4}
G_NORMS = ("batch", "none")
D_NORMS = ("batch", "spectral", "none")


def num_resolution_steps(image_size: int) -> int:
    if image_size not in BASE_GRID:
        raise ValueError(f"DCGAN supports image sizes {sorted(BASE_GRID)}, got {image_size}")
    return (image_size // BASE_GRID[image_size]).bit_length() - 1


def init_dcgan_weights(module: nn.Module) -> None:
    """The DCGAN paper's initialisation: N(0, 0.02) convolutions, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _check_norm(norm: str, allowed: tuple[str, ...], network: str) -> None:
    if norm not in allowed:
        raise ValueError(f"DCGAN {network} norm must be one of {allowed}, got {norm!r}")


class DCGANGenerator(nn.Module):
    """z of shape (N, latent_dim) -> images of shape (N, channels, image_size, image_size) in [-1, 1].
    norm="none" leaves no batch-dependent layer."""

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int, norm: str = "batch",
                 num_classes: int = 0):
        super().__init__()
        _check_norm(norm, G_NORMS, "generator")
        self.latent_dim = latent_dim
        steps = num_resolution_steps(image_size)
        widths = [width * 2 ** i for i in reversed(range(steps))]
        batch_norm = norm == "batch"

        def block(conv: nn.Module, w_out: int) -> list[nn.Module]:
            return [conv, *([nn.BatchNorm2d(w_out)] if batch_norm else []), nn.ReLU(inplace=True)]

        self.input = LatentInput(latent_dim, num_classes)
        layers = block(nn.ConvTranspose2d(self.input.out_dim, widths[0], BASE_GRID[image_size], 1, 0,
                                          bias=not batch_norm), widths[0])
        for w_in, w_out in zip(widths, widths[1:]):
            layers += block(nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=not batch_norm), w_out)
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.input(z, labels)[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """images -> one unnormalised score (logit) per image, shape (N,).
    norm: "batch" (DCGAN), "spectral" (Miyato et al., 2018: every layer's weight divided by its largest
    singular value) or "none"; only "batch" couples the images of a batch."""

    def __init__(self, image_size: int, channels: int, width: int, norm: str = "batch", num_classes: int = 0):
        super().__init__()
        _check_norm(norm, D_NORMS, "discriminator")
        steps = num_resolution_steps(image_size)
        widths = [width * 2 ** i for i in range(steps)]
        batch_norm = norm == "batch"
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=not batch_norm),
                       *([nn.BatchNorm2d(w_out)] if batch_norm else []),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(widths[-1], 1, BASE_GRID[image_size], 1, 0))
        self.net = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)
        if norm == "spectral":
            for layer in self.net:
                if isinstance(layer, nn.Conv2d):
                    spectral_norm(layer)
        self.projection = Projection(num_classes, widths[-1], norm == "spectral") if num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.projection is None:
            return self.net(images).flatten()
        features = self.net[:-1](images)
        return self.net[-1](features).flatten() + self.projection(features.sum(dim=(2, 3)), labels)
