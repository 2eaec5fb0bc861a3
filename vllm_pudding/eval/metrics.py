"""Accuracy metrics of scored multiple-choice examples, with 95% intervals.

acc and acc_norm exactly as lm-evaluation-harness computes them
(`ConfigurableTask.process_results`, multiple_choice, 0.4.x): the prediction is
`np.argmax` (first index on ties) of the summed continuation log-probs; for acc_norm, of
those sums divided by each choice's length in characters, `len(choice)` of the choice
string as the task's `doc_to_choice` gives it: without the leading target-delimiter space
(WinoGrande: the partial contexts, its choices). `normalized_scores` is the one place
this is computed; every consumer (scored examples, router labels, reports) goes through it.

Intervals: Wilson score interval, 95% (z = 1.959964), for one task's accuracy; for an
average over tasks, a normal approximation with the tasks' binomial variances added
(independent samples): se = sqrt(sum_t p_t (1 - p_t) / n_t) / T.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import msgspec
import numpy as np

Z95 = 1.959963984540054
INTERVAL = "95% Wilson score interval (averages over tasks: normal approximation)"
ACC_NORM = ("acc_norm as lm-eval computes it: summed log-prob / the choice's length in "
            "characters (no leading space).")


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


def normalized_scores(logprobs: Sequence[float], num_chars: Sequence[int]) -> np.ndarray:
    """acc_norm's per-choice scores: summed log-prob / choice length in characters.

    numpy float division, as lm-eval's `lls / completion_len` (an empty choice gives
    -inf, or nan for a zero log-prob, and numpy's argmax picks a nan first, as there).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(logprobs, dtype=np.float64) / np.asarray(num_chars, dtype=np.float64)


def predict(logprobs: Sequence[float], num_chars: Sequence[int] | None = None) -> int:
    """acc prediction (num_chars None) or acc_norm prediction (`normalized_scores`);
    `np.argmax`: the first index on ties."""
    if num_chars is None:
        return int(np.argmax(np.asarray(logprobs, dtype=np.float64)))
    return int(np.argmax(normalized_scores(logprobs, num_chars)))


def accuracy(correct: Iterable[bool]) -> Estimate:
    flags = list(correct)
    return wilson(sum(bool(c) for c in flags), len(flags))
