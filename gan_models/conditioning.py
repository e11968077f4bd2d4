"""Class conditioning: labels into G through an embedding joined to z, into D through a projection
(Miyato & Koyama, 2018): score(x, y) = head(phi(x)) + <embed(y), phi(x)>."""

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class LatentInput(nn.Module):
    """z -> z, or [z, embed(y)] when the generator is class-conditional (num_classes > 0)."""

    def __init__(self, latent_dim: int, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, latent_dim) if num_classes else None
        self.out_dim = latent_dim * (2 if num_classes else 1)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if self.embed is None:
            return z
        assert labels is not None, "a class-conditional generator needs labels"
        return torch.cat([z, self.embed(labels)], dim=1)


class Projection(nn.Module):
    """<embed(y), features> per image, added to an unconditional score."""

    def __init__(self, num_classes: int, dim: int, spectral: bool):
        super().__init__()
        self.embed = nn.Embedding(num_classes, dim)
        nn.init.xavier_uniform_(self.embed.weight)
        if spectral:
            spectral_norm(self.embed)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (self.embed(labels) * features).sum(dim=1)
