"""Hugging Face directories: our logits against transformers' on random-initialised models, and the way back out."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

import modernlm
from modernlm.checkpoints.hf import CheckpointError

BASE = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)

# name -> (transformers config class, fields). Named after the real models whose features they carry.
CONFIGS = {
    "llama2-mha-untied": (transformers.LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=4)),
    "smollm2-gqa-tied-theta": (
        transformers.LlamaConfig,
        dict(
            hidden_size=96,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=16,
            tie_word_embeddings=True,
            rope_theta=100000.0,
        ),
    ),
    "mqa": (transformers.LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=1)),
    "llama3.1-rope-scaling": (
        transformers.LlamaConfig,
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
    "qwen2-biases-tied": (
        transformers.Qwen2Config,
        dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1000000.0),
    ),
    "qwen2.5-yarn": (
        transformers.Qwen2Config,
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64),
        ),
    ),
    "mistral-gqa": (
        transformers.MistralConfig,
        dict(num_attention_heads=8, num_key_value_heads=2, head_dim=8, sliding_window=None),
    ),
    "llama-linear-scaling-biases": (
        transformers.LlamaConfig,
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            attention_bias=True,
            mlp_bias=True,
            rope_scaling=dict(rope_type="linear", factor=2.0),
        ),
    ),
}


@pytest.fixture(scope="module")
def make_hf_model(hf_reference):
    """make_hf_model(name, directory, seed=0, **save) -> the random transformers model CONFIGS[name] describes (its
    biases and norm gains randomised too), saved in directory with save_pretrained(**save) (None: not saved)."""

    def build(name: str, directory, seed: int = 0, **save):
        config_class, fields = CONFIGS[name]
        config = config_class(**{**BASE, **fields})
        build_model = transformers.AutoModelForCausalLM.from_config
        return hf_reference(build_model, config, directory, seed, attn="eager", jitter=("norm",), **save)[0]

    return build


@pytest.fixture(params=sorted(CONFIGS))
def hf_dir(request, tmp_path, make_hf_model):
    return make_hf_model(request.param, tmp_path, safe_serialization=True), tmp_path


def test_logits_match_transformers(hf_dir, hf_logits):
    hf_model, path = hf_dir
    ours = modernlm.load_model(path)
    ids = torch.randint(0, BASE["vocab_size"], (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = ours(ids)
    torch.testing.assert_close(got, hf_logits(hf_model, ids), atol=1e-4, rtol=0)


def test_padding_mask_matches_transformers(tmp_path, make_hf_model, hf_logits):
    hf_model = make_hf_model("smollm2-gqa-tied-theta", tmp_path)
    ours = modernlm.load_model(tmp_path)
    ids = torch.randint(0, BASE["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0  # left padding on the second row
    with torch.no_grad():
        got = ours(ids, attention_mask=mask)
    # transformers shifts positions past the padding; RoPE is relative, so the real tokens' logits agree.
    torch.testing.assert_close(got[1, 5:], hf_logits(hf_model, ids, attention_mask=mask)[1, 5:], atol=1e-4, rtol=0)
    torch.testing.assert_close(got[1, 5:], ours(ids[1:, 5:])[0], atol=1e-4, rtol=0)


def test_sharded_checkpoint(tmp_path, make_hf_model, hf_logits):
    hf_model = make_hf_model("llama2-mha-untied", tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids = torch.randint(0, BASE["vocab_size"], (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(modernlm.load_model(tmp_path)(ids), hf_logits(hf_model, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["smollm2-gqa-tied-theta", "qwen2-biases-tied", "llama3.1-rope-scaling"])
def test_save_then_transformers_load(name, tmp_path, make_hf_model, hf_logits):
    hf_model = make_hf_model(name, tmp_path / "in")
    ours = modernlm.load_model(tmp_path / "in")
    modernlm.save_model(ours, tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", torch_dtype=torch.float32).eval()
    assert type(reloaded) is type(hf_model)
    ids = torch.randint(0, BASE["vocab_size"], (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(reloaded, ids), ours(ids), atol=1e-4, rtol=0)


def test_bfloat16_load(tmp_path, make_hf_model, hf_logits):
    hf_model = make_hf_model("mqa", tmp_path)
    ours = modernlm.load_model(tmp_path, dtype="bfloat16")
    assert next(ours.parameters()).dtype == torch.bfloat16
    ids = torch.randint(0, BASE["vocab_size"], (1, 16))
    with torch.no_grad():
        got = ours(ids)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, hf_logits(hf_model, ids), atol=0.1, rtol=0.05)


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPTNeoXForCausalLM"]}))
    with pytest.raises(CheckpointError, match="unsupported architecture 'GPTNeoXForCausalLM'.*LlamaForCausalLM"):
        modernlm.load_model(tmp_path)


def test_truncated_safetensors(tmp_path, make_hf_model):
    make_hf_model("mqa", tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        modernlm.load_model(tmp_path)


def test_missing_weights_and_pickle_refused(tmp_path, make_hf_model):
    make_hf_model("mqa", None).config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        modernlm.load_model(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickle"):
        modernlm.load_model(tmp_path)


def test_missing_source():
    with pytest.raises(FileNotFoundError, match="no such file"):
        modernlm.load_model("/nonexistent/model.gguf")
    with pytest.raises(FileNotFoundError, match="unknown model source"):
        modernlm.load_model("not-a-model")
