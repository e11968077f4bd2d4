"""The stability map of a sweep: every trial at its (lr_G, lr_D), or at its values of the searched keys when the
rates are the same in every trial, coloured by its last metric, unstable trials marked by the flag that stopped
them. Written as `stability_map.png` and `stability_map.csv` (one line per trial, its searched keys last) on the
parent run."""

import csv
import io
import numbers
from dataclasses import dataclass
from typing import Any

COLUMNS = ("trial", "run_id", "lr_g", "lr_d", "n_critic", "status", "reason", "step", "metric")
FLAG_MARKERS = {"diverged": "X", "d_overpowering": "v", "mode_collapse": "D", "oscillation": "P"}
MAX_VALUE_TICKS = 8  # a numeric axis with this many distinct values or fewer is ticked at each of them


def searched_keys(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for r in rows for k in r["params"]))


def to_csv(rows: list[dict[str, Any]], metric: str) -> str:
    """One line per trial: `COLUMNS` (the metric under its own name), then each searched key."""
    keys = searched_keys(rows)
    header = [c if c != "metric" else metric for c in COLUMNS] + keys
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(c) for c in COLUMNS] + [row["params"].get(k) for k in keys])
    return out.getvalue()


@dataclass(frozen=True)
class Axis:
    label: str
    positions: list[float]      # one per trial
    log: bool = False
    ticks: list[float] | None = None   # where to tick; None leaves it to matplotlib
    tick_labels: list[str] | None = None
    categorical: bool = False  # positions 0, 1, ... index tick_labels


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def same(value: Any) -> Any:
    """What tells two values of a key apart, as the axis places them: 1 and 1.0 are one number."""
    return float(value) if is_number(value) else repr(value)


def values_axis(label: str, values: list[Any], discrete: bool) -> Axis:
    """Numbers on a linear axis (log when positive and spanning 10x or more), ticked at each value when they come
    from a list (`discrete`: grid or choice) of few; anything else as categories, sorted when they compare (None
    first), else in the order they first appear."""
    if all(is_number(v) for v in values):
        distinct = sorted({float(v) for v in values})
        log = distinct[0] > 0 and distinct[-1] >= 10 * distinct[0]
        labels = [f"{v:g}" for v in distinct]
        tick = discrete and len(distinct) <= MAX_VALUE_TICKS and len(set(labels)) == len(labels)
        return Axis(label, [float(v) for v in values], log=log, ticks=distinct if tick else None,
                    tick_labels=labels if tick else None)
    unique = list({repr(v): v for v in values}.values())
    try:
        unique = sorted(unique, key=lambda v: (v is not None, v))
    except TypeError:
        pass
    index = {repr(v): i for i, v in enumerate(unique)}
    return Axis(label, [float(index[repr(v)]) for v in values], ticks=[float(i) for i in range(len(unique))],
                tick_labels=[str(v) for v in unique], categorical=True)


def rate_axes(rows: list[dict[str, Any]]) -> tuple[Axis, Axis]:
    return (Axis("lr_G (optim.g.lr)", [r["lr_g"] for r in rows], log=True),
            Axis("lr_D (optim.d.lr)", [r["lr_d"] for r in rows], log=True))


def choose_axes(rows: list[dict[str, Any]], discrete: frozenset[str] = frozenset()) -> tuple[Axis, Axis]:
    """lr_G x lr_D when either rate varies over the trials, or when no searched key does; otherwise the first two
    searched keys that vary (a single one is plotted against nothing). `discrete`: the keys searched over a list."""
    if len({(r["lr_g"], r["lr_d"]) for r in rows}) > 1:
        return rate_axes(rows)
    keys = [k for k in searched_keys(rows) if len({same(r["params"].get(k)) for r in rows}) > 1][:2]
    if not keys:
        return rate_axes(rows)
    found = [values_axis(k, [r["params"].get(k) for r in rows], k in discrete) for k in keys]
    if len(found) == 1:
        found.append(Axis("", [0.0] * len(rows), ticks=[0.0], tick_labels=[""], categorical=True))
    return found[0], found[1]


def plot(rows: list[dict[str, Any]], metric: str, mode: str, title: str,
         discrete: frozenset[str] = frozenset()) -> Any:
    """A matplotlib Figure over `choose_axes`; stable trials coloured by `metric` (squares: stopped early by the
    scheduler), unstable ones in red with one marker per flag, failed ones as grey crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    x_axis, y_axis = choose_axes(rows, discrete)
    at = {id(r): (x, y) for r, x, y in zip(rows, x_axis.positions, y_axis.positions)}

    def xs(chosen: list[dict[str, Any]]) -> list[float]:
        return [at[id(r)][0] for r in chosen]

    def ys(chosen: list[dict[str, Any]]) -> list[float]:
        return [at[id(r)][1] for r in chosen]

    scored = [r for r in rows if r["status"] in ("TERMINATED", "STOPPED") and r["metric"] is not None]
    if scored:
        values = [r["metric"] for r in scored]
        colours = ax.scatter(xs(scored), ys(scored), c=values,
                             cmap="viridis_r" if mode == "min" else "viridis", s=70, edgecolors="black",
                             marker="o", zorder=3)
        for r in scored:
            if r["status"] == "STOPPED":
                ax.scatter(xs([r]), ys([r]), s=140, facecolors="none", edgecolors="grey", marker="s",
                           zorder=2)
        fig.colorbar(colours, ax=ax, label=f"{metric} ({'lower' if mode == 'min' else 'higher'} is better)")
    for flag, marker in FLAG_MARKERS.items():
        hit = [r for r in rows if r["status"] == "UNSTABLE" and r["reason"].startswith(flag)]
        if hit:
            ax.scatter(xs(hit), ys(hit), c="red", marker=marker, s=90,
                       label=f"unstable: {flag}", zorder=4)
    failed = [r for r in rows if r["status"] == "ERROR"]
    if failed:
        ax.scatter(xs(failed), ys(failed), c="grey", marker="x", s=70,
                   label="failed", zorder=4)
    if any(r["status"] == "STOPPED" for r in scored):
        ax.scatter([], [], s=140, facecolors="none", edgecolors="grey", marker="s", label="stopped early by scheduler")
    for a, set_scale, set_label, set_ticks, set_lim in (
            (x_axis, ax.set_xscale, ax.set_xlabel, ax.set_xticks, ax.set_xlim),
            (y_axis, ax.set_yscale, ax.set_ylabel, ax.set_yticks, ax.set_ylim)):
        set_label(a.label)
        if a.log:
            set_scale("log")
        if a.ticks is not None:
            set_ticks(a.ticks, a.tick_labels, minor=False)
            if a.log:
                set_ticks([], minor=True)
        if a.categorical:
            set_lim(-0.5, len(a.ticks) - 0.5)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig
