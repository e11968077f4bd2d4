"""The spec's networks, and drawing samples from G: shared by training, `ganorch eval` and the CLI's checks."""

import torch
import torch.nn.functional as F

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


def interpolation_latents(spec: JobSpec, classes: int, device: torch.device, steps: int = 10,
                          paths: int = 8) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Latents along great circles between pairs of latents, `steps` a path, the grid's rows: `paths` paths, or
    for a conditional G one path drawn in each class (the first `paths` + 2). With the labels and the grid's
    number of columns."""
    classes = min(classes, paths + 2)
    rows = 1 if classes else paths
    g = torch.Generator().manual_seed(spec.seed + 1)
    a, b = (sample_latent(rows, spec.model.latent_dim, generator=g, device=torch.device("cpu")) for _ in range(2))
    angle = torch.acos((F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1, keepdim=True).clamp(-1, 1))
    w = torch.linspace(0, 1, steps).view(1, steps, 1)
    angle, a, b = angle.unsqueeze(1), a.unsqueeze(1), b.unsqueeze(1)
    z = (torch.sin((1 - w) * angle) * a + torch.sin(w * angle) * b) / torch.sin(angle).clamp_min(1e-6)
    z = z.reshape(-1, spec.model.latent_dim)
    if not classes:
        return z.to(device), None, steps
    labels = torch.arange(classes, device=device).repeat_interleave(steps)
    return z.repeat(classes, 1).to(device), labels, steps


@torch.no_grad()
def sample(G: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    was_training = G.training
    G.eval()
    images = G(z) if labels is None else G(z, labels)
    G.train(was_training)
    return images
