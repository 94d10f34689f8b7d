"""Qwen3, Phi-3, Gemma 2, Gemma 3 and Falcon as configuration over the one Transformer: logits against transformers on
random-initialised small configs (past the sliding window where there is one; uncached, cached, rolling cache), the
way back out (save_model loads in transformers with the same logits), GGUF files written from their weights the way
llama.cpp's converter writes them, the parameter count, and the config values each refuses by name."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import modernlm
from modernlm.analysis import parameter_counts
from modernlm.checkpoints.hf import CheckpointError
from modernlm.config import ConfigError, ModelConfig
from modernlm.layers.kv_cache import KVCache, RollingKVCache

V, WINDOW = 96, 8
BASE = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3, max_position_embeddings=64)
# name -> (transformers config class, fields), named after the real models whose features they carry
CONFIGS = {
    "qwen3": (transformers.Qwen3Config, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                             rope_theta=1e6, tie_word_embeddings=True)),
    "qwen3-window": (transformers.Qwen3Config, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                                    use_sliding_window=True, sliding_window=WINDOW,
                                                    max_window_layers=1)),
    "phi3-window": (transformers.Phi3Config, dict(num_attention_heads=4, num_key_value_heads=2,
                                                  sliding_window=WINDOW, pad_token_id=0, eos_token_id=1,
                                                  bos_token_id=1)),
    "phi3-longrope": (transformers.Phi3Config, dict(num_attention_heads=4, num_key_value_heads=4, pad_token_id=0,
                                                    eos_token_id=1, bos_token_id=1, original_max_position_embeddings=16,
                                                    rope_scaling=dict(rope_type="longrope",
                                                                      short_factor=[1.0 + i / 10 for i in range(8)],
                                                                      long_factor=[2.0 + i / 5 for i in range(8)]))),
    "gemma2": (transformers.Gemma2Config, dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                               sliding_window=WINDOW, query_pre_attn_scalar=20,
                                               attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "gemma3": (transformers.Gemma3TextConfig, dict(num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                                                   sliding_window=WINDOW, query_pre_attn_scalar=32,
                                                   sliding_window_pattern=2, rope_theta=1e6,
                                                   rope_local_base_freq=1e4,
                                                   rope_scaling=dict(rope_type="linear", factor=8.0))),
    "falcon-7b": (transformers.FalconConfig, dict(num_attention_heads=4, multi_query=True, parallel_attn=True,
                                                  bias=False, ffn_hidden_size=96)),
    "falcon-mha-sequential-bias": (transformers.FalconConfig, dict(num_attention_heads=4, multi_query=False,
                                                                   parallel_attn=False, bias=True,
                                                                   tie_word_embeddings=False)),
}  # fmt: skip
WINDOWED = ("qwen3-window", "phi3-window", "gemma2", "gemma3")


def make_hf(name: str, seed: int = 0, **fields):
    config_class, arch_fields = CONFIGS[name]
    torch.manual_seed(seed)
    fields = {**BASE, **arch_fields, **fields}
    if config_class is transformers.FalconConfig:
        fields.pop("intermediate_size")
    config = config_class(**fields)
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # biases and norm gains start at 0 and 1; randomise them so a missed one shows
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or "norm" in pname:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def ids_of(n: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=sorted(CONFIGS))
def pair(request, tmp_path):
    hf = make_hf(request.param)
    hf.save_pretrained(tmp_path / "hf")
    return request.param, hf, modernlm.load_model(tmp_path / "hf"), tmp_path


def test_logits_equal_transformers_uncached_and_cached(pair):
    name, hf, model, _ = pair
    ids = ids_of(40, batch=2)  # five windows long
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf_logits(hf, ids), atol=1e-4, rtol=0)
    want = [hf_logits(hf, ids[:, :20])] + [hf_logits(hf, ids[:, : p + 1])[:, -1:] for p in range(20, 40, 5)]
    caches = [KVCache.for_model(model, 2, 40)]
    if model.config.sliding_window:
        caches.append(RollingKVCache(model.config, 2, 40, torch.float32))
    for cache in caches:
        with torch.no_grad():  # a prefill past the window, then steps
            got = [model(ids[:, :20], input_pos=torch.arange(20), cache=cache)]
            got += [model(ids[:, p : p + 1], input_pos=torch.tensor([p]), cache=cache) for p in range(20, 40)]
        got = [got[0], *got[1::5]]
        torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), atol=1e-4, rtol=0, msg=type(cache).__name__)


def test_config_carries_the_member(pair):
    name, _, model, _ = pair
    cfg = model.config
    if name in WINDOWED:
        assert cfg.sliding_window == WINDOW
    expected = {
        "qwen3": dict(qk_norm=True, head_dim=24, tie_embeddings=True),
        "phi3-longrope": dict(rope_scaling=dict(rope_type="longrope")),
        "gemma2": dict(sandwich_norm=True, scale_embeddings=True, attn_softcap=5.0, logit_softcap=3.0, ffn="geglu",
                       attn_scale=20**-0.5, layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
        "gemma3": dict(qk_norm=True, sandwich_norm=True, attn_softcap=None, local_rope_theta=1e4, rope_theta=1e6),
        "falcon-7b": dict(parallel_block=True, n_kv_heads=1, norm="layernorm", ffn="gelu_erf"),
        "falcon-mha-sequential-bias": dict(parallel_block=False, n_kv_heads=4, qkv_bias=True, mlp_bias=True),
    }.get(name, {})  # fmt: skip
    for field, value in expected.items():
        got = getattr(cfg, field)
        assert (got["rope_type"] == value["rope_type"]) if field == "rope_scaling" else got == value, field
    measured = sum(p.numel() for p in model.parameters())
    assert parameter_counts(cfg)["total"] == measured


def test_save_model_loads_in_transformers_with_the_same_logits(pair):
    name, hf, model, tmp_path = pair
    modernlm.save_model(model, tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(again) is type(hf)
    ids = ids_of(30, batch=2)
    torch.testing.assert_close(hf_logits(again, ids), hf_logits(hf, ids), atol=1e-5, rtol=0)
    torch.testing.assert_close(modernlm.load_model(tmp_path / "out")(ids), model(ids), atol=1e-6, rtol=0)


def test_softcapping_takes_the_explicit_path_only_when_asked():
    from modernlm import Transformer

    plain = ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=4, max_seq_len=32)
    assert Transformer(plain).blocks[0].attn.softcap is None
    torch.manual_seed(0)
    capped = Transformer(ModelConfig(**{**plain.to_dict(), "attn_softcap": 1e9})).eval()  # a cap this high is none
    uncapped = Transformer(plain).eval()
    uncapped.load_state_dict(capped.state_dict())
    ids = ids_of(12, batch=2)
    with torch.no_grad():
        torch.testing.assert_close(capped(ids), uncapped(ids), atol=1e-5, rtol=0)


# ---- refused by name ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, fields, message",
    [
        ("falcon-7b", dict(new_decoder_architecture=True, num_kv_heads=2), "new_decoder_architecture=true"),
        ("falcon-7b", dict(alibi=True), "alibi=true"),
        ("falcon-7b", dict(activation="silu"), "activation 'silu' is not supported"),
        ("gemma2", dict(hidden_activation="silu"), "hidden_activation 'silu' is not supported"),
        ("gemma3", dict(use_bidirectional_attention=True), "use_bidirectional_attention=true"),
        ("phi3-window", dict(partial_rotary_factor=0.75), "partial_rotary_factor=0.75"),
    ],
)
def test_unimplemented_config_values_are_refused_by_name(name, fields, message, tmp_path):
    config = make_hf(name).config.to_dict()
    config.update(fields)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        modernlm.load_config(tmp_path)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(attn_softcap=0.0), "attn_softcap must be > 0"),
        (dict(logit_softcap=-1.0), "logit_softcap must be > 0"),
        (dict(sandwich_norm=True, norm_placement="post"), "sandwich_norm is a pre-norm block"),
        (dict(parallel_block=True, sandwich_norm=True), "cannot both be set"),
        (dict(qk_norm=True, shared_qk=True), "qk_norm normalises queries and keys apart"),
        (dict(local_rope_theta=1e4), "local_rope_theta is the RoPE base of a decoder's sliding-window layers"),
        (dict(family="encoder", causal=False, head="none", qk_norm=True), "qk_norm=True is implemented only for"),
    ],
)
def test_bad_block_options_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**{**dict(vocab_size=V, d_model=32, n_layers=1, n_heads=4, max_seq_len=32), **fields}).validate()


def test_falcon_gqa_cannot_be_saved(tmp_path):
    model = modernlm.Transformer(ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                                             norm="layernorm", ffn="gelu_erf", parallel_block=True, max_seq_len=32))
    with pytest.raises(CheckpointError, match=r"cannot save as FalconForCausalLM: n_kv_heads"):
        modernlm.save_model(model, tmp_path)
