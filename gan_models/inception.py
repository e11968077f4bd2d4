"""FID's Inception-v3 (torch-fidelity's port of the TF 2015-12-05 graph, as torchmetrics uses it), with the domain
classifier's interface: `embed(images in [-1, 1]) -> (2048 pool features, 1008 logits)`.

It never downloads by itself: it is given a local weights file. `HUB_FILE` is where torch-fidelity's own
download (`torch.hub.load_state_dict_from_url`) leaves them.
"""

import os
from pathlib import Path

import torch
from torch import nn

WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
FEATURES, LOGITS = "2048", "logits_unbiased"


def hub_file() -> Path:
    """Where torch.hub keeps the downloaded weights (under $TORCH_HOME, by default ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(WEIGHTS_URL)


def download_weights() -> Path:
    """Fetch the weights into torch.hub's cache, unless they are there; returns the file."""
    path = hub_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(WEIGHTS_URL, str(path), progress=False)
    return path


def check_weights(path: str | Path) -> None:
    """Raise ValueError unless `path` holds a plain state dict of this network. torch-fidelity reads the file with
    weights_only=False; reading it first with weights_only=True refuses a file that would run code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable weights file: {err}") from None
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise ValueError(f"{path}: not the FID Inception-v3 weights (expected torch-fidelity's "
                         f"{os.path.basename(WEIGHTS_URL)})")


class InceptionFeatures(nn.Module):
    num_features = 2048
    num_classes = 1008

    def __init__(self, weights: str | Path):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        super().__init__()
        check_weights(weights)
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", [FEATURES, LOGITS],
                                               feature_extractor_weights_path=str(weights))

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] with 1 or 3 channels, any size -> (features, logits) in fp32. The network takes
        uint8 RGB and resizes it to 299 px itself."""
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        features, logits = self.net(pixels)
        return features.float(), logits.float()
