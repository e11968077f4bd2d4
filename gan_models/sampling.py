import torch


def sample_latent(num: int, latent_dim: int, *, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """z ~ N(0, I). With a generator the draw is reproducible (made on the generator's device, then moved)."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(num, latent_dim, generator=generator, device=gen_device).to(device)
