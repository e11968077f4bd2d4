"""Training that continues from a checkpoint. Besides the networks, a checkpoint holds where the loop stands:
the phases' step counters, fp16 loss scales, the data position and the noise and RNG states, so on the same
hardware the resumed run takes the steps an uninterrupted one would have taken.

The optimizers keep their moments but take their learning rates and betas from the spec being run, not from
the checkpoint: a PBT exploit resumes a donor's checkpoint under new rates.
"""

from typing import Any

import torch
from torch import nn

from gan_models.augment import DiffAugment
from orchestrator.spec import JobSpec
from orchestrator.train import checkpoint
from orchestrator.train.phases import Phase, Streak


def loop_state(phases: list[Phase], noise: torch.Generator, data_position: int | None,
               device: torch.device, augment: DiffAugment | None = None) -> dict[str, Any]:
    state = {"phase_steps": {p.name: p.steps_taken for p in phases},
             "phase_skipped": {p.name: p.skipped.counts() for p in phases},
             "phase_overflowed": {p.name: p.overflowed.counts() for p in phases},
             "grad_scalers": {p.name: p.scaler.state_dict() for p in phases if p.scaler is not None},
             "noise_rng": noise.get_state(), "torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    if data_position is not None:  # None: a stream (Ray Data) has no position to go back to
        state["data_position"] = data_position
    if augment is not None:
        state["augment_p"] = augment.p
    return state


def restore_networks(state: dict[str, Any], G: nn.Module, D: nn.Module, num_classes: int) -> None:
    """G's and D's weights, before DDP wraps them."""
    if state["num_classes"] != num_classes:
        raise ValueError(f"the checkpoint's networks are conditioned on {state['num_classes']} classes, the data "
                         f"has {num_classes}")
    G.load_state_dict(state["generator"])
    D.load_state_dict(state["discriminator"])


def restore_training(state: dict[str, Any], G_ema: nn.Module, opt_g: torch.optim.Optimizer,
                     opt_d: torch.optim.Optimizer, phases: list[Phase], spec: JobSpec,
                     augment: DiffAugment | None = None) -> None:
    """The EMA generator, both optimizers (rates and betas from `spec`), the phases' counters and an adaptive
    augmentation's p (a fixed p is the spec's)."""
    G_ema.load_state_dict(state["generator_ema"])
    for optimizer, key, settings in ((opt_g, "optimizer_g", spec.optim.g), (opt_d, "optimizer_d", spec.optim.d)):
        # A checkpoint from before fused optimizers says fused: None, and loading places the step counters by it
        fused = optimizer.defaults["fused"]
        optimizer.load_state_dict({**state[key], "param_groups": [{**group, "fused": fused}
                                                                  for group in state[key]["param_groups"]]})
        for group in optimizer.param_groups:
            group["lr"], group["betas"] = settings.lr, tuple(settings.betas)
    loop = state.get("loop", {})
    for phase in phases:
        phase.steps_taken = loop.get("phase_steps", {}).get(phase.name, 0)
        phase.skipped = Streak(*loop.get("phase_skipped", {}).get(phase.name, []))
        phase.overflowed = Streak(*loop.get("phase_overflowed", {}).get(phase.name, []))
        if phase.scaler is not None and phase.name in loop.get("grad_scalers", {}):
            phase.scaler.load_state_dict(loop["grad_scalers"][phase.name])
    if augment is not None and augment.adaptive and "augment_p" in loop:
        augment.p = float(loop["augment_p"])


def data_position(state: dict[str, Any] | None) -> int:
    return (state or {}).get("loop", {}).get("data_position", 0)


def restore_rng(state: dict[str, Any], noise: torch.Generator, device: torch.device) -> None:
    """The noise generator and the global RNGs, as they were when the checkpoint was taken. Called last before
    the loop, so nothing that set-up draws can shift them. On another kind of device than the checkpoint's, whose
    noise state does not fit (`device_change`), the noise is re-seeded from the seed and the step."""
    loop = state.get("loop", {})
    if "noise_rng" in loop and device_change(state, device):
        noise.manual_seed(state["spec"]["seed"] + 1 + (state["step"] << 32))  # a fresh run's: seed + 1
    elif "noise_rng" in loop:
        noise.set_state(loop["noise_rng"])
    if "torch_rng" in loop:
        torch.set_rng_state(loop["torch_rng"])
    if "cuda_rng" in loop and device.type == "cuda":
        torch.cuda.set_rng_state(loop["cuda_rng"], device)


def saved_on(state: dict[str, Any]) -> str:
    """The kind of device a checkpoint was taken on: 'cuda' when it holds the CUDA RNG's state (`loop_state` keeps
    it only there), else 'cpu'."""
    return "cuda" if "cuda_rng" in state.get("loop", {}) else "cpu"


def device_change(state: dict[str, Any], device: torch.device) -> str | None:
    """What a resume on `device` does not restore of a checkpoint taken on another kind of device, or None. A CPU
    generator's state (the Mersenne Twister's) and a CUDA one's (seed and offset) do not fit each other."""
    was = saved_on(state)
    if was == device.type or "noise_rng" not in state.get("loop", {}):
        return None
    return (f"taken on {was}, resumed on {device.type}: the noise generator was re-seeded from the seed and step "
            f"{state['step']}, a {was} generator's state does not fit a {device.type} one")


def load_latest_intact(ckpt: Any) -> tuple[dict[str, Any], str, list[str]]:
    """The state in Ray Train checkpoint `ckpt`, or, when that one is corrupted or truncated, in the latest intact
    one before it in the run's storage; where it is; and the checkpoints passed over, and why."""
    passed_over = []
    for candidate in [ckpt, *earlier_checkpoints(ckpt)]:
        try:
            with candidate.as_directory() as directory:
                return checkpoint.load(directory), checkpoint.location(candidate), passed_over
        except checkpoint.CheckpointError as err:
            passed_over.append(str(err))
    raise checkpoint.CheckpointError(f"no intact checkpoint to continue from: {'; '.join(passed_over)}")


def earlier_checkpoints(ckpt: Any) -> list[Any]:
    """The checkpoints Ray Train wrote before `ckpt` in the same run directory, latest first (their directory
    names, checkpoint_<time>, sort by time)."""
    from pyarrow.fs import FileSelector, FileType
    from ray.train import Checkpoint

    parent, _, name = ckpt.path.rstrip("/").rpartition("/")
    try:
        entries = ckpt.filesystem.get_file_info(FileSelector(parent))
    except OSError:  # a storage that cannot be listed: nothing to fall back on
        return []
    names = sorted((e.base_name for e in entries if e.type == FileType.Directory
                    and e.base_name.startswith("checkpoint_") and e.base_name < name), reverse=True)
    return [Checkpoint(f"{parent}/{n}", filesystem=ckpt.filesystem) for n in names]
