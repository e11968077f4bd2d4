"""Sample quality of G_ema during training and in `ganorch eval`: FID, KID, IS, precision/recall and class coverage on
the domain classifier's features (and Inception's, when its weights are there), computed by all ranks together."""

import math
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from gan_models import sample_latent
from gan_models.classifier import DomainClassifier
from gan_models.metrics import NEAREST_K, distances, quality, real_yardstick
from orchestrator.data import splits
from orchestrator.distributed import collectives
from orchestrator.distributed.collectives import gather_rows, gather_rows_to_rank0
from orchestrator.evaluate import tstr
from orchestrator.evaluate.domain_classifier import check_labelled, check_tstr, domain_classifier

# How long the other ranks wait while rank 0 trains (or loads) the domain classifier: training on the largest
# subset (splits.MAX_TRAIN_IMAGES) takes minutes on a small CPU.
CLASSIFIER_WAIT_S = 3600.0


class Evaluator:
    """Sample quality of G_ema during training, on every rank at once: each rank embeds its share of the real
    reference images (once) and of the generated samples (each evaluation), and every rank computes the
    metrics from all of them. Rank 0 trains or loads the classifier and hands it to the others. With Inception
    weights, the same images are embedded by Inception too, for fid_inception, kid_inception and is_inception."""

    BATCH = {"": 500, "_inception": 50}   # images per forward, by metric suffix (Inception runs at 299 px)

    def __init__(self, dataset: Dataset, data_classes: int, generator_classes: int, *, num_samples: int,
                 latent_dim: int, image_size: int, channels: int, cache_dir: str | None, seed: int,
                 device: torch.device, inception: Path | None = None, tstr_samples: int = 0):
        check_labelled(data_classes)  # on every rank, before any of them waits for rank 0's classifier
        if tstr_samples:
            check_tstr(tstr_samples, data_classes, generator_classes)
        self.rank, self.world_size = collectives.rank(), collectives.world_size()
        shared: list = [None]
        if self.rank == 0:
            classifier = domain_classifier(dataset, data_classes, image_size=image_size, channels=channels,
                                           cache_dir=cache_dir, seed=seed)
            shared = [(classifier.model.state_dict(), classifier.accuracy, str(classifier.path), classifier.trained_now)]
            if tstr_samples:  # rank 0 alone trains TSTR's classifiers, so it alone holds what they are scored on
                self.held_out = tstr.HeldOut(*splits.read(dataset, splits.classifier_split(dataset, seed)[1]))
                self.trtr = tstr.trtr_accuracy(dataset, self.held_out, data_classes, tstr_samples, classifier.path,
                                               seed, device)
        collectives.wait_for_rank0("the domain classifier" + (" and TRTR (eval.tstr)" if tstr_samples else ""),
                                   CLASSIFIER_WAIT_S)
        if self.world_size > 1:
            dist.broadcast_object_list(shared, src=0, device=device if device.type == "cuda" else None)
        state, self.classifier_accuracy, self.classifier_path, self.trained_now = shared[0]
        model = DomainClassifier(channels, data_classes)
        model.load_state_dict(state)
        self.extractors: dict[str, torch.nn.Module] = {"": model.to(device).eval()}
        if inception is not None:
            from gan_models.inception import InceptionFeatures
            self.extractors["_inception"] = InceptionFeatures(inception).to(device).eval()
        self.device, self.seed, self.tstr_samples = device, seed, tstr_samples
        self.image_shape = (channels, image_size, image_size)
        self.num_samples, self.latent_dim, self.generator_classes = num_samples, latent_dim, generator_classes
        self.share = -(-num_samples // self.world_size)

        # The real reference: a seeded random subset of the data, embedded once; and as many other real images
        # (where the data has them), the yardstick of what G's recall and coverage would be without mode collapse.
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        count = min(num_samples, len(dataset))
        self.reference = {suffix: self.embed_real(dataset, order[:count], suffix) for suffix in self.extractors}
        held_out = order[count:2 * count]
        self.yardstick: dict[str, float] = {}
        if len(held_out) > NEAREST_K:
            self.yardstick = real_yardstick(self.reference[""][0], self.embed_real(dataset, held_out, "")[0])
            self.yardstick_line = f"{len(held_out)} held-out real images against the {count} of the reference"
        else:
            self.yardstick_line = (f"none: the data holds {len(held_out)} images besides the {count} of the reference "
                                   f"(eval.num_samples), {NEAREST_K + 1} needed; mode_collapse judges class coverage "
                                   "and class_spread only")

    def embed_real(self, dataset: Dataset, chosen: torch.Tensor, suffix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits of the images `chosen`, every rank embedding its share (on every rank)."""
        mine = chosen[self.rank::self.world_size].tolist()
        if mine:
            images = torch.stack([dataset[i][0] for i in mine])
        else:
            images = torch.zeros(0, *dataset[0][0].shape)
        features, logits = self.embed(suffix, images)
        share = -(-len(chosen) // self.world_size)
        features, logits = gather_rows(features, share), gather_rows(logits, share)
        assert len(features) == len(chosen), (len(features), len(chosen))
        return features, logits

    def embed(self, suffix: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        extractor, batch = self.extractors[suffix], self.BATCH[suffix]
        outputs = [extractor.embed(images[k:k + batch].to(self.device)) for k in range(0, len(images), batch)]
        if not outputs:
            return torch.zeros(0, extractor.num_features, device=self.device), \
                torch.zeros(0, extractor.num_classes, device=self.device)
        return torch.cat([f for f, _ in outputs]), torch.cat([lg for _, lg in outputs])

    @torch.no_grad()
    def evaluate(self, G: torch.nn.Module) -> dict[str, float]:
        """The metrics of `G`'s samples; the same z (and classes) at every evaluation, so steps compare."""
        noise = torch.Generator(device=self.device).manual_seed(self.seed + 7919)
        z = sample_latent(self.num_samples, self.latent_dim, generator=noise, device=self.device)
        labels = (torch.randint(self.generator_classes, (self.num_samples,), generator=noise, device=self.device)
                  if self.generator_classes else None)
        mine = slice(self.rank * self.share, (self.rank + 1) * self.share)
        images = self.generate(G, z[mine], labels[mine] if labels is not None else None)
        scores: dict[str, float] = {}
        for suffix in self.extractors:
            features, logits = self.embed(suffix, images)
            features, logits = gather_rows(features, self.share), gather_rows(logits, self.share)
            assert len(features) == self.num_samples, (len(features), self.num_samples)
            real_features, real_logits = self.reference[suffix]
            if suffix == "":
                scores.update(quality(real_features, real_logits, features, logits, seed=self.seed))
                scores.update(self.yardstick)
            else:
                found = distances(real_features, features, logits, seed=self.seed)
                scores.update({f"{name}{suffix}": value for name, value in found.items()})
        if self.tstr_samples:
            scores.update(self.train_on_synthetic(G))
        return scores

    def generate(self, G: torch.nn.Module, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        was_training = G.training
        G.eval()
        batch = self.BATCH[""]
        images = [G(z[k:k + batch]) if labels is None else G(z[k:k + batch], labels[k:k + batch])
                  for k in range(0, len(z), batch)]
        G.train(was_training)
        return torch.cat(images).float() if images else torch.zeros(0, *self.image_shape, device=self.device)

    def train_on_synthetic(self, G: torch.nn.Module) -> dict[str, float]:
        """tstr_accuracy, trtr_accuracy and tstr_ratio (see orchestrator.evaluate.tstr) on every rank: every rank
        draws its share of the samples and sends it to rank 0, which trains the classifier on all of them (one classifier, so its number
        does not depend on the worker count) and hands the scores to the others."""
        count = self.tstr_samples
        noise = torch.Generator(device=self.device).manual_seed(self.seed + 104729)
        z = sample_latent(count, self.latent_dim, generator=noise, device=self.device)
        labels = tstr.balanced_labels(count, self.generator_classes).to(self.device)
        share = -(-count // self.world_size)
        mine = slice(self.rank * share, (self.rank + 1) * share)
        images = gather_rows_to_rank0(self.generate(G, z[mine], labels[mine]), share)
        found: list = [None]
        if self.rank == 0:
            accuracy = (tstr.tstr_accuracy(images, labels, self.held_out, self.generator_classes, self.seed,
                                           self.device)
                        if images.isfinite().all() else math.nan)  # a diverged G: nothing to learn from
            found = [{"tstr_accuracy": accuracy, "trtr_accuracy": self.trtr, "tstr_ratio": accuracy / self.trtr if self.trtr else math.nan}]
        collectives.wait_for_rank0("TSTR's classifier (eval.tstr)", CLASSIFIER_WAIT_S)
        if self.world_size > 1:
            dist.broadcast_object_list(found, src=0, device=self.device if self.device.type == "cuda" else None)
        return found[0]
