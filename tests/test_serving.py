"""The serving engine against the reference: `modernlm.generate` on the same prompt, alone.

Continuous batching (requests joining and leaving a running batch at token boundaries), the prefix cache (hits equal
misses, for RoPE and ALiBi), cancellation, the time limit and the bounded queue. Tiny random models; no server here
(tests/test_api.py has the HTTP side)."""

from __future__ import annotations

import random

import pytest
import torch

import modernlm
from modernlm.serving import Engine, QueueFull, Request
from modernlm.training.bpe import train_bpe

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe([TEXT], 300)


@pytest.fixture(scope="module")
def tiny_model(tokenizer, tiny_decoder):
    """tiny_model(positions="rope", max_seq_len=96): the narrow tiny decoder over the tokenizer's vocabulary."""

    def build(positions: str = "rope", max_seq_len: int = 96):
        return tiny_decoder("narrow", vocab_size=tokenizer.vocab_size, max_seq_len=max_seq_len, positions=positions)

    return build


@pytest.fixture(scope="module", params=["rope", "alibi"])
def model(request, tiny_model):
    return tiny_model(request.param)


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1, 280) for _ in range(rng.randrange(1, 40))] for _ in range(n)]


def reference(model, prompt, max_tokens, **options):
    return modernlm.generate(model, prompt, max_tokens, **options)[0]


def run_together(engine: Engine, requests: list[Request]):
    handles = [engine.submit(r) for r in requests]
    return [h.result(timeout=120) for h in handles]


def test_greedy_alone_equals_generate(model, tokenizer):
    engine = Engine(model, tokenizer, max_batch=4, prefix_blocks=0).start()
    try:
        for prompt in prompts(3):
            ids, text, done = engine.generate(prompt, 12)
            assert ids == reference(model, prompt, 12)
            assert text == tokenizer.decode(ids)
            assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("length", len(prompt), 12)
    finally:
        engine.stop()


