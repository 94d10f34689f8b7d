"""The logit filters on hand-built distributions, against transformers' processors, and the sampler's statistics."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation import logits_process as hf

from modernlm.generation.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    min_p_filter,
    next_token,
    process_logits,
    sample_from_logits,
    top_k_filter,
    top_p_filter,
)

PROBS = torch.tensor([[0.05, 0.5, 0.15, 0.3]])  # sorted by probability: tokens 1, 3, 2, 0
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


# ---- each filter keeps exactly what its definition says ------------------------------------------------------------
@pytest.mark.parametrize(
    "logits, k, expected",
    [
        ([1.0, 5.0, 3.0, 4.0, 2.0], 1, {1}),
        ([1.0, 5.0, 3.0, 4.0, 2.0], 3, {1, 2, 3}),
        ([1.0, 5.0, 3.0, 3.0, 2.0], 2, {1, 2, 3}),  # a tie with the k-th is kept (as in transformers)
        ([1.0, 5.0, 3.0, 4.0, 2.0], 50, {0, 1, 2, 3, 4}),  # k beyond the vocabulary keeps everything
    ],
)
def test_top_k(logits, k, expected):
    assert kept(top_k_filter(torch.tensor([logits]), k)) == expected


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.1, {1}),  # the top token alone already holds 0.5 >= 0.1
        (0.49, {1}),
        (0.6, {1, 3}),  # 0.5 < 0.6 <= 0.5 + 0.3
        (0.79, {1, 3}),
        (0.81, {1, 3, 2}),
        (0.96, {1, 3, 2, 0}),
        (1.0, {0, 1, 2, 3}),
    ],
)
def test_top_p(p, expected):
    assert kept(top_p_filter(LOGITS, p)) == expected


@pytest.mark.parametrize(
    "min_p, expected",
    [
        (0.0, {0, 1, 2, 3}),
        (0.09, {0, 1, 2, 3}),  # threshold 0.045 < 0.05
        (0.2, {1, 3, 2}),  # threshold 0.1
        (0.59, {1, 3}),  # threshold 0.295
        (0.7, {1}),  # threshold 0.35
        (1.0, {1}),
    ],
)
def test_min_p(min_p, expected):
    assert kept(min_p_filter(LOGITS, min_p)) == expected


def test_repetition_penalty_definition():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    seen = torch.tensor([[True, True, False, False]])
    got = apply_repetition_penalty(logits, seen, 2.0)
    torch.testing.assert_close(got, torch.tensor([[1.0, -2.0, 0.5, -3.0]]))  # positive / 2, negative * 2


def test_temperature_comes_before_the_filters():
    """At temperature 2 the distribution flattens, so top-p 0.7 needs more tokens than at temperature 1."""
    at_1 = process_logits(LOGITS, SamplingParams(temperature=1.0, top_p=0.7))
    at_2 = process_logits(LOGITS, SamplingParams(temperature=2.0, top_p=0.7))
    assert kept(at_1) == {1, 3} and kept(at_2) == {1, 3, 2}
    torch.testing.assert_close(at_2[0, 1], LOGITS[0, 1] / 2)


def test_greedy_ignores_filters_and_takes_the_argmax():
    params = SamplingParams(temperature=0.0, top_k=2, top_p=0.1)
    assert next_token(LOGITS, params).tolist() == [1]


# ---- the same tokens as transformers' processors, on random logits -------------------------------------------------
@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda x: top_k_filter(x, 7), hf.TopKLogitsWarper(7)),
        (lambda x: top_p_filter(x, 0.8), hf.TopPLogitsWarper(0.8)),
        (lambda x: top_p_filter(x, 0.05), hf.TopPLogitsWarper(0.05)),
        (lambda x: min_p_filter(x, 0.1), hf.MinPLogitsWarper(0.1)),
        (lambda x: x / 0.7, hf.TemperatureLogitsWarper(0.7)),
    ],
)
def test_filters_match_transformers(ours, theirs):
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(ours(logits), theirs(None, logits.clone()), rtol=0, atol=0)


def test_repetition_penalty_matches_transformers():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 50, generator=g)
    ids = torch.randint(0, 50, (3, 20), generator=g)
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, ids, True)
    expected = hf.RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    torch.testing.assert_close(apply_repetition_penalty(logits, seen, 1.3), expected, rtol=0, atol=0)


# ---- the sampler ---------------------------------------------------------------------------------------------------
def test_seeded_draws_are_reproducible():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(2))
    params = SamplingParams(temperature=0.8, top_k=20)
    draw = lambda seed: next_token(logits, params, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.3, top_p=0.8),
        SamplingParams(temperature=1.0, min_p=0.15),
        SamplingParams(temperature=0.9, top_k=6, top_p=0.9, min_p=0.05),
    ],
    ids=["plain", "top-k", "top-p", "min-p", "all"],
)
def test_empirical_distribution_matches_filtered_softmax(params):
    """20,000 draws at a fixed seed. Tolerance: every frequency within 0.015 of its probability (the standard error
    is at most sqrt(0.25 / 20000) = 0.0035, so this is over 4 standard errors) and a chi-square statistic below the
    0.1% critical value; filtered tokens are never drawn."""
    n = 20_000
    logits = torch.tensor([[2.0, 1.5, 1.2, 0.9, 0.5, 0.0, -0.5, -1.0, -2.0, -3.0]])
    expected = process_logits(logits, params).softmax(-1)[0]  # (V,)
    draws = next_token(logits.expand(n, -1), params, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=logits.shape[-1]).double() / n
    assert torch.all(freq[expected == 0] == 0)
    assert (freq - expected.double()).abs().max() < 0.015
    live = expected > 0
    chi2 = (n * (freq[live] - expected[live]) ** 2 / expected[live]).sum().item()
    dof = int(live.sum()) - 1
    assert chi2 < _chi2_critical_0001(dof), (chi2, dof)


def _chi2_critical_0001(dof: int) -> float:
    """The chi-square value exceeded with probability 0.001 (Wilson-Hilferty approximation; dof >= 1)."""
    z = 3.0902  # the standard normal's 0.999 quantile
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def test_sampler_never_draws_a_zero_probability_token():
    logits = torch.full((5000, 6), float("-inf"))
    logits[:, 2] = 0.0
    logits[:, 4] = -1.0
    draws = sample_from_logits(logits, torch.Generator().manual_seed(3))
    assert set(draws.tolist()) == {2, 4}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.01), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(min_p=-0.1), "min_p"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
    ],
)
def test_bad_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)
