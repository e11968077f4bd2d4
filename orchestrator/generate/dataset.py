"""`ganorch export`: a labelled synthetic dataset from a generator, as class folders of PNGs (what
`torchvision.datasets.ImageFolder` and ganorch's `data.source: folder` read) or one `.npz`, with a manifest beside it
that says where it came from."""

import json
import time
from pathlib import Path

import numpy as np
import torch

from orchestrator.generate.generator_source import Generator
from orchestrator.generate.samples import BATCH, class_counts, draw, save_png

MANIFEST = "manifest.json"
UNLABELLED = "unlabelled"  # the one folder of an unconditional generator's images


def manifest_path(out: Path) -> Path:
    """In the folder, or beside FILE.npz as FILE.manifest.json."""
    return out / MANIFEST if out.suffix != ".npz" else out.with_name(f"{out.stem}.{MANIFEST}")


def check_new(out: Path) -> None:
    """Nothing of what `export` writes may be there. ValueError naming --out."""
    if out.suffix == ".npz":
        if out.exists() or manifest_path(out).exists():
            raise ValueError(f"--out: {out if out.exists() else manifest_path(out)} exists; name a new file, or "
                             "remove it first")
        if not out.resolve().parent.is_dir():
            raise ValueError(f"--out: no directory {out.resolve().parent} to write {out.name} into")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out: {out} exists and is not an empty directory; name a new one (or FILE.npz)")


def folder_name(label: int, num_classes: int) -> str:
    """A class folder's name: its label, zero-padded so that folders sort in label order (ImageFolder's labels)."""
    return UNLABELLED if label < 0 else f"{label:0{len(str(num_classes - 1))}d}"


def export(G: Generator, num: int, classes: list[int], seed: int, truncation: float | None, device: torch.device,
           out: Path, show_progress: bool = True) -> dict:
    """Write `num` images to `out` (a folder, or a FILE.npz: `images` uint8 (N, H, W, C), `labels` int64, -1 when
    unconditional) and the manifest; returns the manifest."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    started = time.perf_counter()
    as_npz = out.suffix == ".npz"
    if not as_npz:
        out.mkdir(parents=True, exist_ok=True)
        for label in classes or [-1]:
            (out / folder_name(label, G.num_classes)).mkdir()
    images, labels, index = [], [], 0
    columns = (TextColumn("export"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=True) as progress:
        task = progress.add_task("export", total=num)
        for pixels, batch_labels in draw(G, num, classes, seed, truncation, device):
            if as_npz:
                images.append(pixels)
                labels.append(batch_labels)
            else:
                for image, label in zip(pixels, batch_labels):
                    save_png(image, out / folder_name(int(label), G.num_classes) / f"{index:06d}.png")
                    index += 1
            progress.advance(task, len(pixels))
    if as_npz:
        np.savez(out, images=np.concatenate(images), labels=np.concatenate(labels))
    counts = class_counts(num, classes) if classes else {-1: num}
    manifest = {
        "source": G.source, "step": G.step, "seed": seed, "truncation": truncation, "num": num,
        "format": "npz" if as_npz else "folder",
        "classes": {folder_name(c, G.num_classes) if not as_npz else str(c): n for c, n in counts.items()},
        # ImageFolder numbers the folders 0, 1, ... in sorted order: its label -> the generator's class
        **({"image_folder_labels": {i: c for i, c in enumerate(sorted(counts))}} if not as_npz and classes else {}),
        "image_shape": list(G.image_shape), "batch": BATCH,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.perf_counter() - started, 2),
    }
    manifest_path(out).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
