"""Accuracy metrics of scored multiple-choice examples, with 95% intervals.

acc and acc_norm as lm-evaluation-harness defines them: the prediction is the argmax
(first index on ties, like numpy) of the summed continuation log-probs, for acc_norm
divided by the continuation's length in UTF-8 bytes.

Intervals: Wilson score interval, 95% (z = 1.959964), for one task's accuracy; for an
average over tasks, a normal approximation with the tasks' binomial variances added
(independent samples): se = sqrt(sum_t p_t (1 - p_t) / n_t) / T.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import msgspec

Z95 = 1.959963984540054
INTERVAL = "95% Wilson score interval (averages over tasks: normal approximation)"


class Estimate(msgspec.Struct, frozen=True):
    """A proportion with its 95% interval and sample size (fractions, not percent)."""

    value: float
    low: float
    high: float
    n: int

    def fmt(self, digits: int = 1) -> str:
        """`45.2 [42.1, 48.3]` in percent."""
        return (f"{100 * self.value:.{digits}f} "
                f"[{100 * self.low:.{digits}f}, {100 * self.high:.{digits}f}]")


def wilson(successes: int, n: int, z: float = Z95) -> Estimate:
    if n <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean_of(estimates: Sequence[Estimate], z: float = Z95) -> Estimate:
    """The unweighted average of per-task accuracies, normal-approximation interval."""
    if not estimates:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    t = len(estimates)
    mean = sum(e.value for e in estimates) / t
    var = sum(e.value * (1 - e.value) / e.n for e in estimates) / (t * t)
    half = z * math.sqrt(var)
    return Estimate(mean, max(0.0, mean - half), min(1.0, mean + half),
                    sum(e.n for e in estimates))


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties (numpy's rule)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def predict(logprobs: Sequence[float], num_bytes: Sequence[int] | None = None) -> int:
    """acc prediction (num_bytes None) or acc_norm prediction (log-prob per byte)."""
    if num_bytes is None:
        return argmax(logprobs)
    return argmax([lp / max(b, 1) for lp, b in zip(logprobs, num_bytes)])


def accuracy(correct: Iterable[bool]) -> Estimate:
    flags = list(correct)
    return wilson(sum(bool(c) for c in flags), len(flags))
