"""Benchmark scripts stay runnable: each runs once at a toy size (their figures are not checked here)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_precision_throughput_prints_a_row_per_configuration():
    out = subprocess.run([sys.executable, "benchmarks/precision_throughput.py", "--steps", "2", "--batch-size", "8",
                          "--width", "4", "--precisions", "fp32,bf16"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(("fp32 ", "bf16 "))]
    assert [(r[0], r[1]) for r in rows] == [("fp32", "False"), ("bf16", "False"), ("fp32", "True"), ("bf16", "True")]
    assert all(float(r[2]) > 0 for r in rows) and [r[3] for r in rows if r[0] == "fp32"] == ["1.00x", "1.00x"]
