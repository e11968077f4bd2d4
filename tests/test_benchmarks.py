"""Benchmark scripts stay runnable: each runs once at a toy size (their figures are not checked here). sweep.py's
own smoke run (`python benchmarks/sweep.py --smoke`, minutes: a trial each of three sweeps) is left out of the suite
for its time; its counting is tested below, its sweeps are tests/test_sweep.py's."""

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


def test_throughput_compares_ganorch_with_the_bare_loops():
    """(c) is (d)'s code with one worker, and Ray Train's minimum (r) a trivial TorchTrainer: left out for time."""
    out = subprocess.run([sys.executable, "benchmarks/throughput.py", "--smoke", "--only", "a,b,d"],
                         cwd=REPO, capture_output=True, text=True, timeout=480)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {line[:3]: line.split() for line in out.stdout.splitlines() if line.startswith(("(a)", "(b)", "(d)"))}
    assert list(rows) == ["(a)", "(b)", "(d)"], out.stdout
    for name, row in rows.items():
        images_per_s, first_step_s, whole_s = map(float, row[-3:])
        assert images_per_s > 0 and 0 < first_step_s < whole_s, (name, row)
    ratio = next(line for line in out.stdout.splitlines() if line.startswith("ratio d/b = "))
    assert float(ratio.split()[3]) > 0, ratio


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
