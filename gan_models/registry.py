"""Model families by name, and user networks by import path ("package.module:ClassName")."""

import importlib
from typing import Callable

import torch
from torch import nn

from gan_models.dcgan import DCGANDiscriminator, DCGANGenerator
from gan_models.resnet import ResNetDiscriminator, ResNetGenerator


def _dcgan(latent_dim: int, image_size: int, channels: int, g_width: int, d_width: int,
           g_norm: str, d_norm: str, num_classes: int) -> tuple[nn.Module, nn.Module]:
    return (
        DCGANGenerator(latent_dim, image_size, channels, g_width, g_norm, num_classes),
        DCGANDiscriminator(image_size, channels, d_width, d_norm, num_classes),
    )


def _resnet(latent_dim: int, image_size: int, channels: int, g_width: int, d_width: int,
            g_norm: str, d_norm: str, num_classes: int) -> tuple[nn.Module, nn.Module]:
    return (
        ResNetGenerator(latent_dim, image_size, channels, g_width, g_norm, num_classes),
        ResNetDiscriminator(image_size, channels, d_width, d_norm, num_classes),
    )


FAMILIES: dict[str, Callable[..., tuple[nn.Module, nn.Module]]] = {"dcgan": _dcgan, "resnet": _resnet}


def build_models(
    family: str, *, latent_dim: int, image_size: int, channels: int, g_width: int, d_width: int,
    g_norm: str = "batch", d_norm: str = "batch", num_classes: int = 0, generator: str | None = None,
    discriminator: str | None = None,
) -> tuple[nn.Module, nn.Module]:
    """The family's (G, D), class-conditional when num_classes > 0 (G(z, labels), D(images, labels)).
    `generator` / `discriminator` import paths replace either network: a user G is built as
    cls(latent_dim=, image_size=, channels=, width=), a user D as cls(image_size=, channels=, width=), each
    also given num_classes= when conditional."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    G, D = FAMILIES[family](latent_dim, image_size, channels, g_width, d_width, g_norm, d_norm, num_classes)
    conditional = {"num_classes": num_classes} if num_classes else {}
    if generator:
        G = build_user_network(generator, "model.generator", latent_dim=latent_dim, image_size=image_size, channels=channels,
                      width=g_width, **conditional)
    if discriminator:
        D = build_user_network(discriminator, "model.discriminator", image_size=image_size, channels=channels, width=d_width,
                      **conditional)
    return G, D


def build_user_network(path: str, key: str, **arguments: int) -> nn.Module:
    """The network at import path `path`, built with `arguments`; ValueError naming `key` if it cannot be."""
    cls = import_network(path, key)
    try:
        return cls(**arguments)
    except Exception as err:  # the user's constructor may fail in any way, a signature without these names too
        given = ", ".join(f"{name}={value}" for name, value in arguments.items())
        raise ValueError(f"{key}: {path}({given}) failed: {type(err).__name__}: {err}") from err


def import_network(path: str, key: str) -> type[nn.Module]:
    """'package.module:ClassName' -> the class, or ValueError naming `key` and what went wrong."""
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise ValueError(f"{key}: got {path!r}; expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module may fail in any way while importing
        raise ValueError(f"{key}: cannot import module {module_name!r}: {type(err).__name__}: {err}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"{key}: module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{key}: {path} is not a torch.nn.Module subclass")
    return cls


def check_interface(G: nn.Module, D: nn.Module, latent_dim: int, image_size: int, channels: int,
                    num_classes: int = 0) -> None:
    """Run both networks on two samples; ValueError naming the spec key whose network has the wrong shapes."""
    labels = (torch.arange(2) % num_classes,) if num_classes else ()
    with torch.no_grad():
        try:
            images = G(torch.randn(2, latent_dim), *labels)
        except Exception as err:
            raise ValueError(f"model.generator: G(z{', labels' if labels else ''}) failed for z of shape "
                             f"(2, {latent_dim}): {type(err).__name__}: {err}") from None
        expected = (2, channels, image_size, image_size)
        if tuple(images.shape) != expected:
            raise ValueError(f"model.generator: G(z) gave shape {tuple(images.shape)}; expected {expected}")
        try:
            scores = D(images, *labels)
        except Exception as err:
            raise ValueError(f"model.discriminator: D(x{', labels' if labels else ''}) failed for x of shape "
                             f"{expected}: {type(err).__name__}: {err}") from None
        if tuple(scores.shape) not in ((2,), (2, 1)):
            raise ValueError(f"model.discriminator: D(x) gave shape {tuple(scores.shape)}; expected (2,) or (2, 1)")
