"""The `ray-data` source: images under a local folder or a cloud URI (s3://, gs://), read and decoded by
Ray Data tasks and streamed to the training workers, so a dataset need not fit on one node.

The layout is `folder`'s: class subfolders are the classes (sorted by name), and without them every image has
label 0. Images go through `folder`'s transform (model channels, short side resized, center crop) and travel as
uint8; the workers scale them to [-1, 1]. Files without an image suffix are not read; images that cannot be
decoded are dropped before the stream is split, and their paths collected by a `SkippedFiles` actor.

Ray Train splits the stream into equal shares (`streaming_split(equal=True)`), so every worker takes the same
number of batches per epoch. That matters: the split's epochs are a barrier, and a worker that ran out first
would wait there while the others wait for it in an all-reduce. Where the global batch does not split evenly (an
elastic group's size), every worker reads batches of the largest share and keeps its own share of each.
"""

import io
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import TensorDataset

from orchestrator.data.sources import IMAGE_SUFFIXES, ToModelImage, to_unit_range
from orchestrator.spec import JobSpec

# Rows each worker shuffles locally, in batches: Ray Data reshuffles the file order every epoch, and this
# buffer mixes the images of neighbouring files.
SHUFFLE_BUFFER_BATCHES = 8
# Evaluation reads a seeded sample of this many images (or 2 x eval.num_samples, if more) into memory: the domain
# classifier trains on it, and the real reference and as many held-out images are drawn from it.
EVAL_SAMPLE_IMAGES = 5000
READ_THREADS = 16  # files read at once for that sample (object stores answer each read slowly)


def open_root(path: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a local folder or a URI such as s3://bucket/dir."""
    import pyarrow.fs

    try:
        if "://" in path:
            filesystem, root = pyarrow.fs.FileSystem.from_uri(path)
        else:
            filesystem, root = pyarrow.fs.LocalFileSystem(), str(Path(path).expanduser().resolve())
        kind = filesystem.get_file_info(root).type
    except (OSError, ValueError) as err:  # unknown scheme, no credentials, unreachable store
        raise ValueError(f"data.path: cannot open {path}: {err}") from None
    if kind == pyarrow.fs.FileType.NotFound:
        raise ValueError(f"data.path: no such directory: {path}")
    if kind != pyarrow.fs.FileType.Directory:
        raise ValueError(f"data.path: {path} is a file; expected a folder of images")
    return filesystem, root.rstrip("/")


def list_classes(path: str) -> list[str]:
    """The class subfolders directly under `path`, sorted; empty when the images lie in the folder itself."""
    import pyarrow.fs

    filesystem, root = open_root(path)
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(root))
    return sorted(e.base_name for e in entries if e.type == pyarrow.fs.FileType.Directory)


@dataclass
class Survey:
    images: int          # files with an image suffix (not yet decoded)
    other_files: int     # files the source will not read
    classes: list[str]

    def describe(self) -> str:
        text = f"{self.images:,} image files"
        if self.classes:
            text += f" in {len(self.classes)} classes"
        if self.other_files:
            text += f"; {self.other_files} other files not read"
        return text + " (streamed by Ray Data)"


def survey(path: str) -> Survey:
    """List what the source will read, without decoding anything. Raises when there is no image to read."""
    import pyarrow.fs

    filesystem, root = open_root(path)
    classes = list_classes(path)
    images = other = 0
    for folder in [f"{root}/{c}" for c in classes] or [root]:
        for entry in filesystem.get_file_info(pyarrow.fs.FileSelector(folder, recursive=True)):
            if entry.type == pyarrow.fs.FileType.File:
                if Path(entry.base_name).suffix.lower() in IMAGE_SUFFIXES:
                    images += 1
                else:
                    other += 1
    if not images:
        where = f" in its class folders ({', '.join(classes)})" if classes else ""
        raise ValueError(f"data.path: no image files under {path}{where}")
    return Survey(images, other, classes)


