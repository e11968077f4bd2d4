"""A small classifier of the training domain: the feature extractor of FID, KID and IS where Inception's
ImageNet features know nothing of the domain (digits, say) or cannot be downloaded.

Its penultimate layer gives the features for FID and KID, its logits the Inception Score and the class histogram.
It takes images as the GAN sees them: in [-1, 1], at the model's size and channels.
"""

import torch
import torch.nn.functional as F
from torch import nn


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU())


class DomainClassifier(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 16, num_features: int = 128):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = num_features
        self.body = nn.Sequential(
            conv_block(channels, width), nn.MaxPool2d(2),
            conv_block(width, 2 * width), nn.MaxPool2d(2),
            conv_block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(16 * width, num_features), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(num_features, num_classes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) in fp32, in eval mode."""
        assert not self.training, "call .eval() first: BatchNorm must use its running statistics"
        features = self.body(images.float())
        return features, self.head(features)


HELD_OUT = 0.1  # the share of the data a classifier is scored on, never trained on


def split_held_out(num_images: int, held_out: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices): a seeded random split."""
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    count = max(1, round(num_images * held_out))
    return order[count:], order[:count]


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 8,
                     batch_size: int = 64, lr: float = 3e-3, seed: int = 0, device: torch.device = torch.device("cpu"),
                     steps: int | None = None, weights: torch.Tensor | None = None) -> DomainClassifier:
    """A DomainClassifier trained from scratch on `images` (on the host; batches go to `device`), returned in eval
    mode: `epochs` passes in a random order, or with `steps`, that many batches drawn with replacement, image i with
    probability proportional to `weights[i]` (uniform when None), so a small set trains as long as a large one and
    a mix of two sets keeps its proportions. Its initial weights, batch order and shifts are seeded; dropout draws
    from the global generator. Random shifts of up to 2 pixels keep it from memorising pixel positions."""
    assert weights is None or steps is not None, "weights draw batches for a number of steps"
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        model = DomainClassifier(images.shape[1], num_classes)
    model.to(device)

    def batches():
        if steps is None:
            for _ in range(epochs):
                order = torch.randperm(len(images), generator=generator)
                yield from order.split(batch_size)
        else:
            chances = torch.ones(len(images)) if weights is None else weights.float()
            for _ in range(steps):
                yield torch.multinomial(chances, batch_size, replacement=True, generator=generator)

    total = steps if steps is not None else epochs * -(-len(images) // batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=total)
    model.train()
    with torch.enable_grad():  # also when called for an evaluation, under no_grad
        for batch in batches():
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            x = torch.roll(images[batch].to(device), shift, dims=(2, 3))
            loss = F.cross_entropy(model(x), labels[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: DomainClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    device = next(model.parameters()).device
    correct = sum((model(images[i:i + batch_size].to(device)).argmax(1).cpu() == labels[i:i + batch_size]).sum().item()
                  for i in range(0, len(images), batch_size))
    return correct / len(images)
