"""The `tune.space` of a job spec: which spec keys a sweep varies, and how.

In YAML each entry maps a dotted spec key to one search dimension:

    tune:
      space:
        optim.g.lr: {loguniform: [1.0e-5, 1.0e-3]}
        optim.lr_ratio: {choice: [1, 2, 4]}      # optim.d.lr = ratio x optim.g.lr (TTUR)
        train.n_critic: {grid: [1, 2]}

Every value a dimension can take is checked by building the job spec with it, so a bad bound or choice is
reported with the same message the key itself would give, under `tune.space.<key>`.
"""

import copy
import math
from dataclasses import dataclass
from typing import Any

KINDS = ("loguniform", "uniform", "choice", "grid")
RANGES = ("loguniform", "uniform")
# Not a spec key: sets optim.d.lr to this multiple of optim.g.lr (the two time-scale update rule, TTUR).
LR_RATIO = "optim.lr_ratio"
# What PBT may change in a running trial: the optimizers' settings and the D/G balance. Other searched keys
# (the networks' shapes, the data, ...) are drawn once per trial, and an exploit copies them with the weights.
PERTURBABLE_KEYS = ("train.n_critic", "train.r1_gamma", "train.gp_lambda")
PERTURBABLE_TEXT = "optim.* keys (rates, betas, optim.lr_ratio), " + ", ".join(PERTURBABLE_KEYS)

Problem = tuple[tuple[str, ...], str]


@dataclass(frozen=True)
class Dimension:
    key: str            # a dotted spec key, or LR_RATIO
    kind: str           # one of KINDS
    values: tuple       # (low, high) for ranges; the options for choice and grid


def parse_dimensions(space: dict[str, Any]) -> tuple[list[Dimension], list[Problem]]:
    """The dimensions of `space`, and the problems of its entries' shape (keys and values are checked by `JobSpec.space_problems`)."""
    dimensions, found = [], []
    for key, entry in space.items():
        where = (f"space.{key}",)
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in KINDS:
            found.append((where, f"got {entry!r}; expected one of " + ", ".join(f"{{{k}: [...]}}" for k in KINDS)))
            continue
        kind, values = next(iter(entry.items()))
        if not isinstance(values, list) or not values:
            found.append((where, f"{kind}: got {values!r}; expected a non-empty list"))
            continue
        if kind in RANGES:
            if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                found.append((where, f"{kind}: got {values!r}; expected [low, high], two numbers"))
                continue
            low, high = values
            if not low < high:
                found.append((where, f"{kind}: got [{low}, {high}]; low must be below high"))
                continue
            if kind == "loguniform" and low <= 0:
                found.append((where, f"loguniform: got low {low}; must be > 0 (use uniform for ranges through 0)"))
                continue
        dimensions.append(Dimension(str(key), kind, tuple(values)))
    return dimensions, found


def assign(data: dict, key: str, value: Any) -> None:
    """Set dotted `key` in the plain spec `data`; LR_RATIO sets optim.d.lr from optim.g.lr."""
    if key == LR_RATIO:
        data.setdefault("optim", {}).setdefault("d", {})["lr"] = value * float(data["optim"]["g"]["lr"])
        return
    *sections, last = key.split(".")
    node = data
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value


def apply(spec_data: dict, sample: dict[str, Any]) -> dict:
    """A copy of the plain spec with one sample of the space applied (the ratio after optim.g.lr is set)."""
    data = copy.deepcopy(spec_data)
    data.pop("tune", None)
    for key in sorted(sample, key=lambda k: k == LR_RATIO):
        assign(data, key, sample[key])
    return data


def perturbable(key: str) -> bool:
    return key.startswith("optim.") or key in PERTURBABLE_KEYS


def num_grid_points(dimensions: list[Dimension]) -> int:
    return math.prod(len(d.values) for d in dimensions if d.kind == "grid")
