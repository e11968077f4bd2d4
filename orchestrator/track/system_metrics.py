"""System metrics of every node that trains, through MLflow's own monitor (`mlflow.system_metrics`): CPU, memory,
disk, network and, where `nvidia-ml-py` is installed, each GPU's use and memory, as `system/<host>/...`. The first
worker of each node runs one. The monitor writes to MLflow itself, on a thread of its own, with the outbox's HTTP
settings: while MLflow cannot be reached its requests fail at once and it stops, and training goes on."""

import socket
import threading
from typing import Any

from orchestrator.track.outbox import own_http_settings

STOP_WAIT_S = 10.0  # what the end of a run waits for the monitor's last write


class NodeMetrics:
    """A monitor started on a thread of its own (importing MLflow takes seconds), stopped by `stop`. It continues
    the steps of the run's system metrics (a restart, a resumed run), as MLflow's `resume_logging` does."""

    def __init__(self, uri: str, run_id: str, interval_s: float, node: str | None = None):
        self.node = node or socket.gethostname()
        self.monitor: Any = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._start, args=(uri, run_id, interval_s), daemon=True,
                                       name="ganorch-system-metrics")
        self.thread.start()

    def _start(self, uri: str, run_id: str, interval_s: float) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        class Monitor(SystemMetricsMonitor):
            def monitor(self) -> None:
                with own_http_settings():
                    super().monitor()

        with own_http_settings():
            monitor = Monitor(run_id, sampling_interval=interval_s, resume_logging=True, node_id=self.node,
                              tracking_uri=uri)
        if not self.stopped.is_set():
            monitor.start()
            self.monitor = monitor

    def stop(self) -> None:
        """Stop sampling and send what was sampled, waiting STOP_WAIT_S at most."""
        self.stopped.set()
        self.thread.join(timeout=STOP_WAIT_S)
        if self.monitor is not None:
            finishing = threading.Thread(target=self._finish, daemon=True, name="ganorch-system-metrics-stop")
            finishing.start()
            finishing.join(timeout=STOP_WAIT_S)

    def _finish(self) -> None:
        with own_http_settings():
            self.monitor.finish()
