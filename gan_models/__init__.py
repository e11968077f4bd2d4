"""Networks, losses and sampling for GAN training. Imports torch only: no Ray, no MLflow."""

from gan_models.augment import DiffAugment
from gan_models.ema import GeneratorEMA
from gan_models.losses import LOSSES, GANLoss, build_loss
from gan_models.registry import FAMILIES, build_models
from gan_models.regularizers import GradientPenalty, R1Penalty, Regularizer
from gan_models.sampling import sample_latent

__all__ = ["FAMILIES", "LOSSES", "DiffAugment", "GANLoss", "GeneratorEMA", "GradientPenalty", "R1Penalty", "Regularizer", "build_loss",
           "build_models", "sample_latent"]
