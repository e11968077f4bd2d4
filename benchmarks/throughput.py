"""ganorch against bare PyTorch loops that do the same maths, side by side in one run: steady-state images/s and the
time from process start to the first training step.

    (a) bare       one process, a hand-written loop
    (b) bare DDP   N processes over torch.distributed (gloo on CPU, NCCL on GPU), no Ray
    (c) ganorch    `ganorch run` with 1 worker
    (d) ganorch    `ganorch run` with N workers
    (r) Ray Train's minimum: a trivial TorchTrainer of N workers, from process start to its train function
    (g) bare DDP   (b)'s loop as the train function of a TorchTrainer of N workers: Ray Train without ganorch
    (e) ganorch    `ganorch run` with N workers, evaluating in-line every `--eval-every` steps
    (f) ganorch    the same, evaluating in the background (eval.background, an evaluator actor of --eval-cpus CPUs)

Every configuration is a fresh process (N for b), started from here, on the same data (mnist5k), networks, loss,
global batch and precision, unconditional (jobs/digits_unconditional.yaml: the quickstart's networks without
classes); ganorch runs with that job's tracking settings and evaluation off. An iteration is
n_critic D steps (G frozen) then one G step (D frozen) and the G_ema update; images/s counts real images through D,
over all workers, in windows of `--window` steps (ganorch's tracking.metrics_every): the median window after the
first. (a) runs for `--seconds` after its first window; the others take as many steps as (a) did, or `--run-steps`.
(e) and (f) run only when asked for: with (d) beside them, `--only d,e,f --run-steps 5000` gives the wall time of
jobs/digits_unconditional.yaml (5,000 steps) without evaluation, evaluating in-line, and in the background (the
domain classifier is trained before).

    python benchmarks/throughput.py                      # the quickstart's settings: DCGAN 28 px, 2 workers x 1 CPU
    python benchmarks/throughput.py --threads 2 --workers 1
    python benchmarks/throughput.py --device cuda --family dcgan --image-size 64 --width 64 --batch 256 --precision bf16
    python benchmarks/throughput.py --only d,e,f --run-steps 5000   # digits_unconditional's wall time, with evaluation
    python benchmarks/throughput.py --smoke              # a few steps of each, to see that it runs
"""

import argparse
import copy
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULT = "RESULT "  # a child's line of results on stdout


def benchmark_spec(args: argparse.Namespace, workers: int, steps: int, storage: str, evaluation: str = "off") -> dict:
    """The quickstart's networks without classes (jobs/digits_unconditional.yaml: the bare loops build unconditional
    networks) at the benchmark's settings; `evaluation` 'off', 'inline' or 'background'."""
    spec = yaml.safe_load((REPO / "jobs/digits_unconditional.yaml").read_text())
    spec["name"] = "throughput-benchmark"
    spec["model"].update(family=args.family, image_size=args.image_size, g_width=args.width, d_width=args.width,
                         latent_dim=args.latent)
    spec["train"].update(steps=steps, batch_size=args.batch, n_critic=args.n_critic, loss=args.loss,
                         precision=args.precision, channels_last=args.channels_last)
    spec["resources"].update(num_workers=workers, cpus_per_worker=args.threads, use_gpu=args.device == "cuda")
    spec["tracking"].update(metrics_every=args.window, storage_path=storage)
    spec["eval"]["every"] = 0
    if evaluation != "off":
        spec["eval"].update(every=args.eval_every, num_samples=args.eval_samples, cache_dir=args.eval_cache)
    if evaluation == "background":
        spec["eval"].update(background=True, resources={"cpus": args.eval_cpus})
    return spec


# ---- (a), (b): the bare loops, in child processes ----

def bare(args: argparse.Namespace) -> None:
    """One rank of the bare loop (the only one, or one of N over torch.distributed); rank 0 prints the results."""
    import torch.distributed as dist

    if args.world > 1:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo",
                                init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank, world_size=args.world)
    found = bare_loop(args, args.rank, args.world)
    if args.rank == 0:
        print(RESULT + json.dumps(found), flush=True)
    if args.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    # The rank's work is done and printed: leave without C++'s static destructors, where a thread of torch's
    # gloo backend has ended a rank with "terminate called without an active exception" after its results.
    sys.stdout.flush()
    os._exit(0)


