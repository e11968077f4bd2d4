"""`ganorch augment-eval`: what a conditional generator's samples add to a classifier that has K labelled images per
class. The domain classifier's architecture trains on (a) the K real per class and (b) those plus M synthetic per
class, for several seeds, with the same number of steps; both are scored on the real held-out split no model trained
on. The numbers go to an MLflow run nested under the generator's run."""

import dataclasses
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gan_models.classifier import accuracy
from orchestrator.data import splits
from orchestrator.data.sources import labelled_subset, load_dataset, num_classes, to_unit_range
from orchestrator.evaluate import tstr
from orchestrator.generate.generator_source import Generator
from orchestrator.generate.samples import class_counts, draw
from orchestrator.spec import JobSpec
from orchestrator.track import store
from orchestrator.track.runs import experiment_for
from orchestrator.track.tags import LABELLED_INDICES, TAG_DESCRIPTION, TAG_EVALUATED, TAG_JOB

RESULTS = "augment_eval.json"  # the run's artifact: every seed's accuracies and the settings
MAX_SEEDS = 100  # two metric points a seed, in one of MLflow's batches (at most 1,000 metrics)


@dataclass
class Settings:
    labels_per_class: int | None = None   # None: the generator's data.labels_per_class
    synthetic_per_class: int = 500
    real_fraction: float | None = None    # the real images' share of each batch; None: in proportion to the counts
    seeds: int = 3
    steps: int = 1000
    truncation: float | None = None

    def check(self) -> None:
        """ValueError naming the flag."""
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise ValueError(f"--labels-per-class: got {self.labels_per_class}; at least 1")
        if self.synthetic_per_class < 1:
            raise ValueError(f"--synthetic-per-class: got {self.synthetic_per_class}; at least 1")
        if self.real_fraction is not None and not 0 < self.real_fraction < 1:
            raise ValueError(f"--real-fraction: got {self.real_fraction}; between 0 and 1 (exclusive)")
        if not 1 <= self.seeds <= MAX_SEEDS:
            raise ValueError(f"--seeds: got {self.seeds}; between 1 and {MAX_SEEDS}")
        if self.steps < 1:
            raise ValueError(f"--steps: got {self.steps}; at least 1")
        if self.truncation is not None and not self.truncation > 0:
            raise ValueError(f"--truncation: got {self.truncation}; a positive PSI (e.g. 0.7)")


