"""Drawing images from a generator: which classes, which latents (a seed, the truncation trick), in batches; and
writing them as PNG files and grids. `ganorch sample` and `ganorch export` share it."""

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from orchestrator.generate.generator_source import Generator

BATCH = 500  # images a forward pass


def parse_classes(text: str | None, G: Generator) -> list[int]:
    """`--classes 3,7` checked against the generator: [] for an unconditional one without the flag, every class of
    a conditional one without it. ValueError naming the flag."""
    if text is None:
        return list(range(G.num_classes))
    if not G.num_classes:
        raise ValueError(f"--classes: {G.source} is unconditional (it draws no class); leave --classes out")
    try:
        classes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--classes: got {text!r}; class numbers separated by commas, e.g. 3,7") from None
    wrong = [c for c in classes if not 0 <= c < G.num_classes]
    if not classes or wrong:
        raise ValueError(f"--classes: got {text!r}; {G.source} draws classes 0 to {G.num_classes - 1}")
    return list(dict.fromkeys(classes))


def class_counts(num: int, classes: list[int]) -> dict[int, int]:
    """`num` images shared out over `classes` as evenly as they go (the first ones take what is left over)."""
    each, extra = divmod(num, len(classes))
    return {c: each + (i < extra) for i, c in enumerate(classes)}


def latents(num: int, latent_dim: int, seed: int, truncation: float | None) -> torch.Tensor:
    """z ~ N(0, I), or with `truncation` psi a truncated normal: every value redrawn until it lies in [-psi, psi]
    (the truncation trick: fewer, more typical images). The same seed gives the same latents."""
    generator = torch.Generator().manual_seed(seed)
    if truncation is None:
        return torch.randn(num, latent_dim, generator=generator)
    z = torch.empty(num, latent_dim)
    return torch.nn.init.trunc_normal_(z, 0.0, 1.0, -truncation, truncation, generator=generator)


def draw(G: Generator, num: int, classes: list[int], seed: int, truncation: float | None,
         device: torch.device) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`num` images as uint8 (n, H, W, C) batches with their labels (-1: unconditional), class after class when
    conditional. The latents are drawn for all `num` at once, so a batch's images do not depend on the batch size."""
    z = latents(num, G.latent_dim, seed, truncation)
    labels = torch.tensor([c for c, n in class_counts(num, classes).items() for _ in range(n)] if classes
                          else [-1] * num, dtype=torch.int64)
    for start in range(0, num, BATCH):
        zb, lb = z[start:start + BATCH].to(device), labels[start:start + BATCH]
        images = G(zb, lb.to(device) if classes else None)
        yield to_uint8(images), lb.numpy()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], (N, C, H, W) -> uint8 (N, H, W, C)."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def save_png(pixels: np.ndarray, path: Path) -> None:
    """One uint8 (H, W, C) image; grey when C is 1."""
    from PIL import Image

    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def grid(pixels: np.ndarray, labels: np.ndarray, padding: int = 2) -> np.ndarray:
    """uint8 (N, H, W, C) images as one (H', W', C) grid: a row per class when labelled, else as square as it goes."""
    n, h, w, c = pixels.shape
    if labels.size and labels[0] >= 0:
        rows = [pixels[labels == label] for label in dict.fromkeys(labels.tolist())]
    else:
        columns = math.ceil(math.sqrt(n))
        rows = [pixels[i:i + columns] for i in range(0, n, columns)]
    columns = max(len(row) for row in rows)
    out = np.zeros((padding + len(rows) * (h + padding), padding + columns * (w + padding), c), np.uint8)
    for r, row in enumerate(rows):
        for k, image in enumerate(row):
            top, left = padding + r * (h + padding), padding + k * (w + padding)
            out[top:top + h, left:left + w] = image
    return out


def check_new(grid_path: Path | None, out_dir: Path | None) -> None:
    """What `sample` and `export` write must not be there: a file is never overwritten. ValueError naming the flag."""
    if grid_path is not None:
        if grid_path.exists():
            raise ValueError(f"--grid: {grid_path} exists; name a new file, or remove it first")
        if not grid_path.resolve().parent.is_dir():
            raise ValueError(f"--grid: no directory {grid_path.resolve().parent} to write {grid_path.name} into")
    if out_dir is not None and out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"--out: {out_dir} exists and is not an empty directory; name a new one")


def write_samples(G: Generator, num: int, classes: list[int], seed: int, truncation: float | None,
                  device: torch.device, grid_path: Path | None, out_dir: Path | None) -> list[Path]:
    """`num` images as a grid PNG and/or one PNG each in `out_dir` (`NNNNNN.png`, `NNNNNN_class<k>.png` when
    labelled); the files written."""
    batches = list(draw(G, num, classes, seed, truncation, device))
    pixels, labels = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    written = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(pixels, labels)):
            path = out_dir / (f"{i:06d}_class{label}.png" if label >= 0 else f"{i:06d}.png")
            save_png(image, path)
            written.append(path)
    if grid_path is not None:
        save_png(grid(pixels, labels), grid_path)
        written.append(grid_path)
    return written
