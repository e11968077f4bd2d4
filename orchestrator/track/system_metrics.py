"""System metrics of every node that trains, through MLflow's own monitor (`mlflow.system_metrics`): CPU, memory,
disk, network and, where `nvidia-ml-py` is installed, each GPU's use and memory, as `system/<host>/...`. The first
worker of each node runs one (the monitor writes to MLflow itself, on a thread of its own: an outage stops it, not
training)."""

import socket
import threading
from typing import Any


class NodeMetrics:
    """A monitor started on a thread of its own (importing MLflow takes seconds), stopped by `stop`."""

    def __init__(self, uri: str, run_id: str, interval_s: float, resume: bool, node: str | None = None):
        self.node = node or socket.gethostname()
        self.monitor: Any = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._start, args=(uri, run_id, interval_s, resume), daemon=True,
                                       name="ganorch-system-metrics")
        self.thread.start()

    def _start(self, uri: str, run_id: str, interval_s: float, resume: bool) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, resume_logging=resume,
                                       node_id=self.node, tracking_uri=uri)
        if not self.stopped.is_set():
            monitor.start()
            self.monitor = monitor

    def stop(self) -> None:
        """Stop sampling and send what was sampled (MLflow's monitor logs at every sample, so little is left)."""
        self.stopped.set()
        self.thread.join(timeout=30)
        if self.monitor is not None:
            self.monitor.finish()