@dataclass
class Outcome:
    labels_per_class: int
    gan_labels_per_class: int | None      # what the generator trained on (None: every image, the held-out too)
    held_out: int                         # real images scored on
    real_only: list[float] = field(default_factory=list)   # accuracy per seed
    augmented: list[float] = field(default_factory=list)
    run_id: str = ""
    parent_run_id: str | None = None
    started: float = 0.0                  # Unix time
    seconds: float = 0.0

    @staticmethod
    def summary(values: list[float]) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for one seed)."""
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def metrics(self) -> dict[str, float]:
        (real, real_sd), (augmented, augmented_sd) = self.summary(self.real_only), self.summary(self.augmented)
        return {"real_only_accuracy_mean": real, "real_only_accuracy_std": real_sd,
                "augmented_accuracy_mean": augmented, "augmented_accuracy_std": augmented_sd,
                "accuracy_gain": augmented - real}


def evaluate(G: Generator, spec: JobSpec, settings: Settings, device: torch.device,
             trained_on: list[int] | None = None) -> Outcome:
    """Train and score both arms for every seed. `trained_on`: the indices the generator's run logged as
    data/labelled_indices.json (`trained_indices`), which the data here must keep again. ValueError naming what is
    wrong."""
    started = time.time()
    if spec.data.source == "ray-data":
        raise ValueError("data.source: 'ray-data' streams its images; augment-eval draws K per class from a source it "
                         "can index (give the data with --set data.source=folder --set data.path=...)")
    if not G.num_classes:
        raise ValueError(f"{G.source} is unconditional: its samples have no labels to train a classifier on")
    shape = (spec.model.channels, spec.model.image_size, spec.model.image_size)
    if tuple(G.image_shape) != shape:
        raise ValueError(f"--set model: the generator draws {tuple(G.image_shape)} images, the spec reads the data "
                         f"as {shape}")
    trained = G.spec or {}
    gan_k = trained.get("data", {}).get("labels_per_class")
    for key, was, now in (("seed", trained.get("seed"), spec.seed),
                          ("data.labels_per_class", gan_k, spec.data.labels_per_class)):
        if was != now:
            raise ValueError(f"--set {key}: the generator trained with {was!r}; its held-out split and kept images "
                             "are those of its own spec (--labels-per-class gives the classifier another K)")
    k = settings.labels_per_class or gan_k
    if k is None:
        raise ValueError("--labels-per-class: the generator trained on every labelled image (no "
                         "data.labels_per_class); say how many real images per class the classifier gets")
    dataset = load_dataset(spec.data, spec.model)
    classes = num_classes(dataset)
    if G.num_classes != classes:
        raise ValueError(f"{G.source} draws {G.num_classes} classes, its data has {classes}")
    if trained_on is not None and labelled_subset(spec.data, dataset, spec.seed).tolist() != trained_on:
        raise ValueError(f"data: this data keeps other images for data.labels_per_class {gan_k} than the generator's "
                         "run trained on (its data/labelled_indices.json), so the held-out split here may hold "
                         "images it saw: give the data it trained on (--set data.path=...)")
    try:
        kept = labelled_subset(dataclasses.replace(spec.data, labels_per_class=k), dataset, spec.seed)
    except ValueError as err:
        if settings.labels_per_class is None:
            raise
        raise ValueError(str(err).replace("data.labels_per_class", "--labels-per-class")) from None
    real_images, real_labels = splits.read(dataset, kept)
    held_out = tstr.HeldOut(*splits.read(dataset, splits.classifier_split(dataset, spec.seed)[1]))
    out = Outcome(k, gan_k, len(held_out.labels), started=started)
    counts = class_counts(settings.synthetic_per_class * classes, list(range(classes)))
    for seed in range(settings.seeds):
        out.real_only.append(score(real_images, real_labels, held_out, classes, seed, settings, device))
        pixels, labels = zip(*draw(G, sum(counts.values()), list(counts), seed, settings.truncation, device))
        synthetic = to_unit_range(torch.from_numpy(np.concatenate(pixels)).permute(0, 3, 1, 2))  # as exported
        images = torch.cat([real_images, synthetic])
        labels = torch.cat([real_labels, torch.from_numpy(np.concatenate(labels))])
        weights = None
        if settings.real_fraction is not None:
            weights = torch.cat([torch.full((len(real_images),), settings.real_fraction / len(real_images)),
                                 torch.full((len(synthetic),), (1 - settings.real_fraction) / len(synthetic))])
        out.augmented.append(score(images, labels, held_out, classes, seed, settings, device, weights))
    out.seconds = time.time() - started
    return out


def score(images: torch.Tensor, labels: torch.Tensor, held_out: tstr.HeldOut, classes: int, seed: int,
          settings: Settings, device: torch.device, weights: torch.Tensor | None = None) -> float:
    model = tstr.seeded_classifier(images, labels, classes, seed, device, steps=settings.steps, weights=weights)
    return accuracy(model, held_out.images, held_out.labels)


def trained_indices(G: Generator, uri: str) -> list[int] | None:
    """The kept indices the generator's run logged (data/labelled_indices.json); None when it has no run here or
    trained on every image."""
    from mlflow.exceptions import MlflowException

    if not G.run_id or not (G.spec or {}).get("data", {}).get("labels_per_class"):
        return None
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = store.client(uri).download_artifacts(G.run_id, LABELLED_INDICES, folder)
            return json.loads(Path(path).read_text())["indices"]
    except (MlflowException, OSError, KeyError, ValueError):
        return None


def description(out: Outcome, G: Generator, settings: Settings) -> str:
    """The run's description (MLflow shows it on the run's page): what was compared, and what came of it."""
    m = out.metrics()
    mix = "by count" if settings.real_fraction is None else f"real drawn with chance {settings.real_fraction:g}"
    return (f"A classifier trained on {out.labels_per_class} real images per class, and on them plus "
            f"{settings.synthetic_per_class} per class of {G.source} (step {G.step}; {mix}), {settings.seeds} seeds of "
            f"{settings.steps} steps, scored on {out.held_out} held-out real images.\n"
            f"Real only {m['real_only_accuracy_mean']:.4f} +- {m['real_only_accuracy_std']:.4f}; real + synthetic "
            f"{m['augmented_accuracy_mean']:.4f} +- {m['augmented_accuracy_std']:.4f} ({m['accuracy_gain']:+.4f}).")


def log(out: Outcome, G: Generator, spec: JobSpec, settings: Settings, uri: str) -> None:
    """A run of its own, nested under the generator's training run when it is known and in this store."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException

    client = store.client(uri)
    parent = None
    if G.run_id:
        try:
            parent = client.get_run(G.run_id)
        except MlflowException:
            parent = None
    experiment_id = parent.info.experiment_id if parent else experiment_for(client, spec.experiment)
    tags = {TAG_JOB: spec.name, TAG_EVALUATED: G.source, TAG_DESCRIPTION: description(out, G, settings)}
    if parent:
        tags["mlflow.parentRunId"] = parent.info.run_id
        out.parent_run_id = parent.info.run_id
    run = client.create_run(experiment_id, start_time=int(out.started * 1000), tags=tags,
                            run_name=f"{spec.name}-augment-eval-k{out.labels_per_class}-"
                                     f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(out.started))}")
    out.run_id = run.info.run_id
    params = {"labels_per_class": out.labels_per_class, "gan_labels_per_class": out.gan_labels_per_class,
              "synthetic_per_class": settings.synthetic_per_class, "real_fraction": settings.real_fraction,
              "seeds": settings.seeds, "steps": settings.steps, "truncation": settings.truncation,
              "held_out_images": out.held_out, "held_out_seen_by_generator": out.gan_labels_per_class is None,
              "generator_step": G.step}
    params = {key: value for key, value in params.items() if value is not None}
    now = int(time.time() * 1000)
    metrics = [Metric(name, value, now, 0) for name, value in out.metrics().items()]
    for seed, (real, augmented) in enumerate(zip(out.real_only, out.augmented)):  # the metric's step is the seed
        metrics += [Metric("real_only_accuracy_by_seed", real, now, seed),
                    Metric("augmented_accuracy_by_seed", augmented, now, seed)]
    try:
        client.log_batch(out.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        client.log_text(out.run_id, json.dumps({**params, "real_only_accuracy": out.real_only,
                                                "augmented_accuracy": out.augmented, **out.metrics()}, indent=1),
                        RESULTS)
    except BaseException:
        client.set_terminated(out.run_id, "FAILED")
        raise
    client.set_terminated(out.run_id, "FINISHED")
