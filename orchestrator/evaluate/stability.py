"""The stability monitor: flags a run that fails quietly, from the metric stream every rank already holds.

It reads each metrics interval (losses, D's outputs and accuracies, reduced across ranks) and each evaluation
(mode coverage), and raises a flag the first time its condition holds:

- `diverged`: a loss or gradient norm is not finite, or a loss's size exceeds EXPLODE_FACTOR times the median
  size of its earlier intervals (at least 1);
- `d_overpowering`: for `window` intervals in a row, D calls more than 99% of fakes fake, or (losses whose D
  output is a probability or a 0/1 target) the mean D(G(z)) is below 0.01, while it calls over half the reals real
  (a D that rejects everything early on is not winning);
- `mode_collapse`: an evaluation sees G's variety gone, by any of three signals: its mode coverage falls to at
  most half the best seen before it (classes lost); or, while G makes at least MAKES_CLASSES of the classes
  (`mode_coverage`: an untrained G makes one blur, nearly alike for every z, which is no collapse yet), its recall
  falls to at most COLLAPSED_SHARE of what held-out real images score against the same reference
  (`real_recall`) while its precision stays at least REALISTIC_SHARE of theirs (`real_precision`): realistic
  images, but few real ones near any of them (blurred or noisy images lose precision as well as recall, and are
  not a collapse); or its `class_spread` falls below COLLAPSED_SPREAD (within its classes G draws nearly one
  image whatever z is: the collapse of a conditional G, which makes every class by construction);
- `oscillation`: D's accuracy on fakes swings across the band [0.1, 0.9] (from above 0.9 to below 0.1, or back)
  at least OSCILLATION_SWINGS times within the last 4 x `window` intervals: D and G take turns winning.
"""

import math
import statistics
from collections import deque
from dataclasses import dataclass

FLAGS = ("diverged", "d_overpowering", "mode_collapse", "oscillation")
# Flags that need evaluation (eval.every > 0) to be seen.
EVAL_FLAGS = ("mode_collapse",)
# Losses whose D output (`d_fake`) is a probability (nonsaturating) or regressed to 0 for fakes (lsgan).
BOUNDED_OUTPUT_LOSSES = ("nonsaturating", "lsgan")

EXPLODE_FACTOR = 100.0
OVERPOWERED_ACCURACY = 0.99
OVERPOWERED_OUTPUT = 0.01
ACCEPTS_REAL = 0.5   # d_accuracy_real above this: D still tells reals apart
COLLAPSE_RATIO = 0.5
MAKES_CLASSES = 0.5
COLLAPSED_SHARE = 0.1
REALISTIC_SHARE = 0.9
COLLAPSED_SPREAD = 0.1
OSCILLATION_BAND = (0.1, 0.9)
OSCILLATION_SWINGS = 3

LOSSES = ("loss_d", "loss_g")
WATCHED_FINITE = ("loss_d", "loss_g", "grad_norm_d", "grad_norm_g")


@dataclass(frozen=True)
class Flag:
    name: str      # one of FLAGS
    step: int      # the step whose metrics raised it
    reason: str    # what was seen, in words

    def describe(self) -> str:
        return f"{self.name} at step {self.step}: {self.reason}"


