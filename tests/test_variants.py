"""Every block variant from one model: the grid builds and trains, counts its parameters as the formula says, keeps
the KV cache exact; sinusoidal and ALiBi positions against float64 formulas written here; bad combinations refused."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from modernlm import ModelConfig, Transformer, preset
from modernlm.analysis import parameter_counts
from modernlm.config import FFNS, NORM_PLACEMENTS, NORMS, POSITIONS, ConfigError
from modernlm.layers.kv_cache import KVCache
from modernlm.layers.positions import alibi_slopes, sinusoidal_table

SMALL = dict(vocab_size=96, d_model=32, n_layers=2, n_heads=4, ffn_hidden=48, max_seq_len=64)
HEADS = (4, 2, 1)  # MHA, GQA, MQA


def grid() -> list[dict]:
    """positions x placement x ffn x norm in full; heads, biases, tying, shared Q/K and dropout rotate through them."""
    combos = []
    for i, (pos, place, ffn, norm) in enumerate(itertools.product(POSITIONS, NORM_PLACEMENTS, FFNS, NORMS)):
        kv = HEADS[i % 3]
        combos.append(
            dict(
                positions=pos,
                norm_placement=place,
                ffn=ffn,
                norm=norm,
                n_kv_heads=kv,
                shared_qk=kv == 4 and i % 2 == 0,
                qkv_bias=i % 2 == 1,
                out_bias=i % 4 == 1,
                mlp_bias=i % 3 == 0,
                tie_embeddings=i % 5 < 2,
                scale_embeddings=pos == "sinusoidal",
                dropout=0.1 * (i % 2),
            )
        )
    return combos


def build(**fields) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(**{**SMALL, **fields}))


@pytest.mark.parametrize(
    "fields", grid(), ids=lambda f: "-".join(str(f[k]) for k in ("positions", "norm_placement", "ffn", "norm"))
)
def test_grid_builds_trains_and_counts(fields):
    model = build(**fields).train()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 12))
    loss = F.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    counts = parameter_counts(model.config)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    parts = {"attention": "attn.", "ffn": "ffn.", "positions": "pos_embed."}
    for part, marker in parts.items():
        assert counts[part] == sum(p.numel() for n, p in model.named_parameters() if marker in n), part


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("placement", NORM_PLACEMENTS)
def test_cache_and_left_padding_for_every_position_kind(positions, placement):
    model = build(positions=positions, norm_placement=placement, n_kv_heads=2).eval()
    ids = torch.randint(0, SMALL["vocab_size"], (2, 20))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.for_model(model, batch_size=2, max_len=24)
        prefill = model(ids[:, :8], input_pos=torch.arange(8), cache=cache)
        steps = [model(ids[:, t : t + 1], input_pos=torch.tensor([t]), cache=cache) for t in range(8, 20)]
        torch.testing.assert_close(prefill, full[:, :8], atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.cat(steps, 1), full[:, 8:], atol=1e-5, rtol=0)
        # Left padding: a row padded by 5 gives the logits of its real tokens alone (absolute positions count real
        # tokens only; ALiBi and RoPE are relative).
        mask = torch.ones(2, 20, dtype=torch.long)
        mask[1, :5] = 0
        padded = model(ids, attention_mask=mask)
        torch.testing.assert_close(padded[1, 5:], model(ids[1:, 5:])[0], atol=1e-5, rtol=0)


def test_activation_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, SMALL["vocab_size"], (2, 16))
    grads = []
    for recompute in (False, True):
        model = build(activation_checkpointing=recompute, positions="alibi").train()
        F.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5)


def test_shared_qk_scores_are_symmetric():
    model = build(shared_qk=True, positions="none")
    attn = model.blocks[0].attn
    assert attn.k_proj is None
    x = torch.randn(1, 6, SMALL["d_model"])
    q = attn.q_proj(x).view(1, 6, 4, 8).transpose(1, 2)  # (B, H, T, Dh)
    scores = q @ q.transpose(-1, -2)
    torch.testing.assert_close(scores, scores.transpose(-1, -2))


# ---- positions against float64 formulas --------------------------------------------------------------------------
def test_sinusoidal_table_matches_vaswani_formula():
    D, positions = 16, torch.arange(0, 200, 7)
    got = sinusoidal_table(positions, D, torch.float64)
    expected = torch.zeros(len(positions), D, dtype=torch.float64)
    for row, p in enumerate(positions.tolist()):
        for i in range(D // 2):
            angle = p / 10000 ** (2 * i / D)
            expected[row, 2 * i], expected[row, 2 * i + 1] = math.sin(angle), math.cos(angle)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)  # float32 angles up to 200 rad


def test_sinusoidal_model_adds_the_table():
    model = build(positions="sinusoidal", scale_embeddings=True, n_layers=1).eval()
    ids = torch.randint(0, SMALL["vocab_size"], (1, 9))
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    with torch.no_grad():
        model(ids)
    trig = (math.sin, math.cos)  # even dims sine, odd dims cosine, of p / 10000^(2i/D) with i = d // 2
    table = torch.tensor([[trig[d % 2](p / 10000 ** (2 * (d // 2) / 32)) for d in range(32)] for p in range(9)])
    torch.testing.assert_close(seen["x"][0], model.embed.weight[ids[0]] * math.sqrt(32) + table, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_heads", [1, 2, 4, 8, 16, 6, 12, 20])
def test_alibi_slopes_match_the_paper(n_heads):
    def power_of_two(n):  # m_h = 2^(-8h/n), h = 1..n
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]

    if n_heads & (n_heads - 1) == 0:
        expected = power_of_two(n_heads)
    else:  # the nearest smaller power of two, then every other slope of the next one (Press et al.'s code, BLOOM)
        closest = 2 ** int(math.log2(n_heads))
        expected = power_of_two(closest) + power_of_two(2 * closest)[0::2][: n_heads - closest]
    torch.testing.assert_close(alibi_slopes(n_heads).double(), torch.tensor(expected, dtype=torch.float64))
    if n_heads == 8:
        assert alibi_slopes(8).tolist() == [1 / 2**h for h in range(1, 9)]  # the paper's 1/2, 1/4, ..., 1/256


def test_alibi_attention_equals_float64_reference():
    model = build(positions="alibi", n_layers=1, n_kv_heads=4, qkv_bias=True).double().eval()
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    attn = model.blocks[0].attn
    with torch.no_grad():
        mask = model._mask(torch.arange(10), False, None, 10)
        from modernlm.layers.positions import alibi_bias

        got = attn(x, None, alibi_bias(model.pos_embed.slopes, torch.arange(10), torch.arange(10), mask, torch.float64))
        q = attn.q_proj(x).view(2, 10, 4, 8).transpose(1, 2)  # (B, H, T, Dh)
        k = attn.k_proj(x).view(2, 10, 4, 8).transpose(1, 2)
        v = attn.v_proj(x).view(2, 10, 4, 8).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(8)  # (B, H, T, T)
        slopes = torch.tensor([2.0 ** (-8.0 * h / 4) for h in range(1, 5)], dtype=torch.float64)
        i, j = torch.arange(10)[:, None], torch.arange(10)[None, :]
        scores = scores - slopes[:, None, None] * (i - j) + torch.where(j <= i, 0.0, float("-inf"))
        expected = attn.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 10, 32))
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


# ---- presets and bad input ---------------------------------------------------------------------------------------
def test_presets_2017_and_2024_have_the_same_shape():
    old, new = preset("gpt-2017"), preset("llama")
    for name in ("d_model", "n_layers", "n_heads", "vocab_size"):
        assert getattr(old, name) == getattr(new, name)
    assert (old.norm, old.norm_placement, old.positions, old.ffn) == ("layernorm", "post", "sinusoidal", "relu")
    assert old.qkv_bias and old.out_bias and old.mlp_bias and old.n_kv_heads == old.n_heads
    assert (new.norm, new.norm_placement, new.positions, new.ffn) == ("rmsnorm", "pre", "rope", "swiglu")
    with pytest.raises(ConfigError, match="unknown preset 'gpt-2018'.*gpt-2017"):
        preset("gpt-2018")


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(positions="alibi", rope_scaling={"rope_type": "linear", "factor": 2.0}), "ALiBi has no rotary"),
        (dict(positions="learned", rope_scaling={"rope_type": "linear", "factor": 2.0}), "learned table"),
        (dict(shared_qk=True, n_kv_heads=2), "shared_qk needs as many key heads"),
        (dict(positions="sinusoidal", d_model=33, n_heads=3), "d_model=33 is odd"),
        (dict(positions="absolute"), "unknown positions 'absolute'; valid values: rope, alibi, sinusoidal"),
        (dict(norm_placement="sandwich"), "unknown norm_placement 'sandwich'; valid values: pre, post"),
        (dict(attn_dropout=1.0), "attn_dropout must be in"),
        (dict(activation_checkpointing="yes"), "activation_checkpointing must be true or false"),
    ],
)
def test_impossible_variants_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**SMALL, **fields}).validate()


def test_dropout_defaults_and_json_round_trip():
    cfg = ModelConfig(**SMALL, dropout=0.1, attn_dropout=0.0)
    assert (cfg.attn_dropout, cfg.resid_dropout, cfg.embed_dropout) == (0.0, 0.1, 0.1)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    gpt = preset("gpt-2017")
    assert ModelConfig.from_json(gpt.to_json()) == gpt


def test_registries_match_config_names():
    from modernlm.layers.positions import POSITION_KINDS

    assert tuple(POSITION_KINDS) == POSITIONS
