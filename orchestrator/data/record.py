"""What a run trained on, in the words of MLflow's dataset inputs (name, digest, source, profile), with no MLflow:
rank 0's logger hands it on (orchestrator.track)."""

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from orchestrator.spec import DataSpec, ModelSpec


def dataset_record(data: DataSpec, model: ModelSpec, dataset: Dataset | None,
                   kept: torch.Tensor | None = None) -> dict[str, Any]:
    """The dataset's name, digest (of its pixels for a built-in source, of its files' names and sizes for a folder,
    of what names it otherwise; and of the indices `kept` of data.labels_per_class), source type and source, and a
    profile: images trained on, classes, the shape trained on. `dataset` None: a Ray Data stream, named by its path."""
    digest = hashlib.sha256()
    if kept is not None:
        digest.update(kept.numpy().tobytes())
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors
        digest.update(images.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
        source_type, source = "code", {"source": data.source}
    elif data.source == "folder":
        root = dataset.root
        for path in dataset.files:
            digest.update(f"{path.relative_to(root)}:{path.stat().st_size}\n".encode())
        source_type, source = "local", {"path": str(root.resolve())}
    elif data.source == "torchvision":
        digest.update(f"{data.dataset}:{len(dataset)}".encode())
        source_type, source = "local", {"torchvision": data.dataset, "root": str(Path(data.path).expanduser())}
    else:
        digest.update(str(data.path).encode())
        source_type, source = "ray-data", {"path": str(data.path)}
    name = data.dataset if data.source == "torchvision" else \
        Path(data.path).expanduser().name if data.path else data.source
    profile = {"images": len(kept) if kept is not None else len(dataset) if dataset is not None else None,
               "labels_per_class": data.labels_per_class,
               "classes": len(getattr(dataset, "classes", None) or [])
               or (int(dataset.tensors[1].max()) + 1 if isinstance(dataset, TensorDataset) else None),
               "image_shape": [model.channels, model.image_size, model.image_size]}
    return {"name": name, "digest": digest.hexdigest()[:12], "source_type": source_type, "source": json.dumps(source),
            "profile": json.dumps({k: v for k, v in profile.items() if v is not None})}