class StabilityMonitor:
    def __init__(self, window: int, loss: str):
        assert window >= 1
        self.window = window
        self.bounded_output = loss in BOUNDED_OUTPUT_LOSSES
        self.raised: dict[str, Flag] = {}
        self.loss_sizes: dict[str, list[float]] = {name: [] for name in LOSSES}
        self.overpowered_steps: deque[int] = deque(maxlen=window)
        self.fake_accuracy: deque[float] = deque(maxlen=4 * window)
        self.best_coverage = 0.0

    def observe(self, step: int, metrics: dict[str, float]) -> list[Flag]:
        """One metrics interval, ending at `step`. Returns the flags it raises for the first time."""
        found = [self._diverged(step, metrics), self._overpowered(step, metrics), self._oscillating(step, metrics)]
        return self._raise(found)

    def observe_eval(self, step: int, scores: dict[str, float]) -> list[Flag]:
        """One evaluation at `step`. Returns the flags it raises for the first time."""
        reasons = []
        coverage = scores.get("mode_coverage")
        if coverage is not None:
            if self.best_coverage > 0 and coverage <= COLLAPSE_RATIO * self.best_coverage:
                reasons.append(f"mode_coverage fell to {coverage:.2f} from a best of {self.best_coverage:.2f}")
            self.best_coverage = max(self.best_coverage, coverage)
        if coverage is not None and coverage >= MAKES_CLASSES:
            reasons += self._no_variety(scores)
        flag = Flag("mode_collapse", step, "; ".join(reasons)) if reasons else None
        return self._raise([flag])

    @staticmethod
    def _no_variety(scores: dict[str, float]) -> list[str]:
        reasons = []
        if all(scores.get(name) is not None for name in ("recall", "real_recall", "precision", "real_precision")) \
                and scores["recall"] <= COLLAPSED_SHARE * scores["real_recall"] \
                and scores["precision"] >= REALISTIC_SHARE * scores["real_precision"]:
            reasons.append(f"recall {scores['recall']:.3f} at precision {scores['precision']:.3f} (held-out real "
                           f"images: {scores['real_recall']:.3f} at {scores['real_precision']:.3f})")
        spread = scores.get("class_spread")
        if spread is not None and spread < COLLAPSED_SPREAD:  # NaN (no class to measure) is not below
            reasons.append(f"class_spread {spread:.3f}: G's images vary less than {COLLAPSED_SPREAD:g}x as much as "
                           "real ones within their classes")
        return reasons

    def _raise(self, found: list[Flag | None]) -> list[Flag]:
        new = [f for f in found if f is not None and f.name not in self.raised]
        self.raised.update({f.name: f for f in new})
        return new

    def _diverged(self, step: int, metrics: dict[str, float]) -> Flag | None:
        bad = [name for name in WATCHED_FINITE if name in metrics and not math.isfinite(metrics[name])]
        if bad:
            return Flag("diverged", step, f"{', '.join(bad)} not finite")
        for name in LOSSES:
            if name not in metrics:
                continue
            size, history = abs(metrics[name]), self.loss_sizes[name]
            reference = max(statistics.median(history), 1.0) if history else None
            history.append(size)
            if reference is not None and size > EXPLODE_FACTOR * reference:
                return Flag("diverged", step, f"|{name}| = {size:.3g}, over {EXPLODE_FACTOR:g}x the median "
                                              f"of its earlier intervals ({reference:.3g})")
        return None

    def _overpowered(self, step: int, metrics: dict[str, float]) -> Flag | None:
        accuracy, output = metrics.get("d_accuracy_fake"), metrics.get("d_fake")
        reasons = []
        if metrics.get("d_accuracy_real", 1.0) > ACCEPTS_REAL:
            if accuracy is not None and accuracy > OVERPOWERED_ACCURACY:
                reasons.append(f"d_accuracy_fake > {OVERPOWERED_ACCURACY:g}")
            if self.bounded_output and output is not None and abs(output) < OVERPOWERED_OUTPUT:
                reasons.append(f"mean D(G(z)) below {OVERPOWERED_OUTPUT:g}")
        if not reasons:
            self.overpowered_steps.clear()
            return None
        self.overpowered_steps.append(step)
        if len(self.overpowered_steps) < self.window:
            return None
        return Flag("d_overpowering", step, f"{' and '.join(reasons)} for {self.window} metrics interval(s) in a "
                                            f"row (steps {self.overpowered_steps[0]}-{step})")

    def _oscillating(self, step: int, metrics: dict[str, float]) -> Flag | None:
        if "d_accuracy_fake" not in metrics:
            return None
        self.fake_accuracy.append(metrics["d_accuracy_fake"])
        low, high = OSCILLATION_BAND
        swings, side = 0, None
        for accuracy in self.fake_accuracy:
            now = "high" if accuracy > high else "low" if accuracy < low else None
            if now is not None and side is not None and now != side:
                swings += 1
            side = now or side
        if swings < OSCILLATION_SWINGS:
            return None
        return Flag("oscillation", step, f"D's accuracy on fakes swung across [{low:g}, {high:g}] {swings} times "
                                         f"in the last {len(self.fake_accuracy)} metrics intervals")
