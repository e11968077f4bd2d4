"""The live table of a sweep's trials (id, parameters, status, step, metric), drawn by a Tune callback in the
driver: a rich table on a terminal, one line per trial event elsewhere (logs, CI)."""

import sys
from typing import Any

from ray.tune import Callback

from orchestrator.track.redact import redact


def number(value: Any) -> str:
    """A cell: rich draws (and cuts) it on a terminal, so secrets are masked here, not in the stream."""
    return f"{value:.3g}" if isinstance(value, float) else redact(str(value))


class TrialTable(Callback):
    def __init__(self, keys: list[str], metric: str, title: str):
        self.keys, self.metric, self.title = keys, metric, title
        self.rows: dict[str, dict[str, Any]] = {}
        self.live = None

    def setup(self, **info: Any) -> None:
        if sys.stdout.isatty():
            from rich.live import Live

            self.live = Live(self.render(), refresh_per_second=2, transient=False)
            self.live.start()

    def update(self, trial: Any, status: str, result: dict[str, Any] | None = None) -> None:
        row = self.rows.setdefault(trial.trial_id, {"step": "-", "metric": "-"})
        row["params"] = {k: trial.config.get(k) for k in self.keys}  # PBT changes them
        row["status"] = status
        if result:
            row["step"] = result.get("step", row["step"])
            row["metric"] = result.get(self.metric, row["metric"])
        if self.live is not None:
            self.live.update(self.render())
        else:
            params = ", ".join(f"{k}={number(v)}" for k, v in row["params"].items())
            print(f"{self.title}: trial {trial.trial_id} {status} step {row['step']} {self.metric} "
                  f"{number(row['metric'])}  {params}", flush=True)

    def render(self) -> Any:
        from rich.table import Table

        table = Table(title=self.title)
        for column in ("trial", *self.keys, "status", "step", self.metric):
            table.add_column(column)
        for trial_id, row in self.rows.items():
            table.add_row(trial_id, *(number(row["params"][k]) for k in self.keys), row["status"],
                          str(row["step"]), number(row["metric"]))
        return table

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.update(trial, "RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.update(trial, "RUNNING", result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.update(trial, "DONE", trial.last_result)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.update(trial, "ERROR", trial.last_result)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.live is not None:
            self.live.stop()
