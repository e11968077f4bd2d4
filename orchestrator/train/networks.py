"""The spec's networks, and drawing samples from G: shared by training, `ganorch eval` and the CLI's checks."""

import torch

from gan_models import build_models, sample_latent
from orchestrator.spec import JobSpec


def build_networks(spec: JobSpec, num_classes: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The spec's G and D; class-conditional over `num_classes` classes when that is > 0."""
    m = spec.model
    return build_models(m.family, latent_dim=m.latent_dim, image_size=m.image_size, channels=m.channels,
                        g_width=m.g_width, d_width=m.d_width, g_norm=m.g_norm, d_norm=m.d_norm,
                        num_classes=num_classes, generator=m.generator, discriminator=m.discriminator)


def fixed_samples(spec: JobSpec, classes: int, device: torch.device,
                  count: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The noise (and, when conditional, labels: one grid row per class) every sample grid is drawn from,
    and the grid's number of columns. `count` images, by default tracking.num_samples."""
    count = count or spec.tracking.num_samples
    if classes:
        columns = max(count // classes, 1)
        labels = torch.arange(classes, device=device).repeat_interleave(columns)
        count = len(labels)
    else:
        columns, labels = round(count ** 0.5), None
    z = sample_latent(count, spec.model.latent_dim, generator=torch.Generator().manual_seed(spec.seed), device=device)
    return z, labels, columns


@torch.no_grad()
def sample(G: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    was_training = G.training
    G.eval()
    images = G(z) if labels is None else G(z, labels)
    G.train(was_training)
    return images
