"""Images/s of one DCGAN-64 worker in fp32, bf16 and fp16, with and without channels_last.

The real per-worker loop (`orchestrator.train.loop.train`) in this process on a one-process group: no Ray, no MLflow.
Each configuration is timed over its second half of steps, after warm-up (cuDNN autotuning, allocator).

    python benchmarks/precision_throughput.py                 # GPU if there is one, else CPU
    python benchmarks/precision_throughput.py --steps 40 --batch-size 32 --width 16   # a quick CPU look
"""

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist

from orchestrator.spec import parse
from orchestrator.train.loop import WorkerContext, train


def one_process_group(device: torch.device) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def measure(device: torch.device, precision: str, channels_last: bool, args: argparse.Namespace) -> float:
    half = args.steps // 2
    spec = parse({
        "name": "benchmark", "seed": 0,
        "model": {"family": "dcgan", "image_size": 64, "channels": 1, "g_width": args.width, "d_width": args.width},
        "data": {"source": "mnist5k"},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "n_critic": 1,
                  "precision": precision, "channels_last": channels_last},
        "resources": {"num_workers": 1, "use_gpu": device.type == "cuda"},
        "tracking": {"metrics_every": half, "samples_every": args.steps, "checkpoint_every": args.steps},
    })
    summary = train(spec, WorkerContext(device=device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return summary["metrics"]["images_per_sec"]  # the last interval: steps half+1 .. steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=64, help="g_width and d_width")
    parser.add_argument("--precisions", default="fp32,bf16,fp16")
    args = parser.parse_args()
    assert args.steps >= 2, "--steps must be at least 2"

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    one_process_group(device)
    print(f"DCGAN-64 (width {args.width}), batch {args.batch_size}, {args.steps} steps, timed over the last "
          f"{args.steps - args.steps // 2}; {name}; torch {torch.__version__}")
    print(f"{'precision':<10} {'channels_last':<14} {'images/s':>10} {'vs fp32':>8}")
    baseline = {}
    for channels_last in (False, True):
        for precision in args.precisions.split(","):
            started = time.perf_counter()
            rate = measure(device, precision, channels_last, args)
            baseline.setdefault(channels_last, rate if precision == "fp32" else None)
            ratio = f"{rate / baseline[channels_last]:.2f}x" if baseline[channels_last] else "-"
            print(f"{precision:<10} {str(channels_last):<14} {rate:>10.0f} {ratio:>8}   "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
