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
        """What 'D(x)' means for this loss, per image (a probability for the BCE loss, else the raw score)."""
        return scores

    def threshold(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor | float:
        """The score above which D calls an image real, for D's accuracy."""
        return 0.0


class NonSaturatingLoss(GANLoss):
    """Goodfellow et al. (2014): BCE for D, and -log D(G(z)) for G so its gradient does not vanish early."""

    name = "nonsaturating"

    def discriminator(self, real_scores, fake_scores):
        return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()

    def generator(self, fake_scores):
        return F.softplus(-fake_scores).mean()

    def output(self, scores):
        return torch.sigmoid(scores)


class HingeLoss(GANLoss):
    """Lim & Ye (2017), as in SNGAN and BigGAN: D pushes real scores above 1 and fake below -1."""

    name = "hinge"

    def discriminator(self, real_scores, fake_scores):
        return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()

    def generator(self, fake_scores):
        return -fake_scores.mean()


class WassersteinLoss(GANLoss):
    """Arjovsky et al. (2017), for WGAN-GP (Gulrajani et al., 2017): the critic's score gap. The gradient
    penalty that keeps the critic 1-Lipschitz is a regularizer (`GradientPenalty`) the spec adds with it."""

    name = "wgan-gp"

    def discriminator(self, real_scores, fake_scores):
        return fake_scores.mean() - real_scores.mean()

    def threshold(self, real_scores, fake_scores):
        # A critic's scores have no fixed origin: call real what lies above the middle of the two means.
        return 0.5 * (real_scores.mean() + fake_scores.mean())

    def generator(self, fake_scores):
        return -fake_scores.mean()


class LeastSquaresLoss(GANLoss):
    """Mao et al. (2017), LSGAN with targets real=1, fake=0."""

    name = "lsgan"

    def discriminator(self, real_scores, fake_scores):
        return 0.5 * ((real_scores - 1) ** 2).mean() + 0.5 * (fake_scores ** 2).mean()

    def generator(self, fake_scores):
        return 0.5 * ((fake_scores - 1) ** 2).mean()

    def threshold(self, real_scores, fake_scores):
        return 0.5


LOSSES: dict[str, type[GANLoss]] = {
    cls.name: cls for cls in (NonSaturatingLoss, HingeLoss, WassersteinLoss, LeastSquaresLoss)
}


def build_loss(name: str) -> GANLoss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]()
