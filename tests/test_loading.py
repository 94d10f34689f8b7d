"""The one loader: `modernlm.load` resolves a source once for the model and its tokenizer; `load_config` reads a
configuration without reading any weights."""

from __future__ import annotations

import pytest
import torch

import modernlm
from modernlm import loading
from modernlm.checkpoints import gguf as gguf_module
from modernlm.config import ConfigError, preset


def test_load_resolves_once_and_equals_the_two_separate_loads(monkeypatch):
    calls = {"resolve": 0, "converted": 0}
    resolve, converted = loading.resolve, loading.gguf_cache.converted

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(loading, "resolve", counting("resolve", resolve))
    monkeypatch.setattr(loading.gguf_cache, "converted", counting("converted", converted))
    model, tok = modernlm.load()
    assert calls == {"resolve": 1, "converted": 1}
    monkeypatch.undo()
    text = "The capital of France is"
    assert tok.encode(text) == modernlm.load_tokenizer().encode(text)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), modernlm.load_model()(ids), rtol=0, atol=0)


def test_load_can_skip_the_tokenizer_and_checks_arguments_first():
    model, tok = modernlm.load(tokenizer=False)
    assert tok is None and model.config.n_layers == 30
    with pytest.raises(ValueError, match="int3"):
        modernlm.load(quantize="int3")  # refused before anything is read
    with pytest.raises(TypeError, match="source must be"):
        modernlm.load(42)


def test_load_config_of_a_gguf_reads_no_tensor_data(monkeypatch, smollm2_gguf):
    read = []
    monkeypatch.setattr(gguf_module, "_dequantize", lambda tensor, where: read.append(tensor.name))
    config = modernlm.load_config(smollm2_gguf)
    assert read == []  # SmolLM2 has no rope_freqs tensor: nothing but metadata and shapes
    monkeypatch.undo()
    assert config == modernlm.load_model(smollm2_gguf).config


def test_load_config_of_a_directory_needs_no_weights_file(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rope_theta=5000.0, rms_norm_eps=1e-6,
    )  # fmt: skip
    hf.architectures = ["LlamaForCausalLM"]
    hf.save_pretrained(tmp_path)  # config.json only: no model.safetensors
    config = modernlm.load_config(tmp_path)
    assert (config.vocab_size, config.d_model, config.ffn_hidden, config.n_layers) == (96, 64, 160, 3)
    assert (config.n_heads, config.n_kv_heads, config.max_seq_len) == (4, 2, 128)
    assert (config.rope_theta, config.norm_eps) == (5000.0, 1e-6)
    with pytest.raises(ValueError, match="model.safetensors"):
        modernlm.load_model(tmp_path)


def test_load_config_takes_presets_and_config_files(tmp_path):
    assert modernlm.load_config("llama-tiny") == preset("llama-tiny")
    preset("gpt-2017").to_json(tmp_path / "c.json")
    assert modernlm.load_config(tmp_path / "c.json") == preset("gpt-2017")
    with pytest.raises(FileNotFoundError, match="or a preset: .*llama-tiny"):
        modernlm.load_config("no-such-model")
    (tmp_path / "bad.json").write_text('{"d_model": -1}')
    with pytest.raises(ConfigError):
        modernlm.load_config(tmp_path / "bad.json")
