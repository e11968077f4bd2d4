"""Adversarial losses. Each class has one job: turn discriminator scores into the loss of a phase."""

import torch
import torch.nn.functional as F


class GANLoss:
    name: str

    def discriminator(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generator(self, fake_scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output(self, scores: torch.Tensor) -> torch.Tensor:
        """What 'D(x)' means for this loss, per image (a probability for the BCE losses)."""
        return scores


class NonSaturatingLoss(GANLoss):
    """Goodfellow et al. (2014): BCE for D, and -log D(G(z)) for G so its gradient does not vanish early."""

    name = "nonsaturating"

    def discriminator(self, real_scores, fake_scores):
        return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()

    def generator(self, fake_scores):
        return F.softplus(-fake_scores).mean()

    def output(self, scores):
        return torch.sigmoid(scores)


LOSSES: dict[str, type[GANLoss]] = {cls.name: cls for cls in (NonSaturatingLoss,)}


def build_loss(name: str) -> GANLoss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]()
