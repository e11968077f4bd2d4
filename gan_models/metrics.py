"""Sample-quality metrics on a domain classifier's features and logits.

FID, KID and IS are torchmetrics' (fed features computed once, through an identity "feature extractor"), precision,
recall, density and coverage are prdc's (Kynkäänniemi et al. 2019; Naeem et al. 2020); mode coverage, the class
histogram's KL divergence and the within-class spread are defined here.
"""

import contextlib
import io
import math
import warnings

import torch
from torch import nn

# prdc's k for its k-nearest-neighbour manifolds, as in its paper.
NEAREST_K = 5
NAMES = ("fid", "kid", "is", "precision", "recall", "density", "manifold_coverage", "mode_coverage", "class_kl",
         "class_spread")


class Precomputed(nn.Module):
    """torchmetrics' custom feature extractor, for features computed already: the identity."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def class_histogram(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Share of samples the classifier puts in each class."""
    return torch.bincount(logits.argmax(1), minlength=num_classes).double() / len(logits)


def mode_coverage(histogram: torch.Tensor) -> float:
    """Share of the K classes that hold at least 1/(2K) of the samples: 1 when every class is made, 1/K when one is."""
    count = len(histogram)
    return (histogram >= 1 / (2 * count)).double().mean().item()


def class_kl(fake_histogram: torch.Tensor, real_histogram: torch.Tensor, eps: float = 1e-6) -> float:
    """KL(generated || real) of the class histograms: 0 when G draws classes as the data does, log K when it
    draws one class of K balanced ones."""
    fake, real = fake_histogram.clamp_min(eps), real_histogram.clamp_min(eps)
    fake, real = fake / fake.sum(), real / real.sum()
    return (fake * (fake / real).log()).sum().item()


def spread(features: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the rows to their mean (the trace of their covariance)."""
    return (features - features.mean(0)).pow(2).sum(1).mean()


def class_spread(real_features: torch.Tensor, real_logits: torch.Tensor, fake_features: torch.Tensor,
                 fake_logits: torch.Tensor) -> float:
    """How varied G's images are within each class, as a share of the real images' variety: the features' spread
    within each class the classifier sees (at least 2 images of each kind), over the real images' spread within
    it, averaged over those classes. About 1 for real images, near 0 when G draws one image per class whatever z
    is; NaN when no class has two images of each kind."""
    real_classes, fake_classes = real_logits.argmax(1), fake_logits.argmax(1)
    ratios = []
    for k in range(real_logits.shape[1]):
        real_k, fake_k = real_features[real_classes == k], fake_features[fake_classes == k]
        if len(real_k) >= 2 and len(fake_k) >= 2:
            ratios.append((spread(fake_k.double()) / spread(real_k.double()).clamp_min(1e-12)).item())
    return sum(ratios) / len(ratios) if ratios else math.nan


def manifold(real_features: torch.Tensor, fake_features: torch.Tensor) -> dict[str, float]:
    """prdc's precision, recall, density and coverage (as `manifold_coverage`) of the fake features."""
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the sample counts
        found = compute_prdc(real_features.float().cpu().numpy(), fake_features.float().cpu().numpy(),
                             nearest_k=NEAREST_K)
    return {"precision": float(found["precision"]), "recall": float(found["recall"]),
            "density": float(found["density"]), "manifold_coverage": float(found["coverage"])}


def real_yardstick(reference_features: torch.Tensor, held_out_features: torch.Tensor) -> dict[str, float]:
    """The precision, recall and manifold coverage of real images the reference does not hold: what G's would be
    if it drew the data's distribution (with as many samples: fewer lower the coverage). Mode collapse is judged
    against them."""
    found = manifold(reference_features, held_out_features)
    return {f"real_{name}": found[name] for name in ("precision", "recall", "manifold_coverage")}


def distances(real_features: torch.Tensor, fake_features: torch.Tensor, fake_logits: torch.Tensor,
              seed: int = 0) -> dict[str, float]:
    """torchmetrics' FID and KID of the two feature sets, and the Inception Score of the fake logits. Seeded (KID's
    subsets, IS's splits) without touching the caller's random state."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    real_features, fake_features = real_features.float().cpu(), fake_features.float().cpu()
    fake_logits = fake_logits.float().cpu()
    if not (fake_features.isfinite().all() and fake_logits.isfinite().all()):  # a diverged G: nothing to measure
        return dict.fromkeys(("fid", "kid", "is"), math.nan)
    num_features = real_features.shape[1]
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        torch.manual_seed(seed)
        fid = FrechetInceptionDistance(feature=Precomputed(num_features), sync_on_compute=False)
        kid = KernelInceptionDistance(feature=Precomputed(num_features), sync_on_compute=False,
                                      subset_size=min(1000, len(real_features), len(fake_features)))
        inception = InceptionScore(feature=Precomputed(fake_logits.shape[1]), sync_on_compute=False)
        for metric in (fid, kid):
            metric.update(real_features, real=True)
            metric.update(fake_features, real=False)
        # In float64: float32 softmax rounds a class that is e^-104 less likely than another to exactly 0, and a
        # split of IS holding such zeros scores 0 * log 0 = NaN (soonest with few samples, or denormals flushed).
        inception.update(fake_logits.double())
        return {"fid": fid.compute().item(), "kid": kid.compute()[0].item(), "is": inception.compute()[0].item()}


def quality(real_features: torch.Tensor, real_logits: torch.Tensor, fake_features: torch.Tensor,
            fake_logits: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Every metric of generated samples against real ones, from the domain classifier's features and logits."""
    real_features, fake_features = real_features.float().cpu(), fake_features.float().cpu()
    real_logits, fake_logits = real_logits.float().cpu(), fake_logits.float().cpu()
    if not (fake_features.isfinite().all() and fake_logits.isfinite().all()):  # a diverged G: nothing to measure
        return dict.fromkeys(NAMES, math.nan)
    scores = distances(real_features, fake_features, fake_logits, seed)
    scores.update(manifold(real_features, fake_features))
    num_classes = real_logits.shape[1]
    fake_histogram = class_histogram(fake_logits, num_classes)
    scores["mode_coverage"] = mode_coverage(fake_histogram)
    scores["class_kl"] = class_kl(fake_histogram, class_histogram(real_logits, num_classes))
    scores["class_spread"] = class_spread(real_features, real_logits, fake_features, fake_logits)
    assert tuple(scores) == NAMES, tuple(scores)
    return scores
