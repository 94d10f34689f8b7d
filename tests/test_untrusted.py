"""Untrusted files get bounded work: a model directory never makes the loader read outside it, sizes a file claims are
checked against the file and the machine before anything is allocated, every load path refuses NaN/Inf weights,
config values are type-checked, JSON nested without end is refused, and chat templates run within limits of time,
output and the numbers they may ask for. Each case is a clear error (a ValueError/OSError subclass naming the file or
template and the fix) and comes quickly."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as Q

import modernlm
from modernlm.checkpoints import hf, limits
from modernlm.tokenizer import TokenizerError
from test_gguf import tiny_metadata, tiny_weights, write_tiny

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture(scope="module")
def chat_model(tiny_chat_dir) -> Path:
    return tiny_chat_dir(TEXT)


def edited(chat_model: Path, dest: Path, **changes) -> Path:
    shutil.copytree(chat_model, dest)
    config = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**config, **changes}))
    return dest


def refused(call, error, *words, seconds: float = 5.0) -> str:
    start = time.perf_counter()
    with pytest.raises(error) as info:
        call()
    assert time.perf_counter() - start < seconds, f"refused, but only after {time.perf_counter() - start:.1f} s"
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    return str(info.value)


# ---- paths a model directory names --------------------------------------------------------------------------------
@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors", 7])
def test_a_shard_index_never_reaches_outside_its_directory(chat_model, tmp_path, monkeypatch, shard):
    directory = tmp_path / "model"
    shutil.copytree(chat_model, directory)
    shutil.copy(directory / "model.safetensors", tmp_path / "outside.safetensors")  # a loadable file out there
    (directory / "model.safetensors").rename(directory / "model-00001-of-00001.safetensors")
    weight_map = {"model.embed_tokens.weight": shard, "lm_head.weight": "model-00001-of-00001.safetensors"}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    opened = []
    real = hf.load_file
    monkeypatch.setattr(hf, "load_file", lambda path: opened.append(str(path)) or real(path))
    refused(lambda: modernlm.load_model(directory), hf.CheckpointError, "model.safetensors.index.json", repr(shard))
    assert opened == [], "a shard was opened before the index was checked"


# ---- sizes a file claims ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes",
    [{"num_hidden_layers": 10**9}, {"vocab_size": 10**12}, {"hidden_size": 2**20, "num_attention_heads": 2**10}],
    ids=["layers", "vocab", "width"],
)
def test_a_config_far_bigger_than_its_weights_is_refused_at_once(chat_model, tmp_path, changes):
    directory = edited(chat_model, tmp_path / "model", **changes)
    for call in (lambda: modernlm.load_config(directory), lambda: modernlm.load(directory)):
        refused(call, hf.CheckpointError, str(directory), "parameters", "does not belong to these weights")


def test_a_gguf_claiming_a_billion_layers_is_refused_on_every_load_path(tmp_path, write_gguf, monkeypatch):
    meta = tiny_metadata("llama") | {"llama.block_count": 10**9}
    path = write_tiny(write_gguf, tmp_path / "huge.gguf", "llama", tiny_weights(seed=1), Q.Q8_0, meta)
    for call in (
        lambda: modernlm.load_config(path),
        lambda: modernlm.load_model(path),
        lambda: modernlm.load_model(path, quantize="gguf"),
        lambda: modernlm.load_model(path, quantize="int8"),
    ):
        refused(call, ValueError, "huge.gguf", "1,000,000,000 layers")


def test_a_model_bigger_than_free_memory_is_refused_before_allocating(chat_model, monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda: 10_000)
    refused(lambda: modernlm.load_model(chat_model), ValueError, "GiB", "bfloat16", "quantize")
    monkeypatch.setattr(limits, "available_memory", lambda: None)  # a system that does not say: no check
    modernlm.load_model(chat_model)


# ---- weights ------------------------------------------------------------------------------------------------------
def test_nan_blocks_in_a_gguf_are_refused_when_kept_quantized_too(tmp_path, monkeypatch):
    """A Q8_0 block whose fp16 scale is NaN: the float load refused it, the kept-blocks load (--quantize gguf)
    skipped the check and generated end-of-text forever."""
    import gguf
    import numpy as np

    monkeypatch.setenv("MODERNLM_GGUF_CACHE", "0")
    writer = gguf.GGUFWriter(str(tmp_path / "nan.gguf"), "llama")
    for key, value in tiny_metadata("llama").items():
        (writer.add_uint32 if isinstance(value, int) else writer.add_float32)(key, value)
    from test_gguf import H, K, permute_like_llama_cpp

    for name, w in tiny_weights(seed=3).items():
        if ".attn_q." in name or ".attn_k." in name:
            w = permute_like_llama_cpp(w, H if ".attn_q." in name else K)
        qtype = Q.Q8_0 if w.ndim == 2 else Q.F32
        data = gguf.quants.quantize(np.asarray(w, dtype=np.float32), qtype)
        if name == "blk.0.ffn_up.weight":
            data = data.copy()
            data[0, 0:2] = np.frombuffer(np.float16(np.nan).tobytes(), dtype=np.uint8)  # the first block's scale
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for quantize in (None, "gguf"):
        refused(lambda q=quantize: modernlm.load_model(tmp_path / "nan.gguf", quantize=q), ValueError, "NaN/Inf",
                "ffn.up_proj")  # fmt: skip


# ---- config values and JSON -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["tie_word_embeddings", "attention_bias", "mlp_bias"])
def test_a_string_is_not_a_bool(chat_model, tmp_path, field):
    directory = edited(chat_model, tmp_path / "model", **{field: "false"})
    refused(lambda: modernlm.load_model(directory), ValueError, field, "true or false", "'false'")


def test_json_nested_without_end_is_one_clear_error(chat_model, tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(chat_model, directory)
    (directory / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(lambda: modernlm.load_model(directory), ValueError, "config.json", "too deeply")
    (directory / "config.json").write_text(json.dumps(json.loads((chat_model / "config.json").read_text())))
    (directory / "tokenizer_config.json").write_text('{"a": ' * 50_000 + "1" + "}" * 50_000)
    refused(lambda: modernlm.load_tokenizer(directory), ValueError, "tokenizer_config.json", "too deeply")
    from modernlm.config import ConfigError, ModelConfig

    refused(lambda: ModelConfig.from_json("{" + '"a": {' * 50_000 + "}" * 50_001), ConfigError, "too deeply")


# ---- chat templates ------------------------------------------------------------------------------------------------
BOMBS = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "loops over a list, calling nothing": "{% set l = range(100000)|list %}{% for a in l %}{% for b in l %}"
    "{% endfor %}{% endfor %}",
    "output": "{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}{% endfor %}",
    "repeated string": "{{ 'a' * 1000000000 }}",
    "repeated list": "{% set x = [1] * 1000000000 %}",
    "filter width": "{{ 'a'|center(1000000000) }}",
    "method width": "{{ 'a'.ljust(1000000000) }}",
    "printf width": "{{ '%999999999d' % 1 }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "power": "{{ 9 ** 9999999 }}",
    "recursion": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "escape": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
}


@pytest.mark.parametrize("template", BOMBS.values(), ids=BOMBS.keys())
def test_a_hostile_chat_template_is_stopped_with_a_clear_error(template, monkeypatch):
    from modernlm import tokenizer as module
    from modernlm.training.bpe import train_bpe

    monkeypatch.setattr(module, "TEMPLATE_SECONDS", 0.5)
    tok = train_bpe([TEXT], 280)
    tok.chat_template = template
    message = refused(lambda: tok.apply_chat_template([{"role": "user", "content": "hi"}]), TokenizerError,
                      "chat template", seconds=3)  # fmt: skip
    assert "fix the template" in message or "refused" in message


def test_an_honest_template_renders_as_before():
    from conftest import CHAT_TEMPLATE
    from modernlm.training.bpe import train_bpe

    tok = train_bpe([TEXT], 280)
    tok.chat_template = CHAT_TEMPLATE + "{{ 'x' * 3 }}{{ (messages|length) * 2 }}{{ '%5d' % 7 }}{{ 2 ** 10 }}"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == (
        "<|endoftext|>user\nhi\n<|endoftext|>assistant\nxxx2    71024"
    )


def test_generate_chat_with_a_looping_template_ends_with_one_line(chat_model, tmp_path, capsys, monkeypatch):
    """The GGUF/directory's own template loops: `generate --chat` stops with exit code 2 and no traceback."""
    from modernlm import tokenizer as module
    from modernlm.cli.__main__ import main

    monkeypatch.setattr(module, "TEMPLATE_SECONDS", 0.5)
    directory = tmp_path / "model"
    shutil.copytree(chat_model, directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["chat_template"] = BOMBS["nested loops"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    code = main(["generate", "-m", str(directory), "--chat", "-p", "hi", "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "ran for over 0.5 s" in err


def test_limits_do_not_refuse_real_models(chat_model, smollm2_gguf):
    """The embedded SmolLM2 and the chat_model model load as before (the bounds are far from any honest file)."""
    config = modernlm.load_config(smollm2_gguf)
    assert limits.min_parameters(config) < 135e6 * 1.1 and modernlm.load_model(chat_model) is not None
    assert torch.isfinite(next(modernlm.load_model(chat_model).parameters())).all()


# ---- vague messages made clear --------------------------------------------------------------------------------------
def test_integer_weights_are_named_not_torchs_copy_wall(chat_model, tmp_path):
    from safetensors.torch import load_file, save_file

    directory = tmp_path / "model"
    shutil.copytree(chat_model, directory)
    weights = load_file(directory / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"].to(torch.int32)
    save_file(weights, directory / "model.safetensors")
    message = refused(lambda: modernlm.load_model(directory), ValueError, "norm.weight holds torch.int32")
    assert "While copying" not in message


def test_a_dataset_column_that_is_not_text_is_named(monkeypatch):
    datasets = pytest.importorskip("datasets")
    from modernlm.training.hf_datasets import hf_documents

    table = datasets.Dataset.from_dict({"text": [[1, 2], [3]], "story": ["once", "upon"]})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: table)
    refused(lambda: hf_documents("chat_model/stories"), ValueError, "column 'text' holds list values", "'story'")
    assert [d.read() for d in hf_documents("chat_model/stories:train:story")] == ["once", "upon"]


def test_a_request_body_nested_without_end_is_a_400_not_a_500(chat_model):
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from modernlm.serving.api import create_app
    from modernlm.serving.engine import Engine

    engine = Engine(*modernlm.load(chat_model), max_batch=2)
    client = TestClient(create_app(engine, "chat_model"), raise_server_exceptions=False)
    answer = client.post("/v1/chat/completions", content='{"messages": ' + "[" * 5000 + "]" * 5000 + "}",
                         headers={"content-type": "application/json"})  # fmt: skip
    assert answer.status_code == 400 and "too deeply" in answer.json()["error"]["message"]


def test_an_adapter_is_checked_like_a_model(chat_model, tmp_path):
    """load_adapter: NaN weights and a config without its fields are named, like a model's."""
    from safetensors.torch import load_file, save_file

    from modernlm.finetune.lora import LoraConfig, apply_lora, load_adapter, save_adapter

    adapter = save_adapter(apply_lora(modernlm.load_model(chat_model), LoraConfig(r=2)), tmp_path / "adapter")
    weights = load_file(adapter / "adapter_model.safetensors")
    name = sorted(weights)[0]
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, adapter / "adapter_model.safetensors")
    refused(lambda: load_adapter(modernlm.load_model(chat_model), adapter), ValueError, "NaN/Inf", name)
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "target_modules": ["q_proj"]}))
    refused(lambda: load_adapter(modernlm.load_model(chat_model), adapter), ValueError, "adapter_config.json", "'r'")


def test_memory_is_checked_where_the_tensors_will_live(monkeypatch):
    """A CUDA device's own free memory bounds what goes there (asked of the driver); no driver: no check."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 10**9))
    refused(lambda: limits.check_memory(2000, "the KV cache", "lower --max-batch", "cuda"), ValueError,
            "the KV cache needs", "lower --max-batch")  # fmt: skip
    limits.check_memory(500, "the KV cache", "lower --max-batch", "cuda")

    def no_driver(device=None):
        raise RuntimeError("no CUDA driver")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_driver)
    assert limits.device_memory("cuda") is None