def list_images(path: str) -> tuple[Any, list[str], list[int], list[str]]:
    """(filesystem, image file paths sorted, their labels, class names) of the source."""
    import pyarrow.fs

    filesystem, root = open_root(path)
    classes = list_classes(path)
    files, labels = [], []
    for label, folder in enumerate([f"{root}/{c}" for c in classes] or [root]):
        entries = filesystem.get_file_info(pyarrow.fs.FileSelector(folder, recursive=True))
        found = sorted(e.path for e in entries if e.type == pyarrow.fs.FileType.File
                       and Path(e.base_name).suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    return filesystem, files, labels, classes


def eval_sample(path: str, *, num_samples: int, image_size: int, channels: int, seed: int) -> TensorDataset:
    """A seeded random sample of the source's images, decoded into memory for evaluation: the same images on
    every rank and in every run over the same files. Images that cannot be decoded are left out."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, UnidentifiedImageError

    filesystem, files, labels, _ = list_images(path)
    count = min(len(files), max(2 * num_samples, EVAL_SAMPLE_IMAGES))  # the reference, and as many held out
    chosen = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:count].sort().values.tolist()
    transform = ToModelImage(image_size, channels)

    def decode(index: int) -> torch.Tensor | None:
        try:
            with filesystem.open_input_file(files[index]) as stream, Image.open(io.BytesIO(stream.read())) as image:
                return transform(image)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return None

    with ThreadPoolExecutor(READ_THREADS) as pool:
        images = list(pool.map(decode, chosen))
    kept = [i for i, image in enumerate(images) if image is not None]
    if not kept:
        raise ValueError(f"data.path: none of the {count} images sampled for evaluation under {path} could be decoded")
    return TensorDataset(torch.stack([images[i] for i in kept]), torch.tensor([labels[chosen[i]] for i in kept]))


class SkippedFiles:
    """Paths of the images Ray Data's tasks could not decode (each epoch decodes again: a set).
    Run as a Ray actor: `ray.remote(num_cpus=0)(SkippedFiles).remote()`."""

    def __init__(self) -> None:
        self.paths: set[str] = set()

    def add(self, paths: list[str]) -> None:
        self.paths.update(paths)

    def read(self) -> list[str]:
        return sorted(self.paths)


def decode_batch(batch: dict[str, np.ndarray], *, root: str, classes: list[str], image_size: int, channels: int,
                 skipped: Any = None) -> dict[str, np.ndarray]:
    """A batch of files (`bytes`, `path`) -> decoded `image` (uint8, C x H x W) and `label`; unreadable files
    are dropped and reported to `skipped`."""
    from PIL import Image, UnidentifiedImageError

    transform = ToModelImage(image_size, channels)
    label_of = {name: i for i, name in enumerate(classes)}
    images, labels, failed = [], [], []
    for data, path in zip(batch["bytes"], batch["path"]):
        try:
            with Image.open(io.BytesIO(data)) as image:
                images.append(transform.pixels(image).numpy())
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            failed.append(str(path))
            continue
        labels.append(label_of[str(path)[len(root):].lstrip("/").split("/")[0]] if classes else 0)
    if failed and skipped is not None:
        skipped.add.remote(failed)
    empty = np.zeros((0, channels, image_size, image_size), np.uint8)
    return {"image": np.stack(images) if images else empty, "label": np.array(labels, dtype=np.int64)}


def build_dataset(spec: JobSpec, skipped: Any = None) -> Any:
    """The lazy Ray Dataset of decoded training images; Ray Train executes and splits it once per epoch.
    `skipped`: a SkippedFiles actor handle."""
    import ray.data
    from ray.data import FileShuffleConfig

    filesystem, root = open_root(spec.data.path)
    classes = list_classes(spec.data.path)
    files = ray.data.read_binary_files([f"{root}/{c}" for c in classes] or root, filesystem=filesystem,
                                       include_paths=True, file_extensions=[s[1:] for s in sorted(IMAGE_SUFFIXES)],
                                       shuffle=FileShuffleConfig(seed=spec.seed))
    decode = partial(decode_batch, root=root, classes=classes, image_size=spec.model.image_size,
                     channels=spec.model.channels, skipped=skipped)
    return files.map_batches(decode, batch_format="numpy")


class StreamedBatches:
    """Endless batches of this worker's share of the stream (a Ray Train dataset shard); each pass is an epoch.
    Yields what `ShardedBatches` yields: images in [-1, 1] and labels, on the device. Batches of `batch_size` are
    read, of which the first `keep` (all by default) are yielded: workers with unequal shares of the global batch
    read alike, so they take the same number of batches per epoch."""

    def __init__(self, shard: Any, *, batch_size: int, seed: int, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format, keep: int | None = None):
        self.shard = shard
        self.batch_size = batch_size
        self.keep = keep or batch_size
        self.seed = seed
        self.device = device
        self.memory_format = memory_format

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while True:
            batches = 0
            for batch in self.shard.iter_torch_batches(
                    batch_size=self.batch_size, drop_last=True, device=self.device,
                    pin_memory=self.device.type == "cuda",
                    local_shuffle_buffer_size=SHUFFLE_BUFFER_BATCHES * self.batch_size,
                    local_shuffle_seed=self.seed + epoch):
                batches += 1
                images, labels = batch["image"][:self.keep], batch["label"][:self.keep]
                yield to_unit_range(images).contiguous(memory_format=self.memory_format), labels
            if not batches:  # equal shares: every worker finds this at the same epoch
                raise ValueError(f"data.path: each worker's share of the readable images is smaller than its batch "
                                 f"of {self.batch_size}: lower train.batch_size or resources.num_workers")
            epoch += 1
