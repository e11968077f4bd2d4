"""Benchmark scripts stay runnable: each runs at a toy size (their figures are not checked here), and sweep.py's
counting is tested on made-up results."""

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


def test_throughput_runs_bare_loops_ganorch_and_rays_minimum(mnist_classifier):
    """The bare loops, ganorch evaluating in the background (its in-line and no-evaluation runs, (c) to (e), are the
    same `ganorch run` of other job files) and Ray Train's minimum, at a toy size."""
    out = subprocess.run([sys.executable, "benchmarks/throughput.py", "--smoke", "--only", "a,b,r,f",
                          "--eval-cache", str(mnist_classifier[1])],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {line[:3]: line.split() for line in out.stdout.splitlines() if line.startswith(("(a)", "(b)", "(f)", "(r)"))}
    assert list(rows) == ["(a)", "(b)", "(r)", "(f)"], out.stdout
    for name in ("(a)", "(b)"):
        images_per_s, first_step_s, whole_s = map(float, rows[name][-3:])
        assert images_per_s > 0 and 0 < first_step_s <= whole_s, (name, rows[name])  # printed to 0.1 s
    images_per_s, first_step_s, whole_s, fid = map(float, rows["(f)"][-4:])
    assert images_per_s > 0 and 0 < first_step_s <= whole_s and fid > 0, rows["(f)"]
    first_step_s, whole_s = map(float, rows["(r)"][-2:])
    assert 0 < first_step_s <= whole_s, rows["(r)"]


def load_sweep_benchmark():
    loaded = importlib.util.spec_from_file_location("sweep_benchmark", REPO / "benchmarks" / "sweep.py")
    sweep = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(sweep)
    return sweep


def test_sweep_runs_pbt(ray_session, mnist_classifier, tmp_path, monkeypatch, capsys):
    """In this process, on the session's Ray: two trials of PBT, a few steps each, paused and continued. (The grid
    and ASHA are the same sweep with another scheduler, or none, as test_sweep.py runs them: they are left out for
    the suite's time.)"""
    sweep = load_sweep_benchmark()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")  # each sweep sets its own; restored after the test
    monkeypatch.setattr(sys, "argv", ["sweep.py", "--smoke", "--sweeps", "pbt", "--cache-dir",
                                      str(mnist_classifier[1]), "--store-dir", str(tmp_path / "stores")])
    sweep.main()
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("grid ", "asha ", "pbt "))}
    assert list(rows) == ["pbt"], out
    for name, row in rows.items():
        trials, starts, worker_s, wall_s, best_fid = int(row[1]), int(row[2]), *map(float, row[3:6])
        assert trials == 2 and starts >= 2 and 0 < worker_s and 0 < wall_s and best_fid > 0, (name, row)


def test_sweep_counts_the_worker_seconds_of_each_start_of_a_trial():
    import pandas as pd

    sweep = load_sweep_benchmark()
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