def test_nine_requests_batched_equal_each_alone(model, tokenizer):
    """9 requests of different lengths and settings, submitted at once into 4 rows: each joins when a row frees up
    and gets exactly the tokens it gets alone (greedy; seeded sampling draws from its own generator)."""
    engine = Engine(model, tokenizer, max_batch=4, prefix_blocks=0, prefill_chunk=8).start()  # prompts in chunks
    try:
        ps = prompts(9, seed=1)
        settings = [
            dict(temperature=0.0),
            dict(temperature=0.8, top_k=20, seed=3),
            dict(temperature=1.0, top_p=0.9, seed=4),
            dict(temperature=0.7, min_p=0.1, seed=5),
            dict(temperature=0.0, repetition_penalty=1.3),
        ]
        lengths = [3, 17, 8, 25, 1, 12, 30, 5, 9]
        requests = [
            Request(p, n, **settings[i % len(settings)]) for i, (p, n) in enumerate(zip(ps, lengths, strict=True))
        ]
        results = run_together(engine, requests)
        for r, (ids, _, done) in zip(requests, results, strict=True):
            options = {k: getattr(r, k) for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")}
            assert ids == reference(model, r.prompt, r.max_tokens, seed=r.seed, **options)
            assert done.completion_tokens == len(ids) == r.max_tokens
        assert engine.active == 0
    finally:
        engine.stop()


def test_eos_and_stop_strings(tokenizer, tiny_model):
    model = tiny_model()
    engine = Engine(model, tokenizer, max_batch=2, prefix_blocks=0).start()
    try:
        prompt = tokenizer.encode("the quick brown")
        free = reference(model, prompt, 20)
        eos = free[5]  # pretend the sixth token is the end of the sequence
        ids, _, done = engine.generate(prompt, 20, eos=frozenset([eos]))
        assert ids == reference(model, prompt, 20, eos_token_id=eos) and done.finish_reason == "stop"
        full = tokenizer.decode(free)
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        if stop.strip():
            _, text, done = engine.generate(prompt, 20, stop=[stop])
            assert text == full[: full.find(stop)] and done.finish_reason == "stop"
    finally:
        engine.stop()


@pytest.mark.parametrize("positions", ["rope", "alibi"])
def test_prefix_cache_hits_equal_misses(tokenizer, positions, tiny_model):
    """Requests sharing a 40-token system prompt: the second onwards reuse its blocks and still give the tokens of
    an engine with no prefix cache, for RoPE and ALiBi alike."""
    model = tiny_model(positions)
    system = prompts(1, seed=7)[0] * 3
    system = (system + list(range(5, 45)))[:40]
    asks = [system + p[:8] for p in prompts(6, seed=8)]
    plain = Engine(model, tokenizer, max_batch=3, prefix_blocks=0).start()
    cached = Engine(model, tokenizer, max_batch=3, prefix_blocks=64, block=8).start()
    try:
        want = [plain.generate(p, 10)[0] for p in asks]
        got = [cached.generate(p, 10) for p in asks]
        assert [ids for ids, _, _ in got] == want
        assert got[0][2].cached_tokens == 0
        assert all(done.cached_tokens == 40 for _, _, done in got[1:])
        again = cached.generate(asks[0] + want[0], 5)  # the next turn reuses the previous turn's own tokens
        assert again[2].cached_tokens >= 40 + 8
        assert again[0] == reference(model, asks[0] + want[0], 5)
        assert cached.metrics.reused_tokens > 0
    finally:
        plain.stop()
        cached.stop()


def test_prefix_cache_is_bounded(tokenizer, tiny_model):
    model = tiny_model()
    engine = Engine(model, tokenizer, max_batch=2, prefix_blocks=4, block=4).start()
    try:
        for p in prompts(6, seed=9):
            engine.generate(p * 2, 3)
        assert len(engine.prefix) <= 4
    finally:
        engine.stop()


def test_cancel_time_limit_and_queue(tokenizer, tiny_model):
    model = tiny_model(max_seq_len=512)
    engine = Engine(model, tokenizer, max_batch=1, max_queue=2, prefix_blocks=0)  # not started: requests wait
    long = Request([1, 2, 3], 400)
    first = engine.submit(long)
    second = engine.submit(Request([4, 5], 400))
    with pytest.raises(QueueFull):
        engine.submit(Request([6], 3))
    second.cancel()
    engine.start()
    try:
        first.cancel()
        _, _, done = first.result(timeout=60)
        assert done.finish_reason == "cancelled" and done.completion_tokens < 400
        assert second.result(timeout=60)[2].finish_reason == "cancelled"
        _, _, done = engine.generate([1, 2, 3], 400, time_limit=0.0)
        assert done.finish_reason == "time_limit" and done.completion_tokens < 400
        ids, _, done = engine.generate([7, 8], 4)  # still serving
        assert len(ids) == 4 and engine.active == 0
    finally:
        engine.stop()


def test_context_limit_ends_with_length(tokenizer, tiny_model):
    model = tiny_model(max_seq_len=48)
    engine = Engine(model, tokenizer, max_batch=2, prefix_blocks=0).start()
    try:
        prompt = prompts(1, seed=3)[0][:40]
        ids, _, done = engine.generate(prompt, 100)
        assert ids == reference(model, prompt, 100) and done.finish_reason == "length"
        assert len(ids) == engine.room(len(prompt))
        with pytest.raises(ValueError, match="context"):
            engine.submit(Request(list(range(1, 50)), 1))
    finally:
        engine.stop()


@pytest.mark.parametrize("positions", ["rope", "alibi", "learned", "sinusoidal", "none"])
def test_per_row_positions_equal_each_row_alone(tokenizer, positions, tiny_model):
    """The model's forward with `input_pos` (B, T): rows at different lengths, one decode step for all of them,
    give each row's logits of a full recompute."""
    from modernlm.layers.kv_cache import KVCache

    model = tiny_model(positions)
    rows = [[5, 6, 7, 8, 9], [10, 11, 12], [3, 4, 5, 6, 7, 8, 9, 10]]
    cache = KVCache.for_model(model, len(rows), 64)
    with torch.no_grad():
        for b, p in enumerate(rows):
            model(torch.tensor([p]), input_pos=torch.arange(len(p)), cache=cache.narrow(b, 1, 32))
        step = torch.tensor([[20], [21], [22]])  # (B, 1)
        pos = torch.tensor([[len(p)] for p in rows])  # (B, 1)
        logits = model(step, input_pos=pos, cache=cache.narrow(0, 3, 32), last_only=True)[:, -1]
        for b, p in enumerate(rows):
            full = model(torch.tensor([[*p, 20 + b]]))[0, -1]
            torch.testing.assert_close(logits[b], full, atol=1e-5, rtol=1e-5)


def test_smollm2_batched_equals_generate():
    """The real model (the embedded SmolLM2-135M-Instruct): two chat prompts decoded together, greedy, each equal to
    generate alone."""
    model, tokenizer = modernlm.load_model(), modernlm.load_tokenizer()
    asks = ["Why is the sky blue?", "Say hello in French, then in German, then in Spanish."]
    ids = [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": a}])) for a in asks]
    engine = Engine(model, tokenizer, max_batch=2, context=128, prefix_blocks=0).start()
    try:
        eos = frozenset([tokenizer.eos_token_id])
        handles = [engine.submit(Request(p, 6 + 4 * i, eos=eos)) for i, p in enumerate(ids)]
        for i, (p, h) in enumerate(zip(ids, handles, strict=True)):
            got, text, _ = h.result(timeout=120)
            want = modernlm.generate(model, p, 6 + 4 * i, temperature=0.0, eos_token_id=tokenizer.eos_token_id)
            assert got == want[0]
            assert text == tokenizer.decode([t for t in got if t != tokenizer.eos_token_id])
    finally:
        engine.stop()


def test_text_held_for_a_stop_string_is_released_at_the_end(tokenizer, tiny_model):
    """A stop string that never completes: the text held back while it might (its first characters at the end of the
    text) comes out when the sequence ends, at EOS or at max_tokens."""
    model = tiny_model()
    engine = Engine(model, tokenizer, max_batch=2, prefix_blocks=0).start()
    try:
        prompt = tokenizer.encode("the lazy")
        free = reference(model, prompt, 12)
        full = tokenizer.decode(free)
        stop = full[-1] + "\u2603"  # starts with the last character, never completes
        _, text, done = engine.generate(prompt, 12, stop=[stop])
        assert text == full and done.finish_reason == "length"
        k = next(k for k in range(3, len(free)) if free[k] not in free[:k])  # a token first seen at k: the EOS
        want = tokenizer.decode(free[:k])
        _, text, done = engine.generate(prompt, 12, stop=[want[-1] + "\u2603"], eos=frozenset([free[k]]))
        assert text == want and done.finish_reason == "stop"
    finally:
        engine.stop()


@pytest.mark.parametrize("positions", ["rope", "alibi"])
def test_prefix_cache_and_batching_together(tokenizer, positions, tiny_model):
    """Requests sharing a prefix, submitted at once into fewer rows than requests, with the prefix cache on: blocks
    stored by one request are loaded by the next while others decode; every one equals generate alone."""
    model = tiny_model(positions)
    system = [(7 * i) % 250 + 3 for i in range(33)]
    asks = [system + p[:6] for p in prompts(7, seed=11)]
    engine = Engine(model, tokenizer, max_batch=3, prefix_blocks=32, block=8, prefill_chunk=5).start()
    try:
        results = run_together(engine, [Request(p, 6 + i) for i, p in enumerate(asks)])
        for i, (p, (ids, _, _)) in enumerate(zip(asks, results, strict=True)):
            assert ids == reference(model, p, 6 + i)
        assert sum(done.cached_tokens for _, _, done in results) >= 32 * 3
    finally:
        engine.stop()


def test_serve_without_its_extra_says_how_to_install(monkeypatch, capsys):
    import sys

    from modernlm.cli.__main__ import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'modernlm[serve]'" in err and "Traceback" not in err


def test_request_bodies_fuzzed_give_only_api_errors():
    """Any JSON value as a chat or completion body: the checks accept it or raise APIError (a 400 with the field
    named), never another exception (which would be a 500)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from modernlm.serving import params as P

    scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6),
                          inner, max_size=4), max_leaves=12)  # fmt: skip
    names = st.sampled_from(sorted(P.CHAT_FIELDS | P.COMPLETION_FIELDS | {"tools", "bogus"}))
    message = st.fixed_dictionaries({"role": st.sampled_from([*P.ROLES, "tool", 3]), "content": values})
    bodies = st.dictionaries(names, values, max_size=6) | st.fixed_dictionaries(
        {"messages": st.lists(message, max_size=3), "prompt": values, "stop": values, "stream_options": values}
    )

    @settings(max_examples=300, deadline=None)
    @given(bodies | values, st.booleans())
    def check(body, chat):
        try:
            P.check_fields(body, P.CHAT_FIELDS | P.COMPLETION_FIELDS)
            P.sampling(body, 1000, chat)
            P.messages(body) if chat else P.prompts(body, 100)
        except P.APIError as e:
            assert e.status == 400 and e.message

    check()


def test_a_request_stopped_mid_prefill_leaves_only_written_blocks(tokenizer, tiny_model):
    """A request whose time runs out between prefill chunks keeps the blocks it did write, and only those: the next
    request with that prompt reuses them and still gets generate's tokens."""
    model = tiny_model()
    engine = Engine(model, tokenizer, max_batch=2, prefix_blocks=32, block=8, prefill_chunk=8).start()
    try:
        prompt = [(5 * i) % 250 + 3 for i in range(40)]
        ids, _, done = engine.generate(prompt, 5, time_limit=0.0)
        assert done.finish_reason == "time_limit" and ids == []
        assert 0 < len(engine.prefix) < 5  # one chunk written before the limit was seen, not the whole prompt
        ids, _, done = engine.generate(prompt, 5)
        assert done.cached_tokens > 0 and ids == reference(model, prompt, 5)
    finally:
        engine.stop()
