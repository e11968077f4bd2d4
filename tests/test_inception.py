"""Inception features: used when weights are on disk, never downloaded unasked, a clear line when missing.
The weights here are random (the real ones are a download): these tests check the plumbing, not FID's values."""

import urllib.error

import pytest
import torch

from gan_models import inception
from gan_models.inception import InceptionFeatures, check_weights, hub_file
from orchestrator.data.sources import load_dataset
from orchestrator.evaluate.evaluator import Evaluator
from orchestrator.evaluate.inception import inception_weights
from orchestrator.spec import DataSpec, EvalSpec, ModelSpec


def test_embeds_gray_and_rgb_images_of_any_size(inception_weights_file):
    net = InceptionFeatures(inception_weights_file).eval()
    for images in (torch.rand(3, 1, 28, 28) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1):
        features, logits = net.embed(images)
        assert features.shape == (len(images), 2048) and logits.shape == (len(images), 1008)
        assert features.dtype == torch.float32 and features.isfinite().all()


class RunsCode:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def test_weights_files_that_are_not_inception_or_would_run_code_are_refused(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not the FID Inception-v3 weights"):
        check_weights(tmp_path / "other.pth")
    torch.save({"payload": RunsCode()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="not a readable weights file"):
        check_weights(tmp_path / "pickled.pth")


def test_auto_without_weights_says_how_to_get_them_and_downloads_nothing(monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded unasked"))
    assert not hub_file().exists(), "conftest gives the test session an empty TORCH_HOME"
    path, line = inception_weights(EvalSpec())
    assert path is None
    assert line.startswith("off: no Inception weights") and "eval.inception_weights" in line
    assert "eval.inception: download" in line
    assert inception_weights(EvalSpec(inception="off")) == (None, "off (eval.inception: off)")


def test_named_file_is_used_and_a_missing_one_names_the_key(inception_weights_file, tmp_path):
    path, line = inception_weights(EvalSpec(inception_weights=str(inception_weights_file)))
    assert path == inception_weights_file and line == f"on: {inception_weights_file}"
    with pytest.raises(ValueError, match="eval.inception_weights: no file at"):
        inception_weights(EvalSpec(inception_weights=str(tmp_path / "missing.pth")))


def test_download_goes_to_torch_hub_cache_once_and_failures_name_the_key(inception_weights_file, monkeypatch):
    fetched = []

    def offline(url, destination, progress=True):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ValueError, match="eval.inception: 'download' could not fetch .*no network"):
        inception_weights(EvalSpec(inception="download"))

    def fake_download(url, destination, progress=True):
        fetched.append(url)
        torch.save(torch.load(inception_weights_file, weights_only=True), destination)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    try:
        path, line = inception_weights(EvalSpec(inception="download"))
        assert path == hub_file() and fetched == [inception.WEIGHTS_URL] and line.endswith("(downloaded)")
        assert inception_weights(EvalSpec(inception="download"))[0] == hub_file() and len(fetched) == 1
        assert inception_weights(EvalSpec())[0] == hub_file(), "auto finds what download left"
    finally:
        hub_file().unlink()


class Replay(torch.nn.Module):
    """A 'generator' that returns fixed images, whatever z it gets."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.register_buffer("images", images)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.images[:len(z)]


def test_evaluator_adds_inception_metrics(inception_weights_file, mnist_classifier):
    dataset = load_dataset(DataSpec("mnist5k"), ModelSpec())
    evaluator = Evaluator(dataset, 10, 0, num_samples=12, latent_dim=4, image_size=28, channels=1,
                          cache_dir=str(mnist_classifier[1]), seed=0, device=torch.device("cpu"), inception=inception_weights_file)
    real = evaluator.evaluate(Replay(dataset.tensors[0][-12:]))
    noise = evaluator.evaluate(Replay(torch.rand(12, 1, 28, 28) * 2 - 1))
    for scores in (real, noise):
        assert {"fid", "mode_coverage", "fid_inception", "kid_inception", "is_inception"} <= set(scores)
        # class_spread may be NaN: of 12 images, a class seldom holds two generated and two real ones
        assert all(v == v for k, v in scores.items() if k != "class_spread"), [k for k, v in scores.items() if v != v]
    assert real["fid_inception"] < noise["fid_inception"]
