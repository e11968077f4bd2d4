"""The D/G alternation as data: each phase names the network it trains, the one it freezes,
its optimizer, how many steps it takes per iteration, and its objective."""

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Callable, ContextManager, Iterator

import torch
import torch.distributed as dist
from torch import nn

from gan_models.losses import GANLoss
from gan_models.regularizers import Regularizer, Uniform
from orchestrator.train.precision import Precision

Stats = dict[str, torch.Tensor]


@dataclass
class StepInputs:
    real: torch.Tensor | None           # a fresh real batch, for phases that use one
    real_labels: torch.Tensor | None
    z: torch.Tensor
    fake_labels: torch.Tensor | None    # the classes G is asked for (None when unconditional)
    index: int                          # how many steps this phase has taken before
    loss_scale: Callable[[], float]     # fp16's current loss scale (1 otherwise)
    uniform: Uniform | None = None      # draws a penalty's random numbers: this rank's share of the global batch's


Objective = Callable[[StepInputs], tuple[torch.Tensor, Stats]]


@dataclass
class Phase:
    name: str
    trains: nn.Module        # the DDP-wrapped network this phase steps
    frozen: nn.Module        # the other network, bare: no gradients, no all-reduce
    optimizer: torch.optim.Optimizer
    repeats: int             # steps per iteration (n_critic for D)
    uses_real: bool          # whether each step takes a fresh real batch
    objective: Objective
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None   # fp16 only
    steps_taken: int = 0
    skipped: int = 0            # steps not taken because their loss or gradient was not finite
    skipped_in_a_row: int = 0   # of those, the latest ones without a step taken between them
    overflowed: int = 0         # fp16: steps the gradient scaler skipped, its gradients having overflowed
    overflowed_in_a_row: int = 0


