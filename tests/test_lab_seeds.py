"""The lab's verdict rule over seeds, on hand-built numbers: a paired difference counts when its mean exceeds twice the
standard deviation of the per-seed differences."""

from __future__ import annotations

import math
import statistics

import pytest

from modernlm.lab._seeds import difference, mean_std, over_seeds, pm, rule, seeds


def test_mean_std_is_the_sample_statistics():
    values = [2.0, 2.5, 4.0]
    assert mean_std(values) == pytest.approx((statistics.mean(values), statistics.stdev(values)))
    assert mean_std([3.0]) == (3.0, 0.0)
    assert all(math.isnan(x) for x in mean_std([1.0, math.nan]))
    with pytest.raises(ValueError):
        mean_std([])


def test_a_consistent_gap_counts_and_a_noisy_one_does_not():
    # per-seed differences 0.10, 0.12, 0.08: mean 0.10, std 0.02 -> 0.10 > 0.04, counts
    d = difference([2.10, 2.22, 2.18], [2.00, 2.10, 2.10])
    assert d.mean == pytest.approx(0.10) and d.std == pytest.approx(0.02) and d.counts and d.sign == 1
    # differences 0.10, -0.05, 0.04: mean 0.03, std ~0.076 -> within noise
    d = difference([2.10, 1.95, 2.04], [2.0, 2.0, 2.0])
    assert d.mean == pytest.approx(0.03) and not d.counts and d.sign == 0
    # the sign follows a - b
    assert difference([1.0, 1.1, 1.2], [2.0, 2.1, 2.2]).sign == -1


def test_the_rule_is_strict_at_exactly_twice_the_spread():
    # differences 1, 2, 3: mean 2, std 1 -> |mean| = 2 std exactly, which does not exceed it
    d = difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert (d.mean, d.std) == pytest.approx((2.0, 1.0)) and not d.counts
    # differences 1.9, 2, 2.1: std 0.1 -> counts
    assert difference([1.9, 2.0, 2.1], [0.0, 0.0, 0.0]).counts


def test_one_seed_never_counts_and_a_diverged_run_is_not_a_difference():
    assert not difference([3.0], [1.0]).counts  # no spread can be measured from one run
    d = difference([math.nan, 2.0], [1.0, 1.0])
    assert math.isnan(d.mean) and not d.counts and not d.negligible(1.0) and "diverged" in d.text()
    with pytest.raises(ValueError):
        difference([1.0, 2.0], [1.0])


def test_negligible_allows_a_real_difference_under_the_tolerance():
    tiny = difference([2.005, 2.006, 2.004], [2.0, 2.0, 2.0])  # +0.005 ± 0.001: real, but tiny
    assert tiny.counts and tiny.negligible(0.02) and not tiny.negligible(0.001)
    big = difference([2.1, 2.11, 2.09], [2.0, 2.0, 2.0])
    assert big.counts and not big.negligible(0.02)
    noisy = difference([2.1, 1.9, 2.05], [2.0, 2.0, 2.0])
    assert not noisy.counts and noisy.negligible(0.02)


def test_seeds_rule_text_and_helpers():
    assert len(seeds(quick=False)) >= 3 and len(seeds(quick=True)) >= 2
    assert "3 seeds" in rule(3) and "twice their standard deviation" in rule(3)
    assert over_seeds(lambda s: {"a": s, "b": 2 * s}, [0, 1, 2]) == {"a": [0, 1, 2], "b": [0, 2, 4]}
    assert pm([1.0, 3.0]) == "2.000 ± 1.414"
    assert difference([2.1, 2.2], [2.0, 2.0]).text().startswith("+0.150 ± 0.071 nats")
