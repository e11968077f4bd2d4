"""The stability map of a sweep: every trial at its (lr_G, lr_D), or at its values of the searched keys when the
rates are the same in every trial, coloured by its last metric, unstable trials marked by the flag that stopped
them. Written as `stability_map.png` and `stability_map.csv` on the parent run."""

import csv
import io
from dataclasses import dataclass
from typing import Any

COLUMNS = ("trial", "run_id", "lr_g", "lr_d", "n_critic", "status", "reason", "step", "metric")
FLAG_MARKERS = {"diverged": "X", "d_overpowering": "v", "mode_collapse": "D", "oscillation": "P"}


def to_csv(rows: list[dict[str, Any]], metric: str) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[c if c != "metric" else metric for c in COLUMNS], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({(c if c != "metric" else metric): row.get(c) for c in COLUMNS})
    return out.getvalue()


@dataclass(frozen=True)
class Axis:
    label: str
    positions: list[float]      # one per trial
    log: bool = False
    ticks: list[str] | None = None  # category names at positions 0, 1, ...


def axis(label: str, values: list[Any]) -> Axis:
    """Numbers on a linear axis (log when positive and spanning 10x or more); anything else as categories, in the
    order they first appear."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        positive = all(v > 0 for v in values)
        return Axis(label, [float(v) for v in values], log=positive and max(values) >= 10 * min(values))
    names = list(dict.fromkeys(str(v) for v in values))
    return Axis(label, [float(names.index(str(v))) for v in values], ticks=names)


def choose_axes(rows: list[dict[str, Any]]) -> tuple[Axis, Axis]:
    """lr_G x lr_D when either rate varies over the trials; otherwise the first two searched keys that vary (a
    single one is plotted against nothing)."""
    rates = [(r["lr_g"], r["lr_d"]) for r in rows]
    if len(set(rates)) > 1 or not rows:
        return (Axis("lr_G (optim.g.lr)", [g for g, _ in rates], log=True),
                Axis("lr_D (optim.d.lr)", [d for _, d in rates], log=True))
    keys = [k for k in rows[0].get("params", {}) if len({repr(r["params"][k]) for r in rows}) > 1][:2]
    found = [axis(k, [r["params"][k] for r in rows]) for k in keys]
    while len(found) < 2:
        found.append(Axis("", [0.0] * len(rows), ticks=[""]))
    return found[0], found[1]


def plot(rows: list[dict[str, Any]], metric: str, mode: str, title: str) -> Any:
    """A matplotlib Figure over `choose_axes`; stable trials coloured by `metric` (squares: stopped early by the
    scheduler), unstable ones in red with one marker per flag, failed ones as grey crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    x_axis, y_axis = choose_axes(rows)
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
            set_ticks(range(len(a.ticks)), a.ticks)
            set_lim(-0.5, len(a.ticks) - 0.5)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig
