"""The lab's look-inside experiments (issue 29) on the embedded SmolLM2: their quick runs' numbers checked against
what is computed here from the model directly (the quick runs themselves: tests/test_lab.py)."""

from __future__ import annotations

import pytest
import torch

import modernlm


@pytest.fixture(scope="module")
def smollm2():
    return modernlm.load("smollm2-135m-instruct")


def test_induction_heads_scores_are_the_attention_on_the_induction_target(ran, smollm2):
    finding = ran("induction-heads")[0]
    n, batch, numbers = finding.numbers["n"], finding.numbers["batch"], finding.numbers
    assert finding.verdict == "confirmed"
    model, _ = smollm2
    g = torch.Generator().manual_seed(numbers["seeds"][0])
    half = torch.randint(1000, model.config.vocab_size, (batch, n), generator=g)
    with torch.no_grad():
        att = model(torch.cat([half, half], 1), output_attentions=True).attentions
    best = numbers["induction"]
    layer, head = best["layer"], best["head"]
    by_hand = sum(float(att[layer][b, head, n + i, i + 1]) for b in range(batch) for i in range(n)) / (batch * n)
    assert best["scores"][0] == pytest.approx(by_hand, abs=1e-5) and by_hand > 0.5
    prev = numbers["previous_token"]
    by_hand = float(att[prev["layer"]][:, prev["head"]].diagonal(-1, -2, -1).mean())
    assert prev["scores"][0] == pytest.approx(by_hand, abs=1e-5)
    assert all(f > r for f, r in zip(numbers["loss"]["first"], numbers["loss"]["repeat"], strict=True))


def test_logit_lens_ends_at_the_final_prediction_and_rises(ran):
    finding = ran("logit-lens-depth")[0]
    for curve in finding.numbers["agreement"]:
        assert curve[-1] == 1.0 and len(curve) == 31
    thirds = finding.numbers["thirds"]
    assert finding.verdict == "confirmed" and min(thirds["last"]) > max(thirds["first"])


def test_heads_differ_more_than_at_initialisation(ran):
    numbers = ran("heads-differ")[0].numbers
    assert all(t > 2 * i for t, i in zip(numbers["per_prompt"], numbers["per_prompt_initial"], strict=True))
    assert len(numbers["layers"]) == 30 and all(0 <= d <= 1 for d in numbers["layers"])


def test_causal_mask_zero_checks_every_weight_above_the_diagonal(ran):
    finding = ran("causal-mask-zero")[0]
    assert finding.verdict == "confirmed"
    for run in finding.numbers["runs"]:
        T = run["tokens"]
        assert run["checked"] == 30 * 9 * T * (T - 1) // 2 and run["nonzero_above"] == 0 and run["max_above"] == 0.0
