import pytest
import torch

from gan_models import GeneratorEMA, build_models


def tiny_generator():
    torch.manual_seed(0)
    G, _ = build_models("dcgan", latent_dim=4, image_size=28, channels=1, g_width=2, d_width=2)
    return G


def test_rampup_grows_to_the_decay():
    ema = GeneratorEMA(tiny_generator(), decay=0.999)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(90) == pytest.approx(91 / 100)
    assert ema.decay_at(100_000) == 0.999
    assert GeneratorEMA(tiny_generator(), decay=0.9, rampup=False).decay_at(0) == 0.9


def test_update_averages_parameters_and_copies_buffers():
    G = tiny_generator()
    ema = GeneratorEMA(G, decay=0.75, rampup=False)
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
        G(torch.randn(4, 4))  # training-mode forward moves BatchNorm statistics
    ema.update(G, step=5)
    for old, new, current in zip(before, ema.module.parameters(), G.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * current)
    for ema_buffer, buffer in zip(ema.module.buffers(), G.buffers()):
        assert torch.equal(ema_buffer, buffer)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_zero_decay_copies_and_bad_decay_is_refused():
    G = tiny_generator()
    ema = GeneratorEMA(G, decay=0.0)
    with torch.no_grad():
        next(G.parameters()).mul_(3)
    ema.update(G, step=1)
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), G.parameters()))
    with pytest.raises(ValueError, match="EMA decay must be in"):
        GeneratorEMA(G, decay=1.0)
