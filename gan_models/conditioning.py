"""Class conditioning: labels into G through an embedding joined to z, into D through a projection
(Miyato & Koyama, 2018): score(x, y) = head(phi(x)) + <embed(y), phi(x)>.

Both scale the class information by a `strength` buffer, 1 unless a training schedule lowers it: transitional
training (Shahbazi et al., 2022, "Collapse by Conditioning") ramps it from 0 to 1, so G and D first learn the data
unconditionally and the classes take over gradually; a conditional GAN on little data per class otherwise tends to
draw one image per class."""

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class Conditioned(nn.Module):
    """A layer that adds class information when `conditional`, scaled by the buffer `strength` (kept with the
    weights)."""

    def __init__(self, conditional: bool = True) -> None:
        super().__init__()
        self.conditional = conditional
        if conditional:
            self.register_buffer("strength", torch.ones(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.conditional:  # saved before the buffer existed: full strength
            state_dict.setdefault(prefix + "strength", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LatentInput(Conditioned):
    """z -> z, or [z, strength * embed(y)] when the generator is class-conditional (num_classes > 0)."""

    def __init__(self, latent_dim: int, num_classes: int):
        super().__init__(conditional=num_classes > 0)
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.out_dim = latent_dim * (2 if num_classes else 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.embed is None:
            return z
        assert labels is not None, "a class-conditional generator needs labels"
        return torch.cat([z, self.strength * self.embed(labels)], dim=1)


class Projection(Conditioned):
    """strength * <embed(y), features> per image, added to an unconditional score."""

    def __init__(self, num_classes: int, dim: int, spectral: bool):
        super().__init__()
        self.embed = nn.Embedding(num_classes, dim)
        nn.init.xavier_uniform_(self.embed.weight)
        if spectral:
            spectral_norm(self.embed)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.strength * (self.embed(labels) * features).sum(dim=1)


def ramp(step: int, start: int, end: int) -> float:
    """Transitional training's strength at `step`: 0 up to `start`, rising linearly to 1 at `end`, 1 after."""
    if step >= end:
        return 1.0
    if step <= start:
        return 0.0
    return (step - start) / (end - start)


def conditioning_layers(module: nn.Module) -> list[Conditioned]:
    return [m for m in module.modules() if isinstance(m, Conditioned) and m.conditional]


def set_strength(module: nn.Module, strength: float) -> int:
    """Sets the strength of every conditioning layer in `module`; returns how many it has."""
    layers = conditioning_layers(module)
    for layer in layers:
        layer.strength.fill_(strength)
    return len(layers)


def check_rampable(G: nn.Module, D: nn.Module) -> None:
    """train.condition_ramp scales the conditioning layers of gan_models.conditioning: both networks need one."""
    for key, net in (("model.generator", G), ("model.discriminator", D)):
        if not conditioning_layers(net):
            raise ValueError(f"train.condition_ramp: {key} {type(net).__name__} has no conditioning layer it could "
                             "ramp (gan_models.conditioning: LatentInput, Projection); remove train.condition_ramp")

