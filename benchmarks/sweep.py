"""Worker-seconds to a good FID: a full grid, ASHA and PBT over one small search space of the quickstart DCGAN.

The space is lr_G x optim.lr_ratio (lr_D = ratio x lr_G), 3 x 3 points by default. The grid runs every point to
the end (no scheduler); ASHA runs the same points (or --num-samples drawn from them) and stops the poor ones at
its rungs; PBT starts a population of --num-samples drawn from them and lets the poor ones continue from a better
one's checkpoint with perturbed values. Every trial is the quickstart's networks and data on one worker
(0.9 CPU, as jobs/tune_quickstart.yaml: two trials at once on 2 CPUs), reporting FID at every checkpoint
(tracking.checkpoint_every = eval.every). All sweeps share one Ray instance; each has its own MLflow store and
Ray storage. For each sweep it prints:

- worker-seconds: the seconds workers were held, summed over the sweep's trials. A trial holds its workers
  (resources.num_workers, here 1) from the start of its trial driver's training to its last report, once per
  start: a PBT exploit or pause ends a start, the next one begins when Tune resumes the trial. Taken from Tune's
  results (each report's timestamp, to the second, and time since the start); what follows a start's last report
  (closing the run, or a start that never reported) is not counted.
- wall seconds of the sweep, start to end;
- best FID: the lowest FID any evaluation of the sweep reached (each run keeps its best checkpoint by FID);
- worker-seconds to within 10% of the grid's best FID: with all the sweep's FID evaluations in wall-clock order,
  the worker-seconds the sweep had used when the first one came within 1.1 x the grid's best FID ("never" if
  none did; "-" without the grid).

    python benchmarks/sweep.py                  # 3 x 3 points, 1500 steps a trial, FID every 500 steps
    python benchmarks/sweep.py --sweeps asha,pbt --lrs 1e-4,4e-4 --ratios 1,4 --steps 1000
    python benchmarks/sweep.py --smoke          # a toy size that only shows the script runs (minutes: six trials)
"""

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from orchestrator.spec import JobSpec, SpecError, parse

REPO = Path(__file__).resolve().parents[1]
SWEEPS = ("grid", "asha", "pbt")
WITHIN = 1.1   # "within 10% of the grid's best FID"
FULL = {"steps": 1500, "eval_every": 500, "eval_samples": 1000, "width": 32, "batch_size": 64,
        "lrs": "5e-5,2e-4,8e-4", "ratios": "1,2,4"}
SMOKE = {"steps": 4, "eval_every": 2, "eval_samples": 64, "width": 8, "batch_size": 16, "lrs": "2e-4",
         "ratios": "1,2", "num_samples": 2}


@dataclasses.dataclass
class SweepResult:
    name: str
    num_trials: int
    num_starts: int                              # trial starts: one per trial, plus one per PBT exploit or resume
    wall_seconds: float
    starts: list[tuple[float, float, int]]       # (start, last report, workers) of each start, in Unix seconds
    evaluations: list[tuple[float, float]]       # (Unix time, FID) of every evaluation, in time order

    @property
    def worker_seconds(self) -> float:
        return self.worker_seconds_at(math.inf)

    def worker_seconds_at(self, now: float) -> float:
        return sum(max(0.0, min(now, end) - start) * workers for start, end, workers in self.starts)

    @property
    def best_fid(self) -> float:
        return min((fid for _, fid in self.evaluations), default=math.nan)

    def worker_seconds_to(self, fid: float) -> float | None:
        return next((self.worker_seconds_at(t) for t, value in self.evaluations if value <= fid), None)


def base_data(args: argparse.Namespace) -> dict[str, Any]:
    """The quickstart's networks (unconditional) and data as one trial of a sweep: one worker, FID at every
    checkpoint."""
    data = yaml.safe_load((REPO / "jobs" / "digits_unconditional.yaml").read_text())
    data["model"].update(g_width=args.width, d_width=args.width)
    data["train"].update(steps=args.steps, batch_size=args.batch_size)
    data["resources"] = {"num_workers": 1, "use_gpu": False, "cpus_per_worker": 0.9}
    data["tracking"] = {"metrics_every": min(100, args.eval_every), "samples_every": args.eval_every,
                        "checkpoint_every": args.eval_every, "num_samples": 16 if args.smoke else 64}
    data["eval"] = {"every": args.eval_every, "num_samples": args.eval_samples, "inception": "off",
                    "cache_dir": args.cache_dir}
    return data