def conditioned(net: nn.Module, conditional: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """net(x, labels) for a class-conditional model, net(x) otherwise."""
    return (lambda x, labels: net(x, labels)) if conditional else (lambda x, labels: net(x))


def discriminator_objective(loss: GANLoss, regularizers: list[Regularizer], conditional: bool, D: nn.Module,
                            G: nn.Module, step: StepInputs) -> tuple[torch.Tensor, Stats]:
    D_, G_ = conditioned(D, conditional), conditioned(G, conditional)
    with torch.no_grad():
        fake = G_(step.z, step.fake_labels)
    due = [r for r in regularizers if step.index % r.every == 0]
    real = step.real.detach().requires_grad_(any(r.needs_real_grad for r in due))
    # Separate forwards, as in DCGAN: a BatchNorm D normalises real and fake batches each by their
    # own statistics, exactly as it will see fakes in the G phase. D's DDP wrapper does not broadcast
    # buffers, so the second forward cannot overwrite statistics the first one's backward needs.
    real_scores = D_(real, step.real_labels).float()  # losses in fp32 under autocast
    fake_scores = D_(fake, step.fake_labels).float()
    value = loss.discriminator(real_scores, fake_scores)
    threshold = loss.threshold(real_scores.detach(), fake_scores.detach())
    stats = {"loss_d": value, "d_real": loss.output(real_scores), "d_fake": loss.output(fake_scores),
             "d_accuracy_real": (real_scores > threshold).float(), "d_accuracy_fake": (fake_scores <= threshold).float()}
    for regularizer in due:  # penalties judge images under the real batch's labels
        penalty = regularizer.penalty(lambda x: D_(x, step.real_labels), real, real_scores, fake, step.loss_scale(),
                                      step.uniform)
        stats[regularizer.name] = penalty
        value = value + penalty
    return value, stats


def generator_objective(loss: GANLoss, conditional: bool, D: nn.Module, G: nn.Module,
                        step: StepInputs) -> tuple[torch.Tensor, Stats]:
    D_, G_ = conditioned(D, conditional), conditioned(G, conditional)
    value = loss.generator(D_(G_(step.z, step.fake_labels), step.fake_labels).float())
    return value, {"loss_g": value}


def build_phases(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                 loss: GANLoss, n_critic: int, regularizers: list[Regularizer] = (),
                 precision: Precision | None = None, conditional: bool = False) -> list[Phase]:
    """G and D are the DDP wrappers; each phase calls the other network's bare module."""
    precision = precision or Precision("fp32", torch.device("cpu"))
    return [
        Phase("D", trains=D, frozen=G.module, optimizer=opt_d, repeats=n_critic, uses_real=True,
              objective=partial(discriminator_objective, loss, list(regularizers), conditional, D, G.module),
              autocast=precision.autocast, scaler=precision.new_scaler()),
        Phase("G", trains=G, frozen=D.module, optimizer=opt_g, repeats=1, uses_real=False,
              objective=partial(generator_objective, loss, conditional, D.module, G),
              autocast=precision.autocast, scaler=precision.new_scaler()),
    ]


def run_phase(phase: Phase, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
              draw_latent: Callable[[], tuple[torch.Tensor, torch.Tensor | None]],
              draw_uniform: Uniform | None = None) -> list[Stats]:
    """`repeats` optimizer steps of the trained network; returns the stats of the steps taken. A step whose loss
    (on any rank) or gradient is not finite is not taken, and counted in `phase.skipped`; under fp16 a step whose
    gradients overflowed is the scaler's to skip (it lowers its scale), counted in `phase.overflowed`. Neither
    contributes stats."""
    phase.frozen.requires_grad_(False)
    phase.trains.requires_grad_(True)
    stats = []
    for _ in range(phase.repeats):
        real, real_labels = next(batches) if phase.uses_real else (None, None)
        z, fake_labels = draw_latent()
        scaler = phase.scaler
        inputs = StepInputs(real, real_labels, z, fake_labels, phase.steps_taken,
                            scaler.get_scale if scaler else lambda: 1.0, draw_uniform)
        phase.optimizer.zero_grad(set_to_none=True)
        with phase.autocast():
            value, step_stats = phase.objective(inputs)
        overflowed = False
        if scaler is None:
            value.backward()
            norm = step_stats[f"grad_norm_{phase.name.lower()}"] = grad_norm(phase.trains)
            finite = all(finite_on_all_ranks(torch.stack([value.detach().float(), norm])))
            if finite:
                phase.optimizer.step()
        else:  # fp16: scaled backward; the scaler skips a step whose gradient overflowed, and backs off
            scaler.scale(value).backward()
            scaler.unscale_(phase.optimizer)
            norm = step_stats[f"grad_norm_{phase.name.lower()}"] = grad_norm(phase.trains)
            finite, grads_finite = finite_on_all_ranks(torch.stack([value.detach().float(), norm]))
            overflowed = finite and not grads_finite  # gradients are all-reduced: the same on every rank
            if finite:
                scaler.step(phase.optimizer)
            scaler.update()
        phase.steps_taken += 1
        if overflowed:
            phase.overflowed += 1
            phase.overflowed_in_a_row += 1
        elif finite:
            phase.skipped_in_a_row = phase.overflowed_in_a_row = 0
            stats.append(step_stats)
        else:
            phase.skipped += 1
            phase.skipped_in_a_row += 1
    return stats


def finite_on_all_ranks(values: torch.Tensor) -> list[bool]:
    """For each of `values`, whether it is finite on every rank (one all-reduce, one host sync): a step is taken,
    or not, by all ranks together. (Gradients are all-reduced, so a rank's non-finite gradient is every rank's; a
    loss is each rank's own.)"""
    bad = (~torch.isfinite(values)).float()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(bad)
    return [count == 0 for count in bad.tolist()]


def grad_norm(module: nn.Module) -> torch.Tensor:
    """The L2 norm of all the module's gradients together (no host sync; reduced once per interval)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
