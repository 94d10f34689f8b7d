"""The model on its own: the KV cache against full recompute, causality, RoPE's relativity, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from modernlm import ModelConfig, preset
from modernlm.config import ConfigError
from modernlm.layers.kv_cache import KVCache
from modernlm.layers.rope import apply_rope, inverse_frequencies, rope_cos_sin


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_cached_decoding_equals_full_recompute(kv_heads, tiny_decoder):
    model = tiny_decoder(n_kv_heads=kv_heads)
    ids = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        full = model(ids)  # (B, T, V)
        cache = KVCache.for_model(model, batch_size=2, max_len=32)
        prefill = model(ids[:, :10], input_pos=torch.arange(10), cache=cache)
        steps = [model(ids[:, t : t + 1], input_pos=torch.tensor([t]), cache=cache) for t in range(10, 24)]
    torch.testing.assert_close(prefill, full[:, :10], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 10:], atol=1e-5, rtol=0)


def test_last_only_and_chunked_prefill(tiny_decoder):
    model = tiny_decoder()
    ids = torch.randint(0, 512, (1, 20))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.for_model(model, 1, 20)
        model(ids[:, :8], input_pos=torch.arange(8), cache=cache)
        last = model(ids[:, 8:], input_pos=torch.arange(8, 20), cache=cache, last_only=True)
    assert last.shape == (1, 1, 512)
    torch.testing.assert_close(last[:, 0], full[:, -1], atol=1e-5, rtol=0)


def test_causal_future_tokens_do_not_change_past_logits(tiny_decoder):
    model = tiny_decoder()
    a = torch.randint(0, 512, (1, 16))
    b = a.clone()
    b[0, 9:] = torch.randint(0, 512, (7,))
    with torch.no_grad():
        la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :9], lb[:, :9], atol=1e-6, rtol=0)
    assert (la[:, 9:] - lb[:, 9:]).abs().max() > 1e-3


def test_bidirectional_model_sees_the_whole_sequence(tiny_decoder):
    """causal=False: without positions, attention over every token is permutation-equivariant (a causal mask breaks
    that); a padded row equals its sequence alone; a cached prefill equals the plain forward; Llama and GPT-2 exports
    refuse it."""
    model = tiny_decoder(causal=False, positions="none")
    ids = torch.randint(0, 512, (1, 12))
    perm = torch.randperm(12)
    with torch.no_grad():
        out = model(ids)
        torch.testing.assert_close(model(ids[:, perm]), out[:, perm], atol=1e-5, rtol=0)
        causal = tiny_decoder(positions="none")
        assert (causal(ids[:, perm]) - causal(ids)[:, perm]).abs().max() > 1e-3
        changed = ids.clone()
        changed[0, -1] = (ids[0, -1] + 1) % 512
        assert (model(changed)[:, 0] - out[:, 0]).abs().max() > 1e-4  # the first token sees the last
    for positions in ("rope", "alibi"):
        model = tiny_decoder(causal=False, positions=positions)
        with torch.no_grad():
            alone = model(ids[:, :9])
            padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids[:, :9]], dim=1)  # left padding
            mask = torch.tensor([[0] * 3 + [1] * 9])
            torch.testing.assert_close(model(padded, attention_mask=mask)[:, 3:], alone, atol=1e-5, rtol=0)
            cache = KVCache.for_model(model, batch_size=1, max_len=16)
            cached = model(ids, input_pos=torch.arange(12), cache=cache)
            torch.testing.assert_close(cached, model(ids), atol=1e-5, rtol=0)
    from modernlm.checkpoints.hf import CheckpointError, config_to_hf

    with pytest.raises(CheckpointError, match="causal=False"):
        config_to_hf(preset("llama-tiny", causal=False), torch.float32)


def test_rope_frequencies_match_formula():
    inv_freq, factor = inverse_frequencies(64, 10000.0, None)
    expected = torch.tensor([10000.0 ** (-2 * i / 64) for i in range(32)], dtype=torch.float64)
    torch.testing.assert_close(inv_freq.double(), expected, atol=1e-7, rtol=1e-6)
    assert factor == 1.0


def test_rope_scores_depend_only_on_offset():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 64, dtype=torch.float64), torch.randn(1, 1, 1, 64, dtype=torch.float64)
    inv_freq, _ = inverse_frequencies(64, 10000.0, None)

    def score(m: int, n: int) -> float:
        cos_m, sin_m = rope_cos_sin(torch.tensor([m]), inv_freq.double(), 1.0, torch.float64)
        cos_n, sin_n = rope_cos_sin(torch.tensor([n]), inv_freq.double(), 1.0, torch.float64)
        return float((apply_rope(q, cos_m, sin_m) * apply_rope(k, cos_n, sin_n)).sum())

    for offset in (0, 3, 50):
        scores = [score(m + offset, m) for m in (0, 7, 100, 1000)]
        assert max(scores) - min(scores) < 1e-9, scores
    # a rotation keeps the norm: RoPE never changes |q|
    cos, sin = rope_cos_sin(torch.tensor([123]), inv_freq.double(), 1.0, torch.float64)
    assert math.isclose(apply_rope(q, cos, sin).norm().item(), q.norm().item(), rel_tol=1e-12)


def test_rope_rotates_pairs_by_position_times_frequency():
    """Dimension i pairs with i + Dh/2 and turns by the angle pos * theta_i (float64 reference)."""
    x = torch.zeros(1, 1, 1, 8, dtype=torch.float64)
    x[..., 1] = 1.0  # the unit vector of pair 1: (x1, x5)
    inv_freq, _ = inverse_frequencies(8, 10000.0, None)
    cos, sin = rope_cos_sin(torch.tensor([5]), inv_freq.double(), 1.0, torch.float64)
    out = apply_rope(x, cos, sin)[0, 0, 0]
    angle = 5 * 10000.0 ** (-2 / 8)
    assert math.isclose(out[1].item(), math.cos(angle), abs_tol=1e-6)
    assert math.isclose(out[5].item(), math.sin(angle), abs_tol=1e-6)


def test_rope_backward_is_the_derivative():
    """The hand-written backward (the inverse rotation) against finite differences (float64), on the (B, T, H, Dh)
    layout attention uses and on arbitrary tables, and against autograd of the textbook rotate_half form."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)  # (B, T, H, Dh)
    cos, sin = torch.randn(5, 1, 8, dtype=torch.float64), torch.randn(5, 1, 8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: apply_rope(x, cos, sin), (x,))
    inv_freq, _ = inverse_frequencies(8, 10000.0, None)
    cos, sin = rope_cos_sin(torch.arange(5), inv_freq.double(), 1.0, torch.float64)
    xt = x.detach().transpose(1, 2).requires_grad_()  # (B, H, T, Dh), a strided view
    textbook = xt * cos + torch.cat((-xt[..., 4:], xt[..., :4]), -1) * sin
    grad = torch.randn_like(textbook)
    expected = torch.autograd.grad(textbook, xt, grad)[0]
    ours = apply_rope(xt, cos, sin)
    torch.testing.assert_close(ours, textbook, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.autograd.grad(ours, xt, grad)[0], expected, atol=1e-12, rtol=0)


