"""Paired per-seed statistics: the sign test is exact, the interval brackets the mean, the verdict claims
only what the interval supports."""

from __future__ import annotations

import math

import pytest

from crosslmm.demo.stats import bootstrap_interval, paired, sign_test, verdict


def test_sign_test_is_the_exact_binomial_tail():
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    assert sign_test(4, 1) == pytest.approx(2 * 6 / 32)
    assert sign_test(0, 0) == 1.0
    assert sign_test(3, 3) == 1.0
    assert sign_test(9, 1) == pytest.approx(2 * (1 + 10) / 1024)
    assert sign_test(1, 9) == sign_test(9, 1)


def test_paired_differences_are_seed_by_seed():
    a, b = [0.9, 0.8, 0.95, 0.7, 0.85], [0.5, 0.6, 0.55, 0.75, 0.4]
    p = paired(a, b)
    assert p.differences == pytest.approx([0.4, 0.2, 0.4, -0.05, 0.45])
    assert p.mean == pytest.approx(0.28)
    assert (p.wins, p.losses) == (4, 1)
    assert p.sign_p == pytest.approx(sign_test(4, 1))
    assert min(p.differences) <= p.low <= p.mean <= p.high <= max(p.differences)
    with pytest.raises(ValueError, match="same non-zero number of seeds"):
        paired([0.1], [0.1, 0.2])


def test_bootstrap_interval_narrows_with_agreeing_seeds():
    wide = bootstrap_interval([-0.3, 0.4, 0.1, -0.2, 0.5])
    narrow = bootstrap_interval([0.19, 0.2, 0.21, 0.2, 0.2])
    assert wide[1] - wide[0] > 10 * (narrow[1] - narrow[0])
    assert bootstrap_interval([0.3]) == (0.3, 0.3)


def test_verdict_says_which_way_the_interval_points():
    assert "holds" in verdict(paired([0.9] * 5, [0.3] * 5), "a", "b")
    assert "other way" in verdict(paired([0.3] * 5, [0.9] * 5), "a", "b")
    mixed = verdict(paired([0.9, 0.2, 0.8, 0.1, 0.5], [0.5] * 5), "a", "b")
    assert "not shown" in mixed and math.isfinite(paired([0.9, 0.2], [0.5, 0.5]).mean)
