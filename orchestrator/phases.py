"""The D/G alternation as data: each phase names the network it trains, the one it freezes,
its optimizer, how many steps it takes per iteration, and its objective."""

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Callable, ContextManager, Iterator

import torch
from torch import nn

from gan_models.losses import GANLoss
from gan_models.regularizers import Regularizer
from orchestrator.precision import Precision

Stats = dict[str, torch.Tensor]
Objective = Callable[[torch.Tensor | None, torch.Tensor, int, Callable[[], float]], tuple[torch.Tensor, Stats]]


@dataclass
class Phase:
    name: str
    trains: nn.Module        # the DDP-wrapped network this phase steps
    frozen: nn.Module        # the other network, bare: no gradients, no all-reduce
    optimizer: torch.optim.Optimizer
    repeats: int             # steps per iteration (n_critic for D)
    uses_real: bool          # whether each step takes a fresh real batch
    objective: Objective     # (real or None, z, index of this phase's step, loss scale getter) -> (loss, stats)
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None   # fp16 only
    steps_taken: int = 0


def discriminator_objective(loss: GANLoss, regularizers: list[Regularizer], D: nn.Module, G: nn.Module,
                            real: torch.Tensor, z: torch.Tensor, step: int,
                            loss_scale: Callable[[], float]) -> tuple[torch.Tensor, Stats]:
    with torch.no_grad():
        fake = G(z)
    due = [r for r in regularizers if step % r.every == 0]
    real = real.detach().requires_grad_(any(r.needs_real_grad for r in due))
    # Separate forwards, as in DCGAN: a BatchNorm D normalises real and fake batches each by their
    # own statistics, exactly as it will see fakes in the G phase. D's DDP wrapper does not broadcast
    # buffers, so the second forward cannot overwrite statistics the first one's backward needs.
    real_scores, fake_scores = D(real).float(), D(fake).float()  # losses in fp32 under autocast
    value = loss.discriminator(real_scores, fake_scores)
    threshold = loss.threshold(real_scores.detach(), fake_scores.detach())
    stats = {"loss_d": value, "d_real": loss.output(real_scores), "d_fake": loss.output(fake_scores),
             "d_accuracy_real": (real_scores > threshold).float(), "d_accuracy_fake": (fake_scores <= threshold).float()}
    for regularizer in due:
        penalty = regularizer.penalty(D, real, real_scores, fake, loss_scale())
        stats[regularizer.name] = penalty
        value = value + penalty
    return value, stats


def generator_objective(loss: GANLoss, D: nn.Module, G: nn.Module, real: torch.Tensor | None,
                        z: torch.Tensor, step: int, loss_scale: Callable[[], float]) -> tuple[torch.Tensor, Stats]:
    value = loss.generator(D(G(z)).float())
    return value, {"loss_g": value}


def build_phases(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                 loss: GANLoss, n_critic: int, regularizers: list[Regularizer] = (),
                 precision: Precision | None = None) -> list[Phase]:
    """G and D are the DDP wrappers; each phase calls the other network's bare module."""
    precision = precision or Precision("fp32", torch.device("cpu"))
    return [
        Phase("D", trains=D, frozen=G.module, optimizer=opt_d, repeats=n_critic, uses_real=True,
              objective=partial(discriminator_objective, loss, list(regularizers), D, G.module),
              autocast=precision.autocast, scaler=precision.new_scaler()),
        Phase("G", trains=G, frozen=D.module, optimizer=opt_g, repeats=1, uses_real=False,
              objective=partial(generator_objective, loss, D.module, G),
              autocast=precision.autocast, scaler=precision.new_scaler()),
    ]


def run_phase(phase: Phase, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
              draw_z: Callable[[], torch.Tensor]) -> list[Stats]:
    """`repeats` optimizer steps of the trained network; returns each step's stats."""
    phase.frozen.requires_grad_(False)
    phase.trains.requires_grad_(True)
    stats = []
    for _ in range(phase.repeats):
        real = next(batches)[0] if phase.uses_real else None
        phase.optimizer.zero_grad(set_to_none=True)
        scaler = phase.scaler
        with phase.autocast():
            value, step_stats = phase.objective(real, draw_z(), phase.steps_taken,
                                                scaler.get_scale if scaler else lambda: 1.0)
        if scaler is None:
            value.backward()
            step_stats[f"grad_norm_{phase.name.lower()}"] = grad_norm(phase.trains)
            phase.optimizer.step()
        else:  # fp16: scaled backward; the step is skipped when a gradient overflowed
            scaler.scale(value).backward()
            scaler.unscale_(phase.optimizer)
            step_stats[f"grad_norm_{phase.name.lower()}"] = grad_norm(phase.trains)
            scaler.step(phase.optimizer)
            scaler.update()
        phase.steps_taken += 1
        stats.append(step_stats)
    return stats


def grad_norm(module: nn.Module) -> torch.Tensor:
    """The L2 norm of all the module's gradients together (no host sync; reduced once per interval)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
