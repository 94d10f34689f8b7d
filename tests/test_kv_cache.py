"""The KV cache's storage: sized by use (equal to the full cache's outputs), kept in bf16 or rounded to int8 with one
scale per head and token (attention against float64 on the same rounded keys and values), across generate and
Session; bytes by kind."""

from __future__ import annotations

import math

import pytest
import torch

from modernlm import Transformer, preset
from modernlm.generation import Session, generate
from modernlm.layers.kv_cache import Int8KVCache, KVCache, new_cache, round_int8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = preset("llama-tiny", vocab_size=97, max_seq_len=96)
    return Transformer(cfg).eval()


def test_int8_rounding_against_float64():
    x = torch.randn(2, 3, 5, 64, dtype=torch.float64) * torch.logspace(-3, 2, 5, dtype=torch.float64)[:, None]
    q, scale = round_int8(x)
    assert q.dtype == torch.int8 and scale.shape == (2, 3, 5, 1) and scale.dtype == torch.float16
    s = scale.double()
    assert torch.equal(q.abs().amax(-1, keepdim=True), torch.full_like(s, 127, dtype=torch.int8)) or bool(
        (q.abs().amax(-1) >= 126).all()
    )  # the largest entry of each vector maps to about 127 (the scale itself is rounded to float16)
    assert bool(((q.double() * s - x).abs() <= s / 2 + 1e-12 + x.abs().amax(-1, keepdim=True) * 2**-10).all())
    zero_q, zero_s = round_int8(torch.zeros(1, 4))
    assert not zero_q.any() and not zero_s.any()


