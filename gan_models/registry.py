"""Model families by name: each builds a (generator, discriminator) pair."""

from typing import Callable

from torch import nn

from gan_models.dcgan import DCGANDiscriminator, DCGANGenerator


def _dcgan(latent_dim: int, image_size: int, channels: int, g_width: int, d_width: int,
           g_norm: str, d_norm: str) -> tuple[nn.Module, nn.Module]:
    return (
        DCGANGenerator(latent_dim, image_size, channels, g_width, g_norm),
        DCGANDiscriminator(image_size, channels, d_width, d_norm),
    )


FAMILIES: dict[str, Callable[..., tuple[nn.Module, nn.Module]]] = {"dcgan": _dcgan}


def build_models(
    family: str, *, latent_dim: int, image_size: int, channels: int, g_width: int, d_width: int,
    g_norm: str = "batch", d_norm: str = "batch",
) -> tuple[nn.Module, nn.Module]:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family](latent_dim, image_size, channels, g_width, d_width, g_norm, d_norm)
