"""Differentiable augmentation: the transforms keep shape and range, let gradients through, draw for the global batch,
and ADA's p follows D's overfitting signal."""

import pytest
import torch

from gan_models.augment import (
    POLICIES,
    DiffAugment,
    adjusted_p,
    brightness,
    contrast,
    cutout,
    saturation,
    translation,
)

ALL = list(POLICIES)


def images(n=8, channels=3, side=16, seed=0):
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def global_draws(seed, rank=0, world_size=1):
    """Like Training.draw_uniform: every rank draws the global batch's numbers and keeps every world_size-th."""
    generator = torch.Generator().manual_seed(seed)
    return lambda count: torch.rand(world_size * count, generator=generator)[rank::world_size]


@pytest.mark.parametrize("policy", [[name] for name in ALL] + [ALL])
@pytest.mark.parametrize("channels", [1, 3])
def test_transforms_keep_shape_dtype_and_range(policy, channels):
    x = images(channels=channels)
    out = DiffAugment(policy)(x, global_draws(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, x)  # p = 1: every image was changed
    if policy == ["color"] and channels == 3:
        assert (out - x).abs().mean() > 0.05


def test_gradients_flow_through_every_transform_to_the_images():
    x = images().requires_grad_(True)
    DiffAugment(ALL)(x, global_draws(2)).pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name in ALL:
        y = images(seed=3).requires_grad_(True)
        DiffAugment([name])(y, global_draws(4)).sum().backward()
        assert y.grad.abs().sum() > 0, name


@pytest.mark.parametrize("name", ["brightness", "saturation", "contrast", "translation", "cutout"])
def test_each_transforms_gradient_is_its_own_derivative(name):
    """torch.autograd.gradcheck: the analytic gradient G receives matches finite differences (inputs inside the
    range, where contrast and saturation do not clip)."""
    x = (images(n=3, channels=3, side=8, seed=6).double() * 0.3).requires_grad_(True)
    draws = torch.rand(16, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    u, v = draws[:3], draws[3:6]
    transform = {"brightness": lambda t: brightness(t, u), "saturation": lambda t: saturation(t, u * 0.5 + 0.25),
                 "contrast": lambda t: contrast(t, u), "translation": lambda t: translation(t, u, v, 0.25),
                 "cutout": lambda t: cutout(t, u, v, 0.5)}[name]
    assert torch.autograd.gradcheck(transform, (x,))


def test_reals_in_fp32_and_fakes_in_bf16_are_moved_alike():
    """Under autocast G's fakes are bf16, the reals fp32: the same draws must give them the same shifts and cutouts."""
    x = images(n=64, channels=1, side=32, seed=9)
    for policy in (["translation"], ["cutout"]):
        full = DiffAugment(policy)(x, global_draws(10))
        half = DiffAugment(policy)(x.bfloat16(), global_draws(10))
        assert half.dtype == torch.bfloat16
        assert torch.equal(full.bfloat16(), half), policy


def test_translation_shifts_whole_pixels_and_fills_with_black():
    x = torch.arange(36.0).view(1, 1, 6, 6) / 36
    # u = 1 - eps: the largest shift down (+reach); v = 0: the largest shift left (-reach); ratio 1/3 of 6: 2 pixels
    out = translation(x, torch.tensor([0.999]), torch.tensor([0.0]), ratio=1 / 3)
    assert torch.equal(out[0, 0, 2:, :4], x[0, 0, :4, 2:])
    assert (out[0, 0, :2] == -1).all() and (out[0, 0, :, 4:] == -1).all()
    unmoved = translation(x, torch.tensor([0.5]), torch.tensor([0.5]), ratio=1 / 3)
    assert torch.equal(unmoved, x)


def test_cutout_blacks_out_one_square_of_the_given_side():
    x = torch.ones(4, 1, 16, 16)
    out = cutout(x, torch.full((4,), 0.5), torch.full((4,), 0.5), ratio=0.25)
    assert ((out == -1).sum(dim=(1, 2, 3)) == 16).all()  # a 4 x 4 square, centred inside
    at_the_edge = cutout(x[:1], torch.tensor([0.0]), torch.tensor([0.0]), ratio=0.25)
    assert 0 < (at_the_edge == -1).sum() < 16  # centred on the corner: partly outside


def test_probability_zero_changes_nothing_and_draws_as_much_as_one():
    x = images()
    counts = []
    for p in (0.0, 1.0):
        drawn = []
        draw = global_draws(5)
        out = DiffAugment(ALL, p=p)(x, lambda n: drawn.append(n) or draw(n))
        counts.append(sum(drawn))
        if p == 0:
            assert torch.equal(out, x)
    assert counts[0] == counts[1]  # the noise stream does not depend on p


@pytest.mark.parametrize("world_size", [2, 4])
def test_n_ranks_augment_exactly_as_one_rank_with_the_global_batch(world_size):
    """Rank r holds images r, r + N, ... of the global batch (as the data shards interleave) and draws the global
    batch's numbers: together the ranks' outputs are one process's, image for image."""
    x = images(n=8)
    augment = DiffAugment(ALL, p=0.5)
    whole = augment(x, global_draws(7))
    for rank in range(world_size):
        mine = augment(x[rank::world_size], global_draws(7, rank, world_size))
        torch.testing.assert_close(mine, whole[rank::world_size], rtol=0, atol=0)


def test_ada_raises_p_while_d_overfits_and_lowers_it_when_it_does_not():
    assert adjusted_p(0.0, real_sign=0.9, target=0.6, images=1000, images_to_full=10_000) == pytest.approx(0.1)
    assert adjusted_p(0.5, real_sign=0.2, target=0.6, images=1000, images_to_full=10_000) == pytest.approx(0.4)
    assert adjusted_p(0.0, real_sign=0.2, target=0.6, images=1000, images_to_full=10_000) == 0.0
    assert adjusted_p(0.95, real_sign=1.0, target=0.6, images=1000, images_to_full=10_000) == 1.0
    assert adjusted_p(0.3, real_sign=float("nan"), target=0.6, images=1000, images_to_full=10_000) == 0.3
    augment = DiffAugment(["color"], p=0.0, target=0.6, images_to_full=100)
    for _ in range(3):
        augment.adapt(real_sign=1.0, images=10)
    assert augment.adaptive and augment.p == pytest.approx(0.3)
