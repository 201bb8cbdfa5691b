"""Paired statistics over seeds: what the demo's and the comparisons' claims are tested with.

Every model of a comparison is trained on the same seeds (the seed varies the training, not the data or the
frozen tower), so two models are compared seed by seed: the per-seed differences, their mean, a bootstrap
interval of that mean, and an exact two-sided sign test. With 5 seeds the smallest sign-test p-value is
2 / 2**5 = 0.0625: five wins out of five is the strongest evidence five seeds can give, and it is not
significant at 0.05 on its own. The interval says how large the difference is.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Paired:
    """``a - b`` over seeds."""

    differences: list[float]
    mean: float
    low: float  # bootstrap interval of the mean difference (``level``)
    high: float
    wins: int  # seeds where a > b
    losses: int  # seeds where a < b
    sign_p: float  # exact two-sided sign test, ties dropped
    level: float

    def as_dict(self) -> dict:
        return asdict(self)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial sign test of ``wins`` against ``losses`` (ties already dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_interval(values: list[float], level: float = 0.95, draws: int = 10_000, seed: int = 0):
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement)."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), float(x.mean())
    means = np.random.default_rng(seed).choice(x, (draws, len(x))).mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired(a: list[float], b: list[float], level: float = 0.95) -> Paired:
    """Compare per-seed scores ``a`` and ``b`` (the same seeds, in the same order)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired scores need the same non-zero number of seeds, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    low, high = bootstrap_interval(diffs, level)
    return Paired(diffs, statistics.fmean(diffs), low, high, wins, losses, sign_test(wins, losses), level)


def verdict(p: Paired, name_a: str, name_b: str) -> str:
    """One sentence on ``a - b`` that claims no more than the data gives."""
    seeds = len(p.differences)
    span = f"{100 * p.mean:+.1f} points ({100 * p.level:.0f}% bootstrap interval {100 * p.low:+.1f} to {100 * p.high:+.1f})"
    record = f"{p.wins} of {seeds} seeds higher, {p.losses} lower, sign test p = {p.sign_p:.3f}"
    if p.low > 0:
        return f"{name_a} > {name_b} holds: {span}; {record}"
    if p.high < 0:
        return f"{name_a} > {name_b} does not hold, it is the other way: {span}; {record}"
    return f"{name_a} > {name_b} is not shown: {span}; {record}"
