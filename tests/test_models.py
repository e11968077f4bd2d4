import pytest
import torch
import torch.nn.functional as F

from gan_models import build_loss, build_models, sample_latent


@pytest.mark.parametrize("image_size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_shapes(image_size, channels):
    G, D = build_models("dcgan", latent_dim=16, image_size=image_size, channels=channels, g_width=8, d_width=8)
    images = G(torch.randn(5, 16))
    assert images.shape == (5, channels, image_size, image_size)
    assert images.min() >= -1 and images.max() <= 1
    assert D(images).shape == (5,)


def test_unknown_family_and_size():
    with pytest.raises(ValueError, match="unknown model family 'stylegan9'"):
        build_models("stylegan9", latent_dim=4, image_size=28, channels=1, g_width=4, d_width=4)
    with pytest.raises(ValueError, match="image sizes"):
        build_models("dcgan", latent_dim=4, image_size=48, channels=1, g_width=4, d_width=4)


def test_gan_models_imports_neither_ray_nor_mlflow():
    import subprocess
    import sys

    code = "import sys, gan_models; print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_nonsaturating_loss_is_bce():
    loss = build_loss("nonsaturating")
    real, fake = torch.randn(7), torch.randn(7)
    expected_d = (F.binary_cross_entropy_with_logits(real, torch.ones(7))
                  + F.binary_cross_entropy_with_logits(fake, torch.zeros(7)))
    assert torch.allclose(loss.discriminator(real, fake), expected_d)
    assert torch.allclose(loss.generator(fake), F.binary_cross_entropy_with_logits(fake, torch.ones(7)))
    assert torch.allclose(loss.output(torch.zeros(3)), torch.full((3,), 0.5))


def test_latent_is_reproducible_with_a_generator():
    a = sample_latent(4, 3, generator=torch.Generator().manual_seed(1))
    b = sample_latent(4, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (4, 3)
