"""Property-based fuzzing (hypothesis) of the parsers modernlm owns: whatever the bytes or values, they end in a
valid result or in the project's own error (a ValueError/TypeError subclass with a message), never in another
exception from deep inside Python, torch or a library.

Parsers: ModelConfig / TrainConfig from mappings and CLI overrides (fields.py), HF config.json mapping, GGUF
metadata mapping, chat JSONL lines, safetensors headers (a checkpoint file of arbitrary bytes), text decoding.
"""

from __future__ import annotations

import json
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modernlm.checkpoints.gguf import GGUFError, config_from_gguf
from modernlm.checkpoints.hf import CheckpointError, config_from_hf
from modernlm.config import ConfigError, ModelConfig
from modernlm.fields import FieldError, parse_override
from modernlm.finetune.chat_data import ChatDataError, _conversation
from modernlm.text import TextError, decode_strict, from_user
from modernlm.training.config import TrainConfig

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)
model_fields = st.sampled_from([f for f in ModelConfig.__dataclass_fields__])
train_fields = st.sampled_from([f for f in TrainConfig.__dataclass_fields__])


@FUZZ
@given(st.dictionaries(model_fields | st.text(max_size=8), json_values, max_size=6))
def test_model_config_mapping(data):
    try:
        ModelConfig.from_dict(data, "fuzz.json").validate()
    except ConfigError as e:
        assert str(e)


@FUZZ
@given(st.dictionaries(train_fields | st.text(max_size=8), json_values, max_size=6))
def test_train_config_mapping(data):
    try:
        TrainConfig.from_dict(data, "fuzz.json").validate()
    except ValueError as e:  # FieldError or TrainConfig.validate's own
        assert str(e)


@FUZZ
@given(model_fields, st.text(max_size=20))
def test_model_override_text(name, text):
    try:
        key, value = parse_override(ModelConfig, f"{name}={text}")
        ModelConfig.from_dict({key: value}).validate()
    except FieldError as e:
        assert name in str(e) or "KEY=VALUE" in str(e)


HF_KEYS = ["architectures", "model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"]
HF_KEYS += ["num_key_value_heads", "head_dim", "intermediate_size", "rms_norm_eps", "rope_theta", "rope_scaling"]
HF_KEYS += ["tie_word_embeddings", "max_position_embeddings", "hidden_act", "n_embd", "n_head", "n_layer"]
small_ints = st.integers(-2, 70)


@FUZZ
@given(
    st.fixed_dictionaries(
        {"architectures": st.sampled_from([["LlamaForCausalLM"], ["Qwen2ForCausalLM"], ["GPT2LMHeadModel"]])},
        optional={k: small_ints | json_values for k in HF_KEYS[1:]},
    )
)
def test_hf_config_mapping(hf):
    try:
        config_from_hf(hf, "fuzz/config.json")
    except (CheckpointError, ConfigError) as e:
        assert str(e)
    except KeyError:
        pass  # a missing required field: load_hf turns it into "lacks the field" (tested in test_bad_inputs)


GGUF_KEYS = ["embedding_length", "attention.head_count", "attention.head_count_kv", "block_count"]
GGUF_KEYS += ["feed_forward_length", "context_length", "rope.freq_base", "attention.layer_norm_rms_epsilon"]
GGUF_KEYS += ["attention.key_length", "rope.dimension_count", "rope.scaling.type", "rope.scaling.factor"]


@FUZZ
@given(
    st.dictionaries(st.sampled_from(GGUF_KEYS), small_ints | json_scalars, max_size=len(GGUF_KEYS)),
    st.integers(1, 600),
)
def test_gguf_metadata_mapping(values, vocab):
    meta = {"general.architecture": "llama", **{f"llama.{k}": v for k, v in values.items()}}
    try:
        config_from_gguf(meta, {"token_embd.weight": (vocab, 8)})
    except (GGUFError, ConfigError) as e:
        assert str(e)


roles = st.sampled_from(["system", "user", "assistant", "robot", 3, None])
message = st.fixed_dictionaries({}, optional={"role": roles, "content": st.text(max_size=5) | json_scalars})
record = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.lists(message, max_size=4) | json_scalars,
        "prompt": json_scalars,
        "completion": json_scalars,
    },
)


@FUZZ
@given(record.map(json.dumps) | st.text(max_size=40))
def test_chat_jsonl_line(line):
    try:
        messages = _conversation(line, "fuzz.jsonl:1")
    except ChatDataError as e:
        assert "fuzz.jsonl:1" in str(e)
        return
    assert messages[0]["role"] in ("system", "user") and any(m["role"] == "assistant" for m in messages)


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 400))
def test_safetensors_header(tail, header_len):
    """A model.safetensors of arbitrary bytes (with or without a plausible header length) beside a valid config."""
    import tempfile
    from pathlib import Path

    from modernlm.checkpoints.native import load_native
    from modernlm.config import preset

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        preset("llama-tiny").to_json(directory / "modernlm_config.json")
        (directory / "model.safetensors").write_bytes(struct.pack("<Q", header_len) + tail)
        try:
            load_native(directory)
        except CheckpointError as e:
            assert "model.safetensors" in str(e)


@FUZZ
@given(st.binary(max_size=60))
def test_text_decoding(data):
    try:
        text = decode_strict(data, "fuzz.txt")
        assert text.encode("utf-8") == data.removeprefix(b"\xef\xbb\xbf")
    except TextError as e:
        assert "fuzz.txt" in str(e) and "byte" in str(e)
    user = from_user(data.decode("utf-8", errors="surrogateescape"))
    user.encode("utf-8")  # always encodable: no lone surrogates are left