def bare_loop(args: argparse.Namespace, rank: int, world: int) -> dict:
    """The bare loop's maths on this rank of `world` (a process group of that size is set up): its first step's
    time, window rates and steps."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gan_models import build_loss, build_models
    from orchestrator.data.sources import load_dataset
    from orchestrator.spec import parse

    torch.set_num_threads(args.threads)
    if args.device == "cpu":
        torch.set_flush_denormal(True)  # as ganorch does: a saturated D's denormal activations are slow on CPU
    device = torch.device("cuda", rank) if args.device == "cuda" else torch.device("cpu")
    spec = parse(benchmark_spec(args, world, 1, "unused"))
    m, b = spec.model, args.batch // world
    images = load_dataset(spec.data, spec.model).tensors[0].to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    G, D = build_models(m.family, latent_dim=m.latent_dim, image_size=m.image_size, channels=m.channels,
                        g_width=m.g_width, d_width=m.d_width, g_norm=m.g_norm, d_norm=m.d_norm)
    G, D = G.to(device, memory_format=memory_format), D.to(device, memory_format=memory_format)
    G_ema = copy.deepcopy(G).requires_grad_(False)
    G_train, D_train = (DDP(G, broadcast_buffers=False), DDP(D, broadcast_buffers=False)) if world > 1 else (G, D)
    opt_g = torch.optim.Adam(G.parameters(), lr=spec.optim.g.lr, betas=spec.optim.g.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=spec.optim.d.lr, betas=spec.optim.d.betas)
    loss = build_loss(spec.train.loss)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler_g, scaler_d = (torch.amp.GradScaler(device.type, enabled=dtype is torch.float16) for _ in range(2))
    ema_params, g_params = list(G_ema.parameters()), list(G.parameters())

    def autocast():
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def step(optimizer, scaler, value):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()

    def batches():
        generator = torch.Generator(device=device).manual_seed(0)
        while True:  # every rank shuffles alike and takes every world-th image
            order = torch.randperm(len(images), generator=generator, device=device)[rank::world]
            for i in range(len(order) // b):
                yield images[order[i * b:(i + 1) * b]].contiguous(memory_format=memory_format)

    real_batches = batches()
    first_step_at = time.time()
    rates, done, started = [], 0, time.perf_counter()
    deadline = None
    while (done < args.steps) if args.steps else (deadline is None or time.perf_counter() < deadline):
        G.requires_grad_(False)
        D.requires_grad_(True)
        for _ in range(args.n_critic):
            z = torch.randn(b, m.latent_dim, device=device)
            with autocast():
                with torch.no_grad():
                    fake = G(z)
                value = loss.discriminator(D_train(next(real_batches)).float(), D_train(fake).float())
            step(opt_d, scaler_d, value)
        D.requires_grad_(False)
        G.requires_grad_(True)
        z = torch.randn(b, m.latent_dim, device=device)
        with autocast():
            value = loss.generator(D(G_train(z)).float())
        step(opt_g, scaler_g, value)
        torch._foreach_lerp_(ema_params, g_params, 1 - spec.train.ema_decay)
        done += 1
        if done % args.window == 0:
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            rates.append(args.window * args.batch * args.n_critic / (now - started))
            started = now
            if deadline is None:  # the first window is the warm-up
                deadline = now + args.seconds
    return {"first_step_at": first_step_at, "rates": rates, "steps": done}


# ---- (r): Ray Train's minimum ----

def ray_minimum(args: argparse.Namespace) -> None:
    """A TorchTrainer of the benchmark's worker group whose train function only notes when it starts."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def note_start(config: dict) -> None:
        import ray.train

        if ray.train.get_context().get_world_rank() == 0:
            Path(config["file"]).write_text(str(time.time()))

    ray.init(log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "started"
        use_gpu = args.device == "cuda"
        TorchTrainer(note_start, train_loop_config={"file": str(file)},
                     scaling_config=ScalingConfig(num_workers=args.world, use_gpu=use_gpu,
                                                  resources_per_worker={"CPU": args.threads,
                                                                        **({"GPU": 1} if use_gpu else {})}),
                     torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                     run_config=RunConfig(storage_path=tmp, name="ray-minimum")).fit()
        print(RESULT + json.dumps({"first_step_at": float(file.read_text())}), flush=True)


def ray_bare(args: argparse.Namespace) -> None:
    """(g): the bare DDP loop as the train function of a TorchTrainer of N workers: Ray Train's processes and process
    group, and nothing of ganorch's. Against (b) it is what Ray costs, against (d) what ganorch costs on top."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    def loop(config: dict) -> None:
        import ray.train

        context = ray.train.get_context()
        found = bare_loop(argparse.Namespace(**config["args"]), context.get_world_rank(), context.get_world_size())
        if context.get_world_rank() == 0:
            Path(config["file"]).write_text(json.dumps(found))

    ray.init(log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)}})
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "found.json"
        use_gpu = args.device == "cuda"
        TorchTrainer(loop, train_loop_config={"file": str(file), "args": vars(args)},
                     scaling_config=ScalingConfig(num_workers=args.world, use_gpu=use_gpu,
                                                  resources_per_worker={"CPU": args.threads,
                                                                        **({"GPU": 1} if use_gpu else {})}),
                     torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                     run_config=RunConfig(storage_path=tmp, name="ray-bare")).fit()
        print(RESULT + file.read_text(), flush=True)


# ---- the parent: runs every configuration and prints the table ----

def child(args: argparse.Namespace, role: str, **options) -> list[str]:
    argv = [sys.executable, __file__, "--role", role]
    for name, value in {**vars(args), **options}.items():
        if name in ("role", "smoke", "only", "repeats", "run_steps", "eval_every", "eval_samples", "eval_cpus",
                    "eval_cache"):
            continue
        if isinstance(value, bool):
            argv += [f"--{name.replace('_', '-')}"] if value else []
        else:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def result_of(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith(RESULT)]
    assert lines, f"the child printed no results:\n{out[-3000:]}"
    return json.loads(lines[-1][len(RESULT):])


def run_bare(args: argparse.Namespace, world: int, steps: int) -> dict:
    port = free_port()
    launched = time.time()
    processes = [subprocess.Popen(child(args, "bare", rank=rank, world=world, port=port, steps=steps),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for rank in range(world)]
    outputs = [p.communicate()[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == 0, f"a bare rank failed:\n{out[-3000:]}"
    found = result_of(outputs[0])
    return {"rate": statistics.median(found["rates"][1:] or found["rates"]), "steps": found["steps"],
            "first_step_s": found["first_step_at"] - launched, "whole_s": time.time() - launched}


def run_ray_bare(args: argparse.Namespace, steps: int) -> dict:
    launched = time.time()
    out = subprocess.run(child(args, "ray-bare", world=args.workers, steps=steps), capture_output=True, text=True)
    assert out.returncode == 0, f"the bare loop in Ray Train failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}"
    found = result_of(out.stdout)
    return {"rate": statistics.median(found["rates"][1:] or found["rates"]), "steps": found["steps"],
            "first_step_s": found["first_step_at"] - launched, "whole_s": time.time() - launched}


def run_ray_minimum(args: argparse.Namespace) -> dict:
    launched = time.time()
    out = subprocess.run(child(args, "ray-minimum", world=args.workers), capture_output=True, text=True)
    assert out.returncode == 0, f"the trivial TorchTrainer failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}"
    return {"first_step_s": result_of(out.stdout)["first_step_at"] - launched, "whole_s": time.time() - launched}


def run_ganorch(args: argparse.Namespace, workers: int, steps: int, evaluation: str = "off") -> dict:
    """`ganorch run` on a job file of the benchmark's settings, in a store of its own; its figures from MLflow."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="ganorch-benchmark-") as tmp:
        job = Path(tmp) / "job.yaml"
        job.write_text(yaml.safe_dump(benchmark_spec(args, workers, steps, str(Path(tmp) / "ray"), evaluation)))
        uri = f"sqlite:///{tmp}/mlflow.db"
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        MlflowClient(uri).search_experiments()  # a store's first use creates its tables: not part of a run
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "GANORCH_HOME": str(Path(tmp) / "home")}
        launched = time.time()
        out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", str(job)], cwd=tmp, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        whole = time.time() - launched
        assert out.returncode == 0, f"ganorch run failed:\n{out.stdout[-3000:]}"
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("throughput-benchmark")
        run = client.search_runs([experiment.experiment_id])[0]
        rates = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "images_per_sec"),
                                         key=lambda m: m.step)]
        startup = client.get_metric_history(run.info.run_id, "startup_s")
        fids = client.get_metric_history(run.info.run_id, "fid")
        assert len(fids) == (steps // args.eval_every + (steps % args.eval_every > 0) if evaluation != "off" else 0)
    # startup_s counts from the start of ganorch's process, a few milliseconds after `launched`
    return {"rate": statistics.median(rates[1:] or rates), "steps": steps, "whole_s": whole,
            "first_step_s": startup[0].value if startup else float("nan"),
            **({"final_fid": max(fids, key=lambda m: m.step).value} if fids else {})}


def train_classifier(args: argparse.Namespace) -> None:
    """The domain classifier (e) and (f) evaluate with, trained into --eval-cache before any run is timed."""
    from orchestrator.data.sources import load_dataset
    from orchestrator.evaluate.domain_classifier import domain_classifier
    from orchestrator.spec import parse

    spec = parse(benchmark_spec(args, 1, 1, "unused", "inline"))
    domain_classifier(load_dataset(spec.data, spec.model), 10, image_size=spec.model.image_size,
                      channels=spec.model.channels, cache_dir=args.eval_cache, seed=spec.seed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="dcgan", choices=["dcgan", "resnet"])
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--width", type=int, default=32, help="g_width and d_width")
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="the global batch, split over the workers")
    parser.add_argument("--n-critic", type=int, default=1)
    parser.add_argument("--loss", default="nonsaturating", choices=["nonsaturating", "hinge", "lsgan"])
    parser.add_argument("--workers", type=int, default=2, help="N, for (b) and (d)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (ganorch: CPUs a worker)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (a) runs after its warm-up window")
    parser.add_argument("--window", type=int, default=100, help="steps per timed window (tracking.metrics_every)")
    parser.add_argument("--only", default="a,b,c,d,r", help="which configurations to run, of a,b,c,d,r,g,e,f ((a) "
                        "runs anyway when others need its step count)")
    parser.add_argument("--run-steps", type=int, default=0, help="steps of every run; 0: as many as (a) took")
    parser.add_argument("--eval-every", type=int, default=1000, help="(e), (f): eval.every (digits_unconditional's)")
    parser.add_argument("--eval-samples", type=int, default=2000, help="(e), (f): eval.num_samples (the quickstart's)")
    parser.add_argument("--eval-cpus", type=float, default=None, help="(f): eval.resources.cpus; default: 1 when the "
                        "machine has a CPU beside the workers', else 0 (sharing theirs)")
    parser.add_argument("--eval-cache", default=None, help="(e), (f): where the domain classifier is cached "
                        "(default: a temporary directory, trained in before any run is timed)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every configuration, taking turns")
    parser.add_argument("--smoke", action="store_true", help="a few steps of each, at a toy size")
    parser.add_argument("--role", default="parent", choices=["parent", "bare", "ray-minimum", "ray-bare"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "bare":
        return bare(args)
    if args.role == "ray-minimum":
        return ray_minimum(args)
    if args.role == "ray-bare":
        return ray_bare(args)
    if args.smoke:
        args.width, args.latent, args.batch, args.window, args.seconds = 4, 8, 8, 2, 0.0
        args.eval_every, args.eval_samples = min(args.eval_every, 4), min(args.eval_samples, 100)
    for name in ("workers", "threads", "batch", "window", "repeats", "width", "latent", "n_critic", "eval_every",
                 "eval_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: got {getattr(args, name)}; expected at least 1")
    if args.seconds < 0:
        parser.error(f"--seconds: got {args.seconds:g}; expected 0 or more")
    if args.batch % args.workers:
        parser.error(f"--batch {args.batch} does not split over --workers {args.workers}")
    only = set(args.only.split(","))
    if only - set("abcdrgef"):
        parser.error(f"--only: {','.join(sorted(only - set('abcdrgef')))}: expected some of a,b,c,d,r,g,e,f")
    if args.run_steps < 0:
        parser.error(f"--run-steps: got {args.run_steps}; expected 0 or more")
    if args.eval_cpus is None:
        args.eval_cpus = 1.0 if (os.cpu_count() or 1) > args.workers * args.threads else 0.0
    if args.eval_cpus < 0:
        parser.error(f"--eval-cpus: got {args.eval_cpus:g}; expected 0 or more")

    import torch

    print(f"# {date.today()}; {device_name(args.device)}; torch {torch.__version__}; python {platform.python_version()}")
    print(f"# {args.family} {args.image_size} px, widths {args.width}, latent {args.latent}, global batch "
          f"{args.batch}, n_critic {args.n_critic}, {args.loss}, {args.precision}"
          f"{', channels_last' if args.channels_last else ''}; {args.workers} workers x {args.threads} thread(s); "
          f"windows of {args.window} steps")
    print(f"# {' '.join(sys.argv)}")
    names = {"a": "(a) bare, 1 process", "b": f"(b) bare DDP, {args.workers} processes",
             "c": "(c) ganorch, 1 worker", "d": f"(d) ganorch, {args.workers} workers",
             "r": f"(r) Ray Train minimum, {args.workers} workers",
             "g": f"(g) bare DDP in Ray Train, {args.workers} workers",
             "e": f"(e) ganorch, {args.workers} workers, eval in-line",
             "f": f"(f) ganorch, {args.workers} workers, eval background"}
    rounds: list[dict[str, dict]] = []
    steps = args.run_steps
    evaluated = only & {"e", "f"}
    if evaluated:
        print(f"# (e), (f): eval.every {args.eval_every}, eval.num_samples {args.eval_samples}; (f): "
              f"eval.resources.cpus {args.eval_cpus:g}")
    cache = tempfile.TemporaryDirectory(prefix="ganorch-benchmark-classifier-") if evaluated and not args.eval_cache \
        else None
    if cache:
        args.eval_cache = cache.name
    if evaluated:
        train_classifier(args)  # or load it
    for round_ in range(1, args.repeats + 1):  # the configurations take turns, so a slow spell hits them alike
        found: dict[str, dict] = {}
        if "a" in only or not steps:
            found["a"] = run_bare(args, 1, steps)
            steps = steps or max(found["a"]["steps"], 3 * args.window)
        if "b" in only:
            found["b"] = run_bare(args, args.workers, steps)
        if "c" in only:
            found["c"] = run_ganorch(args, 1, steps)
        if "d" in only:
            found["d"] = run_ganorch(args, args.workers, steps)
        if "r" in only:
            found["r"] = run_ray_minimum(args)
        if "g" in only:
            found["g"] = run_ray_bare(args, steps)
        if "e" in only:
            found["e"] = run_ganorch(args, args.workers, steps, "inline")
        if "f" in only:
            found["f"] = run_ganorch(args, args.workers, steps, "background")
        rounds.append(found)
        print(f"# round {round_}: " + "; ".join(
            f"{key} {row['rate']:.0f} img/s, first step {row['first_step_s']:.1f} s" if "rate" in row
            else f"{key} first step {row['first_step_s']:.1f} s" for key, row in found.items()), flush=True)

    if cache:
        cache.cleanup()

    def median(key: str, figure: str) -> float:
        return statistics.median(r[key][figure] for r in rounds)

    print(f"medians of {args.repeats} round(s), {steps} steps a run")
    print(f"{'configuration':40} {'images/s':>10} {'to first step s':>16} {'whole process s':>16}"
          + (f" {'final fid':>10}" if evaluated else ""))
    for key in (k for k in names if k in rounds[0]):
        rate = f"{median(key, 'rate'):10.0f}" if "rate" in rounds[0][key] else f"{'':>10}"
        fid = f" {median(key, 'final_fid'):10.2f}" if "final_fid" in rounds[0][key] else ""
        print(f"{names[key]:40} {rate} {median(key, 'first_step_s'):16.1f} {median(key, 'whole_s'):16.1f}{fid}")
    for num, den, what in (("c", "a", "; goal: at least 0.97"), ("d", "b", "; goal: at least 0.97"),
                           ("g", "b", ": what Ray Train costs"), ("d", "g", ": what ganorch costs on Ray Train")):
        if num in rounds[0] and den in rounds[0]:
            ratios = [r[num]["rate"] / r[den]["rate"] for r in rounds]
            print(f"ratio {num}/{den} = {statistics.median(ratios):.3f} (median of the rounds' ratios: "
                  f"{', '.join(f'{x:.3f}' for x in ratios)}{what})")
    for key in ("e", "f"):
        if key in rounds[0] and "d" in rounds[0]:
            extra = [r[key]["whole_s"] - r["d"]["whole_s"] for r in rounds]
            print(f"evaluation's cost, {names[key][4:]}: whole process {statistics.median(extra):+.1f} s against (d) "
                  f"(rounds: {', '.join(f'{x:+.1f}' for x in extra)})")
    if "d" in rounds[0] and "r" in rounds[0]:
        extra = [r["d"]["first_step_s"] - r["r"]["first_step_s"] for r in rounds]
        print(f"start-up: ganorch ({args.workers} workers) to its first step minus Ray Train's minimum = "
              f"{statistics.median(extra):+.1f} s (rounds: {', '.join(f'{x:+.1f}' for x in extra)}; goal: at most "
              "+3 s)")

if __name__ == "__main__":
    main()
