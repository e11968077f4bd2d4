"""The domain classifier and the metrics on its features, checked on real MNIST digits (mnist5k)."""

import math

import pytest
import torch
import torch.nn.functional as F

from gan_models.classifier import split_held_out
from gan_models.metrics import class_kl, mode_coverage, quality, real_yardstick
from orchestrator.data.sources import ImageFolderDataset, ToModelImage, load_dataset
from orchestrator.evaluate.domain_classifier import domain_classifier, fingerprint
from orchestrator.evaluate.stability import StabilityMonitor
from orchestrator.spec import DataSpec, ModelSpec


@pytest.fixture(scope="module")
def mnist():
    dataset = load_dataset(DataSpec("mnist5k"), ModelSpec())
    images, labels = dataset.tensors
    train_index, held_out_index = split_held_out(len(images), 0.1, seed=0)  # the classifier's own split
    return dataset, images, labels, train_index, held_out_index


@pytest.fixture(scope="module")
def classifier(mnist_classifier):
    return mnist_classifier


@pytest.fixture(scope="module")
def reference(mnist, classifier):
    _, images, _, train_index, _ = mnist
    return classifier[0].model.embed(images[train_index])


def evaluate(classifier, reference, images, seed=0):
    return quality(*reference, *classifier[0].model.embed(images), seed=seed)


def test_classifier_is_accurate_on_held_out_digits_and_cached(mnist, classifier):
    first, cache = classifier
    assert first.trained_now and first.accuracy >= 0.95, first.accuracy
    assert first.path.parent == cache / "classifiers" and first.path.exists()
    again = domain_classifier(mnist[0], 10, image_size=28, channels=1, cache_dir=cache)
    assert not again.trained_now and again.accuracy == first.accuracy and again.path == first.path
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))
    _, images, labels, _, held_out = mnist
    predicted = again.model(images[held_out]).argmax(1)
    assert (predicted == labels[held_out]).float().mean().item() == pytest.approx(first.accuracy)


