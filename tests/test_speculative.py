"""Speculative decoding: greedy output equals plain greedy (n-gram, self-speculative int4 and a separate draft
model; tiny models and the real SmolLM2), the accept/resample rule keeps the target's distribution (a chi-square
test), sampled speculative output has the target's distribution end to end, and bad drafts are refused."""

from __future__ import annotations

import math

import pytest
import torch

import modernlm
from modernlm.generation import generate
from modernlm.generation.speculative import SpecStats, speculative_generate, verify


def chi2_critical(df: int, z: float = 3.09) -> float:
    """The chi-square quantile at normal quantile z (3.09: p = 0.999), by Wilson and Hilferty's approximation."""
    a = 2 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


REPEATS = [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3]  # a prompt whose n-grams recur, so lookups hit


@pytest.mark.parametrize("draft", ["ngram", "int4", "model"])
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_equals_plain_greedy(draft, k, tiny_decoder):
    model = tiny_decoder("wide")
    want = generate(model, REPEATS, 24)[0]
    stats = SpecStats()
    drafter = tiny_decoder("wide", seed=1) if draft == "model" else draft
    got = speculative_generate(model, REPEATS, 24, draft=drafter, num_draft_tokens=k, stats=stats)
    assert got == want
    assert stats.rounds < 24 or draft == "model"  # rounds with more than one token happened
    if draft == "int4":
        assert stats.acceptance > 0.3  # random weights round badly to int4 (see test_quant); real ones better


def test_eos_and_context_limit(tiny_decoder):
    model = tiny_decoder("wide", max_seq_len=40)
    plain = generate(model, REPEATS, 64)[0]
    assert speculative_generate(model, REPEATS, 64, draft="ngram") == plain  # runs up to the context, not past it
    eos = plain[5]
    assert (
        speculative_generate(model, REPEATS, 64, eos_token_id=eos) == generate(model, REPEATS, 64, eos_token_id=eos)[0]
    )


def test_the_rule_keeps_the_target_distribution():
    """Fixed p (3 positions) and q (2 draft positions) over 6 tokens: the first two output tokens must be drawn from
    p_0 x p_1 whatever q proposes (including one-hot, prompt-lookup drafts)."""
    g = torch.Generator().manual_seed(0)
    V, N = 6, 12000
    p = torch.softmax(torch.randn(3, V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(2, V, generator=g) * 1.5, -1)
    for one_hot in (False, True):
        counts = torch.zeros(V, V)
        for _ in range(N):
            if one_hot:
                drafts, qq = [2, 4], None
            else:
                drafts, qq = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(2)], q
            out = verify(p, drafts, qq, g)
            if len(out) < 2:  # rejected at the first position: the next token comes from the next round, whose
                out = out + verify(p[1:], [], None, g)  # target distribution here is p_1 (context-free p)
            counts[out[0], out[1]] += 1
        expected = N * (p[0][:, None] * p[1][None, :])
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < chi2_critical(V * V - 1), (one_hot, chi2)


@pytest.mark.slow
def test_sampled_output_has_the_target_distribution(tiny_decoder):
    """End to end on a model with 8 tokens: the first two sampled tokens, speculative (int4 draft, k = 3) against the
    target's exact joint probabilities."""
    model = tiny_decoder("wide", seed=3, vocab_size=8)
    prompt, N = [1, 2, 3], 1500
    with torch.no_grad():
        p0 = model(torch.tensor([prompt]))[0, -1].softmax(-1)  # (V,)
        joint = torch.stack([p0[a] * model(torch.tensor([prompt + [a]]))[0, -1].softmax(-1) for a in range(8)])
    counts = torch.zeros(8, 8)
    for seed in range(N):
        out = speculative_generate(model, prompt, 2, draft="int4", num_draft_tokens=3, temperature=1.0, seed=seed)
        counts[out[0], out[1]] += 1
    expected = N * joint
    keep = expected >= 5  # the chi-square approximation's rule of thumb; pool the rare cells
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    rest_o, rest_e = float(counts[~keep].sum()), float(expected[~keep].sum())
    chi2 += (rest_o - rest_e) ** 2 / rest_e if rest_e > 0 else 0.0
    assert chi2 < chi2_critical(int(keep.sum()) + (rest_e > 0) - 1)


def test_bad_drafts_are_refused(tiny_decoder):
    model = tiny_decoder("wide")
    with pytest.raises(ValueError, match="vocabulary of 300 tokens and the target 512"):
        speculative_generate(model, [1, 2], 4, draft=tiny_decoder("wide", vocab_size=300))
    with pytest.raises(ValueError, match="unknown draft 'big'"):
        speculative_generate(model, [1, 2], 4, draft="big")
    with pytest.raises(ValueError, match="num_draft_tokens must be an integer >= 1"):
        speculative_generate(model, [1, 2], 4, num_draft_tokens=0)
    from modernlm.quant import quantize

    with pytest.raises(ValueError, match="quantized already"):
        speculative_generate(quantize(tiny_decoder("wide"), "int8"), [1, 2], 4, draft="int4")


@pytest.mark.slow
def test_smollm2_speculative_greedy_equals_plain_greedy(smollm2_gguf):
    tokenizer = modernlm.load_tokenizer(smollm2_gguf)
    model = modernlm.load_model(smollm2_gguf)
    text = "List the days of the week, then list them again in the same order."
    prompt = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": text}]))
    want = generate(model, prompt, 40, temperature=0.0)[0]  # the GGUF's own default samples
    for draft in ("ngram", "int4"):
        assert speculative_generate(model, prompt, 40, draft=draft) == want, draft


def test_cli_speculative(capsys):
    from modernlm.cli.__main__ import main

    assert main(["generate", "-p", "one two three one two three one two", "-n", "6", "--speculative", "ngram"]) == 0
    captured = capsys.readouterr()
    assert "target forwards" in captured.err and captured.out.strip()
    assert main(["generate", "-p", "x", "--speculative", "ngram", "--num-beams", "2"]) == 2


def test_compiled_target_gets_a_compiled_draft(monkeypatch, tiny_decoder):
    """The int4 draft of a target whose decode step is compiled is compiled too (here with a stand-in compiler that
    records its calls and runs eagerly); the output stays plain greedy's."""
    from modernlm.generation.compiled import compile_decode, decode_step

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    model = tiny_decoder("wide")
    want = generate(model, REPEATS, 12)[0]
    compile_decode(model)
    assert speculative_generate(model, REPEATS, 12, draft="int4") == want
    assert decode_step(model).model is model  # the target's own step survived the copy
    assert len(compiled) == 1  # the draft's one-token steps (the target verifies several tokens, eagerly)