def sweep_spec(base: dict[str, Any], sweep: str, args: argparse.Namespace, directory: Path) -> JobSpec:
    lrs, ratios = floats(args.lrs), floats(args.ratios)
    points = len(lrs) * len(ratios)
    num_samples = args.num_samples or points
    # The grid, and ASHA with as many trials as points, enumerate the points; otherwise trials draw from them.
    kind = "grid" if sweep == "grid" or (sweep == "asha" and num_samples == points) else "choice"
    tune = {"space": {"optim.g.lr": {kind: lrs}, "optim.lr_ratio": {kind: ratios}}, "metric": "fid", "mode": "min",
            "num_samples": 1 if kind == "grid" else num_samples,
            "scheduler": {"grid": "none", "asha": "asha", "pbt": "pbt"}[sweep]}
    tracking = {**base["tracking"], "storage_path": str(directory / "ray")}
    return parse({**base, "name": f"sweep_benchmark_{sweep}", "tracking": tracking, "tune": tune},
                 f"the {sweep} sweep's spec")


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def warm_classifier(spec: JobSpec) -> None:
    """Train or load the domain classifier FID is computed on before any sweep, so no sweep pays for training it."""
    from orchestrator.data.sources import load_dataset, num_classes
    from orchestrator.evaluate.domain_classifier import domain_classifier

    dataset = load_dataset(spec.data, spec.model)
    domain_classifier(dataset, num_classes(dataset), image_size=spec.model.image_size, channels=spec.model.channels,
                      cache_dir=spec.eval.cache_dir, seed=spec.seed)


def run_sweep(sweep: str, spec: JobSpec, directory: Path) -> SweepResult:
    """Run one sweep on its own MLflow store (an SQLite file and artifact folder under `directory`)."""
    from ray.tune import ExperimentAnalysis

    from orchestrator.track import store
    from orchestrator.tune import sweep as tune_sweep

    uri = f"sqlite:///{directory / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri   # what ganorch's store.tracking_uri() reads, and hands to the trials
    store.client(uri).create_experiment(spec.experiment, artifact_location=(directory / "artifacts").as_uri())
    started = time.perf_counter()
    outcome = tune_sweep.run(spec, show_progress=False)
    wall_seconds = time.perf_counter() - started
    sweep_name = store.client(uri).get_run(outcome.parent_run_id).info.run_name   # Tune's experiment name
    frames = ExperimentAnalysis(str(Path(spec.tracking.storage_path, sweep_name))).trial_dataframes
    starts, evaluations = [], []
    for frame in frames.values():
        trial_starts, trial_evaluations = read_trial(frame, spec.resources.num_workers)
        starts += trial_starts
        evaluations += trial_evaluations
    return SweepResult(sweep, len(outcome.trials), len(starts), wall_seconds, starts, sorted(evaluations))


def read_trial(frame: Any, workers: int) -> tuple[list[tuple[float, float, int]], list[tuple[float, float]]]:
    """A trial's starts (start, last report, workers) and FID evaluations (time, FID), from its Tune results (one
    row per report, as ExperimentAnalysis reads them)."""
    if frame.empty:
        return [], []
    starts = []
    # Each start's reports count iterations_since_restore from 1; time_since_restore is the time since the start.
    for _, rows in frame.groupby((frame["iterations_since_restore"] == 1).cumsum()):
        first, last = rows.iloc[0], rows.iloc[-1]
        starts.append((float(first["timestamp"] - first["time_since_restore"]), float(last["timestamp"]), workers))
    evaluations = [(float(t), float(fid)) for t, fid in zip(frame["timestamp"], frame.get("fid", []))
                   if math.isfinite(fid)]
    return starts, evaluations


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPUs, {gpu}"


