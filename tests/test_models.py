import pytest
import torch
import torch.nn.functional as F

from gan_models import build_loss, build_models, sample_latent


@pytest.mark.parametrize("family", ["dcgan", "resnet"])
@pytest.mark.parametrize("image_size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(family, image_size, channels):
    G, D = build_models(family, latent_dim=16, image_size=image_size, channels=channels, g_width=8, d_width=8)
    images = G(torch.randn(5, 16))
    assert images.shape == (5, channels, image_size, image_size)
    assert images.min() >= -1 and images.max() <= 1
    assert D(images).shape == (5,)


def test_unknown_family_and_size():
    with pytest.raises(ValueError, match="unknown model family 'stylegan9'"):
        build_models("stylegan9", latent_dim=4, image_size=28, channels=1, g_width=4, d_width=4)
    with pytest.raises(ValueError, match="image sizes"):
        build_models("dcgan", latent_dim=4, image_size=48, channels=1, g_width=4, d_width=4)


def test_a_user_network_that_cannot_be_built_with_the_specs_arguments_names_its_key():
    with pytest.raises(ValueError, match=r"^model.discriminator: torch.nn:Linear\(image_size=28, channels=1, width=4\) "
                                         r"failed: TypeError: .*unexpected keyword argument 'image_size'"):
        build_models("dcgan", latent_dim=4, image_size=28, channels=1, g_width=4, d_width=4,
                     discriminator="torch.nn:Linear")


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


@pytest.mark.parametrize("family", ["dcgan", "resnet"])
@pytest.mark.parametrize("d_norm", ["batch", "spectral", "none"])
@pytest.mark.parametrize("g_norm", ["batch", "none"])
def test_norm_options(family, g_norm, d_norm):
    G, D = build_models(family, latent_dim=8, image_size=32, channels=3, g_width=4, d_width=4,
                        g_norm=g_norm, d_norm=d_norm)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in G.modules()) == (g_norm == "batch")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules()) == (d_norm == "batch")
    assert any("parametrizations" in name for name, _ in D.named_parameters()) == (d_norm == "spectral")
    assert D(G(torch.randn(3, 8))).shape == (3,)


def test_spectral_norm_bounds_every_layer():
    _, D = build_models("dcgan", latent_dim=8, image_size=28, channels=1, g_width=4, d_width=8, d_norm="spectral")
    for _ in range(30):  # power iterations converge in training-mode forwards
        D(torch.randn(2, 1, 28, 28))
    for layer in D.net:
        if isinstance(layer, torch.nn.Conv2d):
            sigma = torch.linalg.matrix_norm(layer.weight.flatten(1), ord=2)
            assert sigma <= 1.05


@pytest.mark.parametrize("family", ["dcgan", "resnet"])
def test_batch_independence_without_batchnorm(family):
    """With no BatchNorm, an image's score does not depend on the rest of its batch."""
    G, D = build_models(family, latent_dim=8, image_size=28, channels=1, g_width=4, d_width=4,
                        g_norm="none", d_norm="none")
    z = torch.randn(6, 8)
    assert torch.allclose(D(G(z))[:3], D(G(z[:3])), atol=1e-6)


@pytest.mark.parametrize("name,real,fake,d_expected,g_expected", [
    ("hinge", [2.0, 0.5], [-2.0, 0.0], (0 + 0.5) / 2 + (0 + 1) / 2, 1.0),
    ("wgan-gp", [2.0, 0.5], [-2.0, 0.0], -1.0 - 1.25, 1.0),
    ("lsgan", [1.0, 0.0], [0.0, 1.0], 0.5 * 0.5 + 0.5 * 0.5, 0.5 * 0.5),
])
def test_loss_values(name, real, fake, d_expected, g_expected):
    loss = build_loss(name)
    real, fake = torch.tensor(real), torch.tensor(fake)
    assert loss.discriminator(real, fake).item() == pytest.approx(d_expected)
    assert loss.generator(fake).item() == pytest.approx(g_expected)


def test_unknown_loss():
    with pytest.raises(ValueError, match="unknown loss 'wgan'"):
        build_loss("wgan")


