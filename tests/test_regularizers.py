import pytest
import torch

from gan_models import GradientPenalty, R1Penalty


class LinearCritic(torch.nn.Module):
    """D(x) = <w, x>: its input gradient is w for every image."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        return (x.flatten(1) * self.w).sum(1)


def test_gradient_penalty_on_a_linear_critic():
    w = torch.zeros(1 * 2 * 2)
    w[0] = 3.0  # ||grad|| = 3 everywhere -> penalty = weight * (3 - 1)^2
    D = LinearCritic(w)
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    penalty = GradientPenalty(weight=10.0).penalty(D, real, D(real), fake)
    assert penalty.item() == pytest.approx(40.0)
    penalty.backward()
    assert D.w.grad is not None and D.w.grad[0] == pytest.approx(10 * 2 * (3 - 1) * 1.0)


def test_r1_is_lazy_scaled():
    w = torch.full((4,), 0.5)  # ||grad||^2 = 1
    D = LinearCritic(w)
    real = torch.randn(3, 1, 2, 2, requires_grad=True)
    assert R1Penalty(gamma=2.0, every=1).penalty(D, real, D(real), None).item() == pytest.approx(1.0)
    assert R1Penalty(gamma=2.0, every=16).penalty(D, real, D(real), None).item() == pytest.approx(16.0)
