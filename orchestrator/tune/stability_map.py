"""The stability map of a sweep: every trial at its (lr_G, lr_D), coloured by its last metric, unstable trials
marked by the flag that stopped them. Written as `stability_map.png` and `stability_map.csv` on the parent run."""

import csv
import io
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


def plot(rows: list[dict[str, Any]], metric: str, mode: str, title: str) -> Any:
    """A matplotlib Figure: lr_G x lr_D on log axes; stable trials coloured by `metric` (squares: stopped early by
    the scheduler), unstable ones in red with one marker per flag, failed ones as grey crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    scored = [r for r in rows if r["status"] in ("TERMINATED", "STOPPED") and r["metric"] is not None]
    if scored:
        values = [r["metric"] for r in scored]
        colours = ax.scatter([r["lr_g"] for r in scored], [r["lr_d"] for r in scored], c=values,
                             cmap="viridis_r" if mode == "min" else "viridis", s=70, edgecolors="black",
                             marker="o", zorder=3)
        for r in scored:
            if r["status"] == "STOPPED":
                ax.scatter([r["lr_g"]], [r["lr_d"]], s=140, facecolors="none", edgecolors="grey", marker="s",
                           zorder=2)
        fig.colorbar(colours, ax=ax, label=f"{metric} ({'lower' if mode == 'min' else 'higher'} is better)")
    for flag, marker in FLAG_MARKERS.items():
        hit = [r for r in rows if r["status"] == "UNSTABLE" and r["reason"].startswith(flag)]
        if hit:
            ax.scatter([r["lr_g"] for r in hit], [r["lr_d"] for r in hit], c="red", marker=marker, s=90,
                       label=f"unstable: {flag}", zorder=4)
    failed = [r for r in rows if r["status"] == "ERROR"]
    if failed:
        ax.scatter([r["lr_g"] for r in failed], [r["lr_d"] for r in failed], c="grey", marker="x", s=70,
                   label="failed", zorder=4)
    if any(r["status"] == "STOPPED" for r in scored):
        ax.scatter([], [], s=140, facecolors="none", edgecolors="grey", marker="s", label="stopped early by scheduler")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("lr_G (optim.g.lr)")
    ax.set_ylabel("lr_D (optim.d.lr)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig
