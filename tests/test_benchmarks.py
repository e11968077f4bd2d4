"""Benchmark scripts stay runnable: each runs at a toy size (their figures are not checked here). The parts that
start Ray Train runs wait for room in the suite's 20 minutes: `python benchmarks/sweep.py --smoke` (about 3 min) and
`python benchmarks/throughput.py --smoke` (about 2 min) run them; sweep.py's counting is tested below."""

import importlib.util
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


def test_throughput_runs_its_bare_loops():
    """The bare loop and the bare DDP loop at a toy size. Its ganorch runs ((c), (d)) and Ray Train's minimum (r),
    about 50 s more, wait for room in the suite's 20 minutes: `python benchmarks/throughput.py --smoke` runs them."""
    out = subprocess.run([sys.executable, "benchmarks/throughput.py", "--smoke", "--only", "a,b"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {line[:3]: line.split() for line in out.stdout.splitlines() if line.startswith(("(a)", "(b)"))}
    assert list(rows) == ["(a)", "(b)"], out.stdout
    for name, row in rows.items():
        images_per_s, first_step_s, whole_s = map(float, row[-3:])
        assert images_per_s > 0 and 0 < first_step_s < whole_s, (name, row)


def test_sweep_counts_the_worker_seconds_of_each_start_of_a_trial():
    import pandas as pd

    loaded = importlib.util.spec_from_file_location("sweep_benchmark", REPO / "benchmarks" / "sweep.py")
    sweep = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(sweep)
    # Trial a: started at 100, reported at 110 and 120, paused; resumed at 150, reported at 155. Trial b: 100 to 130.
    a = pd.DataFrame({"timestamp": [110, 120, 155], "time_since_restore": [10.0, 20.0, 5.0],
                      "iterations_since_restore": [1, 2, 1], "fid": [50.0, 40.0, 20.0]})
    b = pd.DataFrame({"timestamp": [130], "time_since_restore": [30.0], "iterations_since_restore": [1],
                      "fid": [float("nan")]})
    starts, evaluations = sweep.read_trial(a, workers=2)
    assert starts == [(100.0, 120.0, 2), (150.0, 155.0, 2)] and evaluations == [(110, 50.0), (120, 40.0), (155, 20.0)]
    b_starts, b_evaluations = sweep.read_trial(b, workers=2)
    result = sweep.SweepResult("pbt", 2, 3, 60.0, starts + b_starts, sorted(evaluations + b_evaluations))
    assert result.worker_seconds == 2 * (20 + 5 + 30) and result.best_fid == 20.0
    assert result.worker_seconds_to(45.0) == 2 * (20 + 20)     # at 120: a's first start, b so far
    assert result.worker_seconds_to(20.0) == 2 * (20 + 5 + 30) and result.worker_seconds_to(10.0) is None
