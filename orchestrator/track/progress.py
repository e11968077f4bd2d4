"""The terminal progress line. Rank 0 posts its latest numbers to a small Ray actor; the driver polls
it and draws one line, so the user never needs Ray's forwarded worker logs."""

import sys
import threading
from typing import Any

import ray

from orchestrator.track.redact import redact


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Rank 0's latest numbers; also how many times the workers started, and why the last ones failed."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.starts = 0
        self.failure: str | None = None
        self.workers: int | None = None

    def post(self, state: dict[str, Any]) -> None:
        self.state.update(state)

    def read(self) -> dict[str, Any]:
        return dict(self.state)

    def notice(self, line: str) -> None:
        """Something the user should read in the terminal."""
        self.state.setdefault("notices", []).append(line)

    def failed(self, reason: str) -> None:
        self.failure = reason

    def started(self, workers: int) -> tuple[int, str | None, int | None]:
        """Rank 0 of a group of `workers` starts: how many groups have started in this run, why the one before this
        failed (None: it did not, as when an elastic group is resized to the cluster's room), and how many workers
        it had."""
        self.starts += 1
        failure, self.failure = self.failure, None
        before, self.workers = self.workers, workers
        if self.starts > 1:
            self.state["restarts"] = self.starts - 1
            self.state["restart_line"] = restart_line(self.starts - 1, failure, before, workers)
        return self.starts, failure, before


def restart_line(n: int, failure: str | None, before: int | None, workers: int) -> str:
    """What the terminal says of restart `n`."""
    resized = f"now on {workers} worker{'s' if workers > 1 else ''} (was {before})" if before != workers else ""
    if failure is not None:
        return (f"workers restarted from the latest checkpoint after a failure (restart {n}){'; ' + resized if resized else ''}; "
                "the run's tags say why")
    if resized:
        how = "grew as the cluster got room" if workers > before else "shrank as the cluster had less room"
        return f"the elastic group {how}: {resized}, restarted from the latest checkpoint (restart {n})"
    return f"workers restarted from the latest checkpoint (restart {n})"


def describe(state: dict[str, Any], total_steps: int) -> str:
    step = state.get("step", 0)
    parts = [f"step {step}/{total_steps}"]
    if "images_per_sec" in state:
        parts.append(f"{state['images_per_sec']:.0f} img/s")
    for key in ("loss_d", "loss_g", "d_real", "d_fake"):
        if key in state:
            parts.append(f"{key} {state[key]:.3f}")
    return "  ".join(parts)


class ProgressView:
    """Polls a ProgressBoard from a daemon thread: a live bar on a terminal; elsewhere (logs, CI) a plain
    line per metrics interval."""

    def __init__(self, board: Any, total_steps: int, title: str, interval_s: float = 0.5):
        self.board = board
        self.total_steps = total_steps
        self.title = title
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.live = sys.stdout.isatty()
        self.last_metrics_step: int | None = None
        self.restarts_shown = 0
        self.notices_shown = 0

    def _say(self, line: str) -> None:
        if self.live:
            self.progress.console.print(redact(line), highlight=False)  # rich splits what it colours
        else:
            print(line, flush=True)

    def __enter__(self) -> "ProgressView":
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[line]}"),
                                     TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self.task = self.progress.add_task(self.title, total=self.total_steps, line="starting workers...")
            self.progress.start()
        else:
            print(f"{self.title}: starting workers...", flush=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_event.set()
        self.thread.join()
        self._draw()
        if self.live:
            self.progress.stop()

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            self._draw()

    def _draw(self) -> None:
        try:
            state = ray.get(self.board.read.remote(), timeout=5)
        except Exception:  # the board is gone with the cluster: nothing more to show
            return
        if not state:
            return
        line = describe(state, self.total_steps)
        for notice in state.get("notices", [])[self.notices_shown:]:
            self._say(f"{self.title}: {notice}")
        self.notices_shown = len(state.get("notices", []))
        if state.get("restarts", 0) > self.restarts_shown:
            self.restarts_shown = state["restarts"]
            self._say(f"{self.title}: {state['restart_line']}")
        if self.live:
            self.progress.update(self.task, completed=state.get("step", 0), line=line)
        elif state.get("metrics_step") != self.last_metrics_step:
            print(f"{self.title}: {describe({**state, 'step': state['metrics_step']}, self.total_steps)}", flush=True)
        self.last_metrics_step = state.get("metrics_step")
