"""The D/G alternation as data: each phase names the network it trains, the one it freezes,
its optimizer, how many steps it takes per iteration, and its objective."""

import contextlib
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, ContextManager, Iterator

import torch
from torch import nn

from gan_models.augment import DiffAugment
from gan_models.losses import GANLoss
from gan_models.regularizers import Regularizer, Uniform
from orchestrator.distributed.ddp import unwrap
from orchestrator.train.precision import Precision, loss_scale

Stats = dict[str, torch.Tensor]


@dataclass
class StepInputs:
    real: torch.Tensor | None           # a fresh real batch, for phases that use one
    real_labels: torch.Tensor | None
    z: torch.Tensor
    fake_labels: torch.Tensor | None    # the classes G is asked for (None when unconditional)
    index: int                          # how many steps this phase has taken before
    loss_scale: Callable[[], torch.Tensor | float]  # fp16's current loss scale (1 otherwise)
    uniform: Uniform | None = None      # draws a penalty's random numbers: this rank's share of the global batch's


Objective = Callable[[StepInputs], tuple[torch.Tensor, Stats]]


STREAK_FIELDS = ("total", "in_a_row", "longest")


@dataclass
class Streak:
    """How many of a phase's steps something happened to (a non-finite gradient, an fp16 overflow): in all, in a
    row up to now, and in the longest row since the stop decision last looked. Device tensors, updated without a
    host sync; plain ints until the first update (and in a checkpoint)."""
    total: Any = 0
    in_a_row: Any = 0
    longest: Any = 0

    def add(self, happened: torch.Tensor) -> None:
        self.total = self.total + happened
        self.in_a_row = (self.in_a_row + 1) * happened
        self.longest = torch.maximum(self.in_a_row, torch.as_tensor(self.longest, device=happened.device))

    def counts(self) -> list[int]:
        return [int(self.total), int(self.in_a_row), int(self.longest)]

    def take_longest(self) -> int:
        """The longest row since the last call; the row under way counts again at the next."""
        longest, self.longest = int(self.longest), self.in_a_row
        return longest