def print_table(results: list[SweepResult]) -> None:
    grid = next((r for r in results if r.name == "grid"), None)
    target = grid.best_fid * WITHIN if grid and math.isfinite(grid.best_fid) else None
    print(f"{'sweep':<6} {'trials':>6} {'starts':>6} {'worker-s':>9} {'wall-s':>8} {'best FID':>9} "
          f"{'worker-s to within 10% of grid best':>36}")
    for r in results:
        seconds = r.worker_seconds_to(target) if target is not None else None
        reached = "-" if target is None else "never" if seconds is None else f"{seconds:.0f}"
        print(f"{r.name:<6} {r.num_trials:>6} {r.num_starts:>6} {r.worker_seconds:>9.0f} {r.wall_seconds:>8.0f} "
              f"{r.best_fid:>9.2f} {reached:>36}")
    if target is not None:
        print(f"(within 10% of the grid's best FID, {grid.best_fid:.2f}: FID <= {target:.2f})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", default=",".join(SWEEPS), help="which sweeps to run, of grid,asha,pbt")
    parser.add_argument("--steps", type=int, help=f"training steps a trial (default {FULL['steps']})")
    parser.add_argument("--eval-every", type=int,
                        help=f"steps between FID evaluations and checkpoints (default {FULL['eval_every']})")
    parser.add_argument("--eval-samples", type=int, help=f"images an FID compares (default {FULL['eval_samples']})")
    parser.add_argument("--width", type=int, help=f"g_width and d_width (default {FULL['width']})")
    parser.add_argument("--batch-size", type=int, help=f"global batch (default {FULL['batch_size']})")
    parser.add_argument("--lrs", help=f"lr_G values, comma-separated (default {FULL['lrs']})")
    parser.add_argument("--ratios", help=f"lr_D / lr_G values, comma-separated (default {FULL['ratios']})")
    parser.add_argument("--num-samples", type=int,
                        help="trials of ASHA and PBT (default: as many as the grid has points)")
    parser.add_argument("--cache-dir", help="eval.cache_dir, where the domain classifier is cached")
    parser.add_argument("--store-dir", help="keep each sweep's MLflow store and Ray storage here (default: a "
                                            "temporary directory, removed at the end)")
    parser.add_argument("--smoke", action="store_true", help="a toy size that only shows the script runs: "
                        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in SMOKE.items()))
    args = parser.parse_args()
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    problems = []
    sweeps = args.sweeps.split(",")
    if not sweeps or any(s not in SWEEPS for s in sweeps) or len(set(sweeps)) != len(sweeps):
        problems.append(f"--sweeps: got {args.sweeps!r}; expected some of {','.join(SWEEPS)}, each once")
    for option in ("lrs", "ratios"):
        try:
            floats(getattr(args, option))
        except ValueError:
            problems.append(f"--{option}: got {getattr(args, option)!r}; expected numbers separated by commas")
    if args.num_samples is not None and args.num_samples < 2:
        problems.append(f"--num-samples: got {args.num_samples}; ASHA and PBT need at least 2 trials")
    if args.store_dir and Path(args.store_dir).exists() and any(Path(args.store_dir).iterdir()):
        problems.append(f"--store-dir: {args.store_dir} is not empty; name a new or empty directory")
    if problems:
        parser.error("; ".join(problems))
    args.sweeps = [s for s in SWEEPS if s in sweeps]
    return args


def main() -> None:
    args = parse_args()
    if args.smoke:
        # Ray Train's controller looks at its workers every 2 s, and each report waits for that look.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    root = Path(args.store_dir or tempfile.mkdtemp(prefix="ganorch-sweep-benchmark-")).resolve()
    base = base_data(args)
    try:
        specs = {s: sweep_spec(base, s, args, root / s) for s in args.sweeps}
    except SpecError as err:
        sys.exit(f"sweep.py: {err}")

    import ray
    import torch

    from orchestrator.train.ray_init import init_ray

    first = next(iter(specs.values()))
    print(f"sweep benchmark, {time.strftime('%Y-%m-%d %H:%M')}; {machine()}; torch {torch.__version__}, "
          f"ray {ray.__version__}")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"space: lr_G {args.lrs} x lr_D/lr_G {args.ratios}; {args.steps} steps a trial, FID every "
          f"{args.eval_every} on {args.eval_samples} images; DCGAN width {args.width}, batch {args.batch_size}, "
          f"{first.resources.num_workers} worker ({first.resources.cpus_per_worker:g} CPU) a trial", flush=True)
    warm_classifier(first)
    init_ray()   # every sweep joins this instance
    results = []
    try:
        for sweep, spec in specs.items():
            (root / sweep).mkdir(parents=True, exist_ok=True)
            results.append(run_sweep(sweep, spec, root / sweep))
            print(f"{sweep}: done in {results[-1].wall_seconds:.0f} s", flush=True)
    finally:
        if not args.store_dir:
            shutil.rmtree(root, ignore_errors=True)
    print_table(results)


if __name__ == "__main__":
    main()