def test_fid_is_small_for_held_out_digits_and_large_for_noise_or_one_class(mnist, classifier, reference):
    _, images, labels, train_index, held_out = mnist
    real = evaluate(classifier, reference, images[held_out])
    noise = evaluate(classifier, reference, torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    threes = images[train_index][labels[train_index] == 3]
    one_class = evaluate(classifier, reference, threes)
    assert real["fid"] < 10, real
    assert noise["fid"] > 100 * real["fid"] and one_class["fid"] > 20 * real["fid"], (noise, one_class)
    assert real["kid"] < one_class["kid"] < noise["kid"]
    assert real["mode_coverage"] == 1.0 and one_class["mode_coverage"] == pytest.approx(0.1)
    assert real["class_kl"] < 0.1 and one_class["class_kl"] > 2.0
    assert real["is"] > 8 and one_class["is"] < 1.5, "IS counts the classes made confidently"
    assert real["precision"] > 0.9 and real["recall"] > 0.9
    assert one_class["precision"] > 0.9 and one_class["recall"] < 0.3, "real threes, but only threes"


def test_a_collapse_is_told_from_poor_but_varied_images_on_real_digits(mnist, classifier, reference):
    """The mode_collapse signals on real digits: held-out digits vary as the data does; blurred ones are poor but
    varied; one digit per class (a collapsed conditional G) and three per class (a partial collapse) are realistic
    but do not vary."""
    _, images, labels, train_index, held_out = mnist
    features = classifier[0].model.embed(images[held_out])[0]
    yardstick = real_yardstick(reference[0], features)
    assert yardstick["real_precision"] > 0.9 and yardstick["real_recall"] > 0.9
    held = images[held_out]
    per_class = [held[labels[held_out] == k] for k in range(10)]
    cases = {"real": held, "blurred": F.avg_pool2d(held, 3, 1, 1),
             "one per class": torch.cat([digits[:1].repeat(50, 1, 1, 1) for digits in per_class]),
             "three per class": torch.cat([digits[:3].repeat(17, 1, 1, 1)[:50] for digits in per_class])}
    flagged = {}
    for name, fakes in cases.items():
        scores = {**evaluate(classifier, reference, fakes), **yardstick}
        flagged[name] = [f.reason for f in StabilityMonitor(1, "nonsaturating").observe_eval(1, scores)]
        if name == "real":
            assert 0.8 < scores["class_spread"] < 1.25, scores
        if name == "one per class":
            assert scores["class_spread"] < 0.01 and scores["mode_coverage"] == 1.0, scores
    assert {name: bool(reasons) for name, reasons in flagged.items()} == {
        "real": False, "blurred": False, "one per class": True, "three per class": True}, flagged
    assert "class_spread" in flagged["one per class"][0] and "recall" in flagged["three per class"][0]


def test_repeated_evaluation_with_another_seed_varies_by_less_than_5_percent(mnist, classifier, reference):
    """An imperfect sampler (real digits with noise) drawn and evaluated under two seeds."""
    _, images, _, train_index, _ = mnist

    def sampler(seed):
        g = torch.Generator().manual_seed(seed)
        chosen = images[train_index[torch.randperm(len(train_index), generator=g)[:2000]]]
        return (chosen + 0.25 * torch.randn(chosen.shape, generator=g)).clamp(-1, 1)

    first, second = (evaluate(classifier, reference, sampler(seed), seed=seed) for seed in (1, 2))
    assert first["fid"] > 10, "an imperfect sampler, so that 5% is a meaningful bound"
    for name in ("fid", "kid", "is"):
        assert abs(first[name] - second[name]) < 0.05 * max(first[name], second[name]), (name, first, second)


def test_inception_score_of_confident_logits_is_finite():
    """A confident classifier's logits leave float32 probabilities of exactly 0; IS must not turn them into NaN."""
    logits = torch.full((12, 10), -150.0)
    logits[torch.arange(12), torch.arange(12) % 10] = 150.0
    features = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    scores = quality(features, logits, features, logits)
    assert scores["is"] == scores["is"] and scores["is"] > 1


def test_mode_coverage_and_class_kl():
    assert mode_coverage(torch.tensor([0.5, 0.5, 0.0, 0.0])) == 0.5
    assert mode_coverage(torch.tensor([0.13, 0.13, 0.13, 0.61])) == 1.0
    assert mode_coverage(torch.tensor([0.12, 0.13, 0.13, 0.62])) == 0.75, "below 1/(2K) = 0.125 is not covered"
    balanced = torch.full((10,), 0.1)
    assert class_kl(balanced, balanced) == pytest.approx(0)
    assert class_kl(torch.eye(10)[3], balanced) == pytest.approx(math.log(10), rel=1e-4)


def test_single_class_data_is_refused(tmp_path):
    with pytest.raises(ValueError, match="eval.every: the data has a single class"):
        domain_classifier(None, 1, image_size=28, channels=1, cache_dir=tmp_path)


def test_folder_fingerprint_follows_the_files(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        Image.new("L", (8, 8), 10).save(tmp_path / label / "x.png")
    dataset = ImageFolderDataset(tmp_path, ToModelImage(28, 1))
    before = fingerprint(dataset, 28, 1)
    assert fingerprint(ImageFolderDataset(tmp_path, ToModelImage(28, 1)), 28, 1) == before
    assert fingerprint(dataset, 32, 1) != before, "the image size is part of it"
    Image.new("L", (9, 9), 200).save(tmp_path / "b" / "x.png")
    assert fingerprint(ImageFolderDataset(tmp_path, ToModelImage(28, 1)), 28, 1) != before


@pytest.mark.parametrize("size, held_out", [(40, 20), (25, 5)])
def test_the_evaluator_names_the_yardstick_of_collapse_or_why_there_is_none(tmp_path, size, held_out):
    """The real images beyond the reference are the yardstick of recall: with more than NEAREST_K of them their
    scores join every evaluation's; with fewer, the tag says there is none and why."""
    from torch.utils.data import TensorDataset

    from orchestrator.evaluate.evaluator import Evaluator

    images, labels = load_dataset(DataSpec("mnist5k"), ModelSpec()).tensors
    dataset = TensorDataset(images[:size], labels[:size])
    evaluator = Evaluator(dataset, 10, 0, num_samples=20, latent_dim=4, image_size=28, channels=1,
                          cache_dir=str(tmp_path), seed=0, device=torch.device("cpu"))

    class Replay(torch.nn.Module):
        def forward(self, z):
            return images[-len(z):]

    scores = evaluator.evaluate(Replay())
    if held_out > 5:
        assert evaluator.yardstick_line == f"{held_out} held-out real images against the 20 of the reference"
        assert {"real_precision", "real_recall", "real_manifold_coverage"} <= set(scores)
    else:
        assert evaluator.yardstick_line.startswith(f"none: the data holds {held_out} images besides the 20 of the "
                                                   "reference (eval.num_samples), 6 needed")
        assert not {k for k in scores if k.startswith("real_")}