@dataclass
class Phase:
    name: str
    trains: nn.Module        # the network this phase steps (DDP-wrapped when there are several ranks)
    frozen: nn.Module        # the other network, bare: no gradients, no all-reduce
    optimizer: torch.optim.Optimizer
    repeats: int             # steps per iteration (n_critic for D)
    uses_real: bool          # whether each step takes a fresh real batch
    objective: Objective
    autocast: Callable[[], ContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None   # fp16 only
    steps_taken: int = 0
    skipped: Streak = field(default_factory=Streak)     # steps not applied: their loss or gradient was not finite
    overflowed: Streak = field(default_factory=Streak)  # fp16: steps the gradient scaler skipped (overflow)


def conditioned(net: nn.Module, conditional: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """net(x, labels) for a class-conditional model, net(x) otherwise."""
    return (lambda x, labels: net(x, labels)) if conditional else (lambda x, labels: net(x))


def judged(D: nn.Module, conditional: bool, augment: DiffAugment | None,
           step: StepInputs) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """D as the objectives call it: on images augmented afresh at every call (when augmenting), from the step's
    global-batch draws."""
    D_ = conditioned(D, conditional)
    if augment is None:
        return D_
    return lambda x, labels: D_(augment(x, step.uniform), labels)


def discriminator_objective(loss: GANLoss, regularizers: list[Regularizer], conditional: bool,
                            augment: DiffAugment | None, D: nn.Module, G: nn.Module,
                            step: StepInputs) -> tuple[torch.Tensor, Stats]:
    D_, G_ = judged(D, conditional, augment, step), conditioned(G, conditional)
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
    if augment is not None and augment.adaptive:  # ADA's overfitting signal r_t
        stats["d_real_sign"] = torch.sign(real_scores.detach() - threshold)
    for regularizer in due:  # penalties judge images under the real batch's labels
        penalty = regularizer.penalty(lambda x: D_(x, step.real_labels), real, real_scores, fake, step.loss_scale(),
                                      step.uniform)
        stats[regularizer.name] = penalty
        value = value + penalty
    return value, stats


def generator_objective(loss: GANLoss, conditional: bool, augment: DiffAugment | None, D: nn.Module, G: nn.Module,
                        step: StepInputs) -> tuple[torch.Tensor, Stats]:
    D_, G_ = judged(D, conditional, augment, step), conditioned(G, conditional)
    value = loss.generator(D_(G_(step.z, step.fake_labels), step.fake_labels).float())
    return value, {"loss_g": value}


def build_phases(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                 loss: GANLoss, n_critic: int, regularizers: list[Regularizer] = (),
                 precision: Precision | None = None, conditional: bool = False,
                 augment: DiffAugment | None = None) -> list[Phase]:
    """G and D are the networks as trained (DDP-wrapped when there are several ranks); each phase calls the other
    network's bare module. The optimizers must be fused (they take a step's skip as a device tensor). `augment`
    transforms every image D sees, in both phases."""
    precision = precision or Precision("fp32", torch.device("cpu"))
    return [
        Phase("D", trains=D, frozen=unwrap(G), optimizer=opt_d, repeats=n_critic, uses_real=True,
              objective=partial(discriminator_objective, loss, list(regularizers), conditional, augment, D, unwrap(G)),
              autocast=precision.autocast, scaler=precision.new_scaler()),
        Phase("G", trains=G, frozen=unwrap(D), optimizer=opt_g, repeats=1, uses_real=False,
              objective=partial(generator_objective, loss, conditional, augment, unwrap(D), G),
              autocast=precision.autocast, scaler=precision.new_scaler()),
    ]


def run_phase(phase: Phase, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
              draw_latent: Callable[[], tuple[torch.Tensor, torch.Tensor | None]],
              draw_uniform: Uniform | None = None, weight: float = 1.0) -> list[tuple[Stats, torch.Tensor]]:
    """`repeats` optimizer steps of the trained network; returns each step's stats and whether it was applied (a
    device tensor). Decided on the device, with no host sync and no collective beyond DDP's all-reduce: a step whose
    gradient is not finite is not applied (counted in `phase.skipped`), and a loss that is not finite on one rank
    seeds that rank's backward with NaN, so the all-reduced gradient is not finite on every rank and all skip
    together. Under fp16 such a step is the gradient scaler's to skip (it lowers its scale), counted in
    `phase.overflowed`, or in `phase.skipped` where the loss itself was not finite. `weight` is this rank's share
    of the global batch times the number of ranks (1 when the batch splits evenly): DDP averages the ranks'
    gradients, so each rank's mean loss is weighed by its share to make that the global batch's mean."""
    phase.frozen.requires_grad_(False)
    phase.trains.requires_grad_(True)
    stats = []
    for _ in range(phase.repeats):
        real, real_labels = next(batches) if phase.uses_real else (None, None)
        z, fake_labels = draw_latent()
        scaler = phase.scaler
        inputs = StepInputs(real, real_labels, z, fake_labels, phase.steps_taken, loss_scale(scaler), draw_uniform)
        phase.optimizer.zero_grad(set_to_none=True)
        with phase.autocast():
            value, step_stats = phase.objective(inputs)
        loss_finite = torch.isfinite(value.detach())
        seed = torch.where(loss_finite, weight, math.nan)
        if scaler is None:
            value.backward(seed)
            norm = grad_norm(phase.trains)
            applied = torch.isfinite(norm)  # the all-reduced gradients are alike on every rank: so is this
            step_unless(phase.optimizer, ~applied)
            phase.skipped.add(~applied)
        else:  # fp16: scaled backward; the scaler skips a step whose gradient overflowed, and backs off
            scaler.scale(value).backward(seed)
            scaler.unscale_(phase.optimizer)
            norm = grad_norm(phase.trains)
            applied = torch.isfinite(norm)
            scaler.step(phase.optimizer)  # a fused optimizer takes the scaler's found_inf: no host sync
            scaler.update()
            # A non-finite loss is a skip, which only its own rank sees; the ranks' counts are agreed (the largest)
            # where the stop decision looks at them (periodic.agree_counts).
            phase.skipped.add(~loss_finite)
            phase.overflowed.add(loss_finite & ~applied)
        step_stats[f"grad_norm_{phase.name.lower()}"] = norm
        phase.steps_taken += 1
        stats.append((step_stats, applied))
    return stats


def step_unless(optimizer: torch.optim.Optimizer, not_finite: torch.Tensor) -> None:
    """optimizer.step(), a no-op where `not_finite`: a fused optimizer's `found_inf`, as the gradient scaler passes
    it, so the decision stays on the device."""
    assert all(group.get("fused") for group in optimizer.param_groups), "phases need fused optimizers"
    optimizer.found_inf = not_finite.float()
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


def grad_norm(module: nn.Module) -> torch.Tensor:
    """The L2 norm of all the module's gradients together (no host sync; reduced once per interval)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
