"""GPT-2 checkpoints: our logits against transformers' on random-initialised GPT2LMHeadModels, and the way back out."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import modernlm
from modernlm.checkpoints.hf import CheckpointError
from modernlm.layers.kv_cache import KVCache

VOCAB = 300


@pytest.fixture(scope="module")
def make_gpt2(hf_reference):
    """make_gpt2(directory, seed=0, **fields) -> a random GPT2LMHeadModel (its biases and LayerNorm gains randomised
    too), saved in directory."""

    def build(directory, seed: int = 0, **fields) -> transformers.GPT2LMHeadModel:
        config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=128, **fields)
        return hf_reference(transformers.GPT2LMHeadModel, config, directory, seed, attn="eager", jitter=(".ln_",))[0]

    return build


@pytest.mark.parametrize(
    "fields", [dict(), dict(tie_word_embeddings=False, n_inner=96), dict(activation_function="relu")], ids=str
)
def test_logits_match_transformers(fields, tmp_path, make_gpt2, hf_logits):
    hf_model = make_gpt2(tmp_path, **fields)
    ours = modernlm.load_model(tmp_path)
    assert (ours.config.positions, ours.config.norm, ours.config.tie_embeddings) == (
        "learned",
        "layernorm",
        fields.get("tie_word_embeddings", True),
    )
    ids = torch.randint(0, VOCAB, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours(ids)
    torch.testing.assert_close(got, hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_cached_decoding_and_padding(tmp_path, make_gpt2, hf_logits):
    hf_model = make_gpt2(tmp_path)
    ours = modernlm.load_model(tmp_path)
    ids = torch.randint(0, VOCAB, (1, 30))
    expected = hf_logits(hf_model, ids)
    with torch.no_grad():
        cache = KVCache.for_model(ours, 1, 32)
        ours(ids[:, :10], input_pos=torch.arange(10), cache=cache)
        steps = [ours(ids[:, t : t + 1], input_pos=torch.tensor([t]), cache=cache) for t in range(10, 30)]
    torch.testing.assert_close(torch.cat(steps, 1), expected[:, 10:], atol=1e-4, rtol=0)
    # left padding: transformers given explicit positions that skip the padding
    mask = torch.ones(1, 30, dtype=torch.long)
    mask[0, :4] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        got = ours(ids, attention_mask=mask)
    torch.testing.assert_close(
        got[0, 4:], hf_logits(hf_model, ids, attention_mask=mask, position_ids=position_ids)[0, 4:], atol=1e-4, rtol=0
    )


def test_hub_style_names_without_prefix(tmp_path, make_gpt2, hf_logits):
    """The hub's `gpt2` stores `h.0.attn.c_attn.weight` (no `transformer.`) plus the `attn.bias` mask buffers."""
    hf_model = make_gpt2(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    renamed = {k.removeprefix("transformer."): v for k, v in tensors.items() if k != "lm_head.weight"}
    renamed["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))
    save_file(renamed, tmp_path / "model.safetensors")
    ids = torch.randint(0, VOCAB, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(modernlm.load_model(tmp_path)(ids), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_save_then_transformers_load(tied, tmp_path, make_gpt2, hf_logits):
    make_gpt2(tmp_path / "in", tie_word_embeddings=tied)
    ours = modernlm.load_model(tmp_path / "in")
    modernlm.save_model(ours, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", torch_dtype=torch.float32).eval()
    assert type(reloaded) is transformers.GPT2LMHeadModel
    again = modernlm.load_model(tmp_path / "out")
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(reloaded, ids), ours(ids), atol=1e-4, rtol=0)
        torch.testing.assert_close(again(ids), ours(ids), atol=0, rtol=0)


def test_a_model_built_from_a_gpt2_config_saves_as_gpt2(tmp_path, hf_logits):
    model = modernlm.Transformer(modernlm.preset("gpt2", n_layers=1, d_model=32, n_heads=2, vocab_size=100)).eval()
    modernlm.save_model(model, tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype=torch.float32).eval()
    ids = torch.randint(0, 100, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(reloaded, ids), model(ids), atol=1e-4, rtol=0)


def test_unsupported_gpt2_options_and_unsavable_variants(tmp_path, make_gpt2):
    make_gpt2(tmp_path, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(CheckpointError, match="scale_attn_by_inverse_layer_idx"):
        modernlm.load_model(tmp_path)
    post = modernlm.Transformer(modernlm.preset("gpt-2017", n_layers=1, vocab_size=64, d_model=32, n_heads=2))
    with pytest.raises(CheckpointError, match="norm=.layernorm.*nor as GPT-2: norm_placement='post'.*save_native"):
        modernlm.save_model(post, tmp_path / "out")