def test_gqa_shares_kv_heads(tiny_decoder):
    model = tiny_decoder(n_kv_heads=1)
    attn = model.blocks[0].attn
    assert attn.k_proj.weight.shape == (16, 64) and attn.q_proj.weight.shape == (64, 64)


def test_swiglu_hidden_width_rule():
    assert ModelConfig(d_model=4096, ffn_multiple_of=256).ffn_hidden == 11008  # Llama-7B
    assert ModelConfig(d_model=512, ffn="gelu").ffn_hidden == 2048


# ---- config ----------------------------------------------------------------------------------------------------
def test_config_json_round_trip(tmp_path):
    cfg = preset("llama-tiny", rope_scaling={"type": "linear", "factor": 2.0}, qkv_bias=True)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "c.json")
    assert ModelConfig.from_json(tmp_path / "c.json") == cfg


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(n_heads=6, n_kv_heads=4), "not divisible by n_kv_heads=4"),
        (dict(head_dim=15), "head_dim=15 is odd"),
        (dict(norm="groupnorm"), "unknown norm 'groupnorm'; valid values: rmsnorm, layernorm"),
        (dict(ffn="swish"), "unknown ffn 'swish'"),
        (dict(n_layers=0), "n_layers must be a positive integer"),
        (dict(dropout=1.5), "dropout must be in"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "needs the key"),
        (dict(rope_scaling={"rope_type": "magic"}), "unknown rope_scaling.rope_type 'magic'"),
    ],
)
def test_impossible_configs_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**dict(d_model=64, n_heads=4), **fields}).validate()


def test_unknown_config_field():
    with pytest.raises(ConfigError, match="unknown ModelConfig field"):
        ModelConfig.from_dict({"d_model": 64, "n_head": 4})


def test_registries_match_config_names():
    from modernlm.config import FFNS, NORMS
    from modernlm.layers.ffn import ACTIVATIONS
    from modernlm.layers.norm import NORM_CLASSES

    assert set(NORM_CLASSES) == set(NORMS) and set(ACTIVATIONS) == set(FFNS)


# ---- bad input -------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(tiny_decoder):
    model = tiny_decoder()
    with pytest.raises(ValueError, match="token id 512 is out of range for a vocabulary of 512"):
        model(torch.tensor([[1, 512]]))
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len 256"):
        model(torch.zeros(1, 257, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor of shape"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    cache = KVCache.for_model(model, 1, 8)
    with pytest.raises(ValueError, match="exceeds the KV cache length 8"):
        model(torch.zeros(1, 4, dtype=torch.long), input_pos=torch.arange(6, 10), cache=cache)


def test_native_directory_round_trip(tmp_path, tiny_decoder):
    import modernlm
    from modernlm.checkpoints.native import save_native

    model = tiny_decoder(norm="layernorm", ffn="gelu", tie_embeddings=True)  # not expressible as a Llama checkpoint
    save_native(model, tmp_path)
    ids = torch.randint(0, 512, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(modernlm.load_model(tmp_path)(ids), model(ids), atol=0, rtol=0)


def test_rmsnorm_backward_is_the_derivative():
    """The hand-written backward against finite differences (float64), and against autograd of the plain formula."""
    from modernlm.layers.norm import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(16).double()
    norm.weight.data = torch.randn(16, dtype=torch.float64)
    x = torch.randn(3, 5, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: norm(x), (x, norm.weight))
    x32 = torch.randn(4, 7, 16, requires_grad=True)
    w32 = norm.weight.detach().float().requires_grad_()
    plain = w32 * x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.eps)
    grad = torch.randn_like(plain)
    expected = torch.autograd.grad(plain, (x32, w32), grad)
    norm32 = RMSNorm(16).float()
    norm32.weight.data = w32.detach().clone()
    got = torch.autograd.grad(norm32(x32), (x32, norm32.weight), grad)
    torch.testing.assert_close(norm32(x32), plain, rtol=0, atol=1e-6)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