def test_int8_attention_equals_float64_on_the_rounded_keys_and_values(model):
    ids = torch.randint(0, 97, (2, 20))
    cache = new_cache(model, 2, 32, "int8")
    assert isinstance(cache, Int8KVCache)
    captured = {}
    attn = model.blocks[1].attn
    hook = attn.register_forward_hook(lambda m, args, out: captured.update(x=args[0], rope=args[1], out=out))
    with torch.no_grad():
        model(ids, input_pos=torch.arange(20), cache=cache)
    hook.remove()
    x, (cos, sin) = captured["x"].double(), captured["rope"][:2]
    cfg = model.config
    B, T, H, K, Dh = 2, 20, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    q = (x @ attn.q_proj.weight.double().T).view(B, T, H, Dh)
    cos, sin = cos.double()[:, None], sin.double()[:, None]
    half = torch.cat((-q[..., Dh // 2 :], q[..., : Dh // 2]), -1)
    q = (q * cos + half * sin).transpose(1, 2)  # (B, H, T, Dh)
    k = cache.k[1, :, :, :T].double() * cache.k_scale[1, :, :, :T].double()  # the stored, rounded keys (B, K, T, Dh)
    v = cache.v[1, :, :, :T].double() * cache.v_scale[1, :, :, :T].double()
    k, v = k.repeat_interleave(H // K, 1), v.repeat_interleave(H // K, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(Dh) + torch.full((T, T), float("-inf")).triu(1).double()
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * Dh) @ attn.o_proj.weight.double().T
    torch.testing.assert_close(captured["out"].double(), y, rtol=1e-4, atol=1e-5)


def test_sized_by_use_equals_the_full_cache(model):
    ids = torch.randint(0, 97, (1, 12))
    outputs = []
    for size in (12 + 8, model.config.max_seq_len):
        cache = KVCache.for_model(model, 1, size)
        with torch.no_grad():
            logits = [model(ids, input_pos=torch.arange(12), cache=cache, last_only=True)]
            for t in range(8):
                nxt = logits[-1].argmax(-1)  # (1, 1)
                logits.append(model(nxt, input_pos=torch.tensor([12 + t]), cache=cache, last_only=True))
        outputs.append(torch.cat(logits, 1))
    # the same tokens, and logits equal up to float32 summation order (masked slots add exact zeros, in other blocks)
    assert torch.equal(outputs[0].argmax(-1), outputs[1].argmax(-1))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["bfloat16", "int8"])
def test_generate_with_a_smaller_cache_follows_the_float_one(model, kind):
    prompts = [torch.randint(0, 97, (n,)).tolist() for n in (7, 13)]
    full = generate(model, prompts, 16)
    small = generate(model, prompts, 16, kv_cache=kind)
    agree = sum(a == b for x, y in zip(full, small, strict=True) for a, b in zip(x, y, strict=True))
    assert agree >= 0.75 * 32, (full, small)  # the rounded cache may split at a near-tie, then drift
    assert generate(model, prompts, 16, kv_cache="float32") == full


def test_session_keeps_an_int8_cache_across_turns(model):
    session = Session(model, grow=8, kv_cache="int8")
    first = torch.randint(0, 97, (6,)).tolist()
    a = session.generate(first, 5)
    second = first + a + torch.randint(0, 97, (9,)).tolist()  # grows past 8: the scales are copied too
    b = session.generate(second, 5)
    assert session.stats.reused_tokens > 0 and isinstance(session.cache, Int8KVCache)
    assert b == generate(model, second, 5, kv_cache="int8")[0]


def test_bytes_by_kind(model):
    cfg = model.config
    sizes = {kind: new_cache(model, 2, 64, kind).nbytes() for kind in ("float32", "bfloat16", "int8")}
    per = 2 * cfg.n_layers * 2 * cfg.n_kv_heads * 64  # keys and values, layers, rows, heads, positions
    assert sizes["float32"] == per * cfg.head_dim * 4 and sizes["bfloat16"] == per * cfg.head_dim * 2
    assert sizes["int8"] == per * (cfg.head_dim + 2)


def test_unknown_kinds_are_refused(model):
    with pytest.raises(ValueError, match="unknown KV cache kind 'int3'"):
        generate(model, [1, 2, 3], 4, kv_cache="int3")


def test_the_engine_with_an_int8_cache_equals_generate_with_one():
    from modernlm.serving import Engine
    from modernlm.training.bpe import train_bpe

    tokenizer = train_bpe(["the quick brown fox jumps over the lazy dog. " * 20], 300)
    torch.manual_seed(0)
    model = Transformer(preset("llama-tiny", vocab_size=tokenizer.vocab_size, max_seq_len=96)).eval()
    plain = Engine(model, tokenizer, max_batch=3, prefix_blocks=0, kv_cache="int8").start()
    cached = Engine(model, tokenizer, max_batch=3, prefix_blocks=16, block=4, kv_cache="int8").start()
    try:
        shared = torch.randint(0, 280, (12,)).tolist()
        asks = [shared + torch.randint(0, 280, (n,)).tolist() for n in (3, 5, 7)]
        want = [generate(model, p, 8, kv_cache="int8")[0] for p in asks]
        assert [plain.generate(p, 8)[0] for p in asks] == want
        got = [cached.generate(p, 8) for p in asks]
        assert [ids for ids, _, _ in got] == want and got[2][2].cached_tokens == 12  # int8 blocks reused, scales too
    finally:
        plain.stop()
        cached.stop()


def test_cli_kv_cache_flag(capsys):
    from modernlm.cli.__main__ import main

    args = ["generate", "--prompt", "The capital of France is", "-n", "6", "--ignore-eos", "-q", "-t", "0"]
    assert main([*args, "--kv-cache", "int8"]) == 0
    int8 = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out.split()[:2] == int8.split()[:2]  # SmolLM2's first words survive the rounding


def test_int8_with_a_sliding_window_keeps_every_position_and_follows_the_float_cache():
    torch.manual_seed(0)
    windowed = Transformer(preset("llama-tiny", vocab_size=97, max_seq_len=96, sliding_window=8)).eval()
    prompt = torch.randint(0, 97, (20,)).tolist()  # past the window
    assert isinstance(new_cache(windowed, 1, 40, "int8"), Int8KVCache)
    full, small = generate(windowed, prompt, 12)[0], generate(windowed, prompt, 12, kv_cache="int8")[0]
    assert sum(a == b for a, b in zip(full, small, strict=True)) >= 9, (full, small)
