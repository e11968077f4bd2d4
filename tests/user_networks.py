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


class NotANetwork:
    pass