@pytest.mark.parametrize("name,threshold", [("nonsaturating", 0.0), ("hinge", 0.0), ("lsgan", 0.5), ("wgan-gp", 1.5)])
def test_decision_threshold(name, threshold):
    """Where D's accuracy splits real from fake: the WGAN critic's is the middle of the two mean scores."""
    real, fake = torch.tensor([3.0, 2.0]), torch.tensor([1.0, 0.0])
    assert float(build_loss(name).threshold(real, fake)) == pytest.approx(threshold)


@pytest.mark.parametrize("family", ["dcgan", "resnet"])
@pytest.mark.parametrize("d_norm", ["batch", "spectral"])
def test_class_conditional_networks(family, d_norm):
    torch.manual_seed(0)
    G, D = build_models(family, latent_dim=8, image_size=28, channels=1, g_width=4, d_width=4, d_norm=d_norm,
                        num_classes=10)
    G.eval(), D.eval()
    z = torch.randn(4, 8).repeat(2, 1)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    with torch.no_grad():
        images = G(z, labels)
        assert images.shape == (8, 1, 28, 28)
        assert not torch.allclose(images[:4], images[4:]), "the same z with other classes gives other images"
        same_images = images[:4].repeat(2, 1, 1, 1)
        scores = D(same_images, labels)
        assert scores.shape == (8,)
        assert not torch.allclose(scores[:4], scores[4:]), "the projection makes D's score depend on the class"
    with pytest.raises(AssertionError, match="needs labels"):
        G(z)


@pytest.mark.parametrize("family", ["dcgan", "resnet"])
def test_condition_strength_scales_the_class_information_of_both_networks(family):
    """Transitional training's strength: 0 leaves G and D unconditional (the class changes nothing), 1 is the
    conditional model; it is kept in the state dict, and a state dict saved before it existed loads at 1."""
    from gan_models.conditioning import set_strength

    torch.manual_seed(0)
    G, D = build_models(family, latent_dim=8, image_size=28, channels=1, g_width=4, d_width=4, d_norm="spectral",
                        num_classes=10)
    G.eval(), D.eval()
    z, labels = torch.randn(4, 8).repeat(2, 1), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    assert set_strength(G, 0.0) == 1 and set_strength(D, 0.0) == 1
    with torch.no_grad():
        images = G(z, labels)
        assert torch.equal(images[:4], images[4:]), "at strength 0 the class changes nothing"
        scores = D(images, labels)
        assert torch.equal(scores[:4], scores[4:])
        set_strength(G, 0.5)
        half = G(z, labels)
        assert not torch.allclose(half[:4], half[4:])
    state = G.state_dict()
    assert float(state["input.strength"]) == 0.5
    fresh = build_models(family, latent_dim=8, image_size=28, channels=1, g_width=4, d_width=4,
                         num_classes=10)[0].eval()
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(fresh(z, labels), half)
    set_strength(fresh, 0.0)
    fresh.load_state_dict({k: v for k, v in state.items() if not k.endswith("strength")})
    assert float(fresh.input.strength) == 1.0, "saved before the buffer existed: full strength"
    unconditional = build_models(family, latent_dim=8, image_size=28, channels=1, g_width=4, d_width=4)
    assert set_strength(unconditional[0], 0.0) == 0 and set_strength(unconditional[1], 0.0) == 0
    assert not any(k.endswith("strength") for net in unconditional for k in net.state_dict())


def test_the_condition_ramp_rises_linearly_from_start_to_end():
    from gan_models.conditioning import ramp

    assert [ramp(step, 10, 20) for step in (0, 10, 15, 19, 20, 500)] == [0.0, 0.0, 0.5, 0.9, 1.0, 1.0]
    assert [ramp(step, 5, 5) for step in (4, 5, 6)] == [0.0, 1.0, 1.0]


def test_a_ramp_needs_conditioning_layers_in_both_networks():
    from gan_models.conditioning import check_rampable

    G, D = build_models("dcgan", latent_dim=8, image_size=28, channels=1, g_width=4, d_width=4, num_classes=10)
    check_rampable(G, D)
    with pytest.raises(ValueError, match=r"train.condition_ramp: model.discriminator Linear has no conditioning layer"):
        check_rampable(G, torch.nn.Linear(2, 1))
