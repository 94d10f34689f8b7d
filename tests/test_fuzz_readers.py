"""Fuzzing (hypothesis) every reader of untrusted input end to end: a GGUF file, a safetensors file, config.json,
tokenizer.json, a chat template, and the server's request bodies. The one property: a clear error (a ValueError or
OSError subclass with a message; for the server a 4xx answer, one log line, no traceback) or a correct load, within
a few seconds. Each suite is derandomized (the same examples every run, so a failure reproduces) and the six take
about a minute together in the default suite.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modernlm
from conftest import save_tiny_chat_model
from modernlm.tokenizer import Tokenizer
from test_gguf import tiny_weights, write_tiny

FUZZ = settings(
    max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)  # fmt: skip
MORE = settings(FUZZ, max_examples=150)  # the cheap readers: more examples in the same time
SECONDS = 10  # per example: far above an honest load of these tiny files, far below a hang
TEXT = "the quick brown fox jumps over the lazy dog. " * 40
_names = itertools.count()


def clear_or_done(call, seconds: float = SECONDS):
    """call()'s value, or None when it raised a clear error; anything else, or a slow answer, fails the example."""
    start = time.perf_counter()
    try:
        result = call()
    except (ValueError, OSError) as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        result = None
    assert time.perf_counter() - start < seconds, f"took {time.perf_counter() - start:.1f} s"
    return result


def runs(model) -> None:
    """A model that loaded gives finite logits (a correct load, not merely an object)."""
    ids = torch.tensor([[1, 2, 3]]) % model.config.vocab_size
    assert torch.isfinite(model(ids)).all()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A valid tiny GGUF file and a valid tiny Hugging Face directory to mutate, and a place for the mutants."""
    from conftest import write_gguf

    root = tmp_path_factory.mktemp("fuzz")
    gguf = write_tiny(write_gguf.__wrapped__(), root / "base.gguf", "llama", tiny_weights(seed=1), Q.Q8_0)
    return Files({"gguf": gguf.read_bytes(), "hf": save_tiny_chat_model(root / "hf", TEXT), "root": root})


class Files(dict):
    def __repr__(self) -> str:  # a failing example's report names the mutation, not 100 kB of base file
        return "files"


def fresh(files, suffix: str = "") -> Path:
    return files["root"] / f"case-{next(_names)}{suffix}"  # a new name each time: no parse cache can answer


# ---- GGUF ---------------------------------------------------------------------------------------------------------
@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), min_size=1, max_size=8),
    st.none() | st.integers(0, 60_000),
    st.sampled_from([None, "gguf", "int8"]),
)
def test_gguf_bytes(files, monkeypatch, flips, cut, quantize):
    """Bytes of the header (metadata, tensor infos) changed, the file maybe cut short: every load path."""
    monkeypatch.setenv("MODERNLM_GGUF_CACHE", "0")
    data = bytearray(files["gguf"])
    for at, value in flips:
        data[at % len(data)] = value
    path = fresh(files, ".gguf")
    path.write_bytes(bytes(data[:cut]) if cut is not None else bytes(data))
    model = clear_or_done(lambda: modernlm.load_model(path, quantize=quantize))
    if model is not None:
        runs(model)
    path.unlink()


# ---- safetensors --------------------------------------------------------------------------------------------------
dtypes = st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "F64", "BOOL", "Q4", "", 7])
dims = st.lists(st.integers(0, 2**40) | st.integers(0, 300) | st.just(-1), max_size=3)
offsets = st.lists(st.integers(-1, 2**62), max_size=3)
entry = st.fixed_dictionaries({"dtype": dtypes, "shape": dims, "data_offsets": offsets})


@FUZZ
@given(st.dictionaries(st.sampled_from(["model.embed_tokens.weight", "lm_head.weight", "x"]), entry, max_size=3),
       st.binary(max_size=300), st.booleans())  # fmt: skip
def test_safetensors_header(files, header, tail, keep_real):
    """model.safetensors with a made-up header (dtypes, shapes and offsets of any size) beside a valid config."""
    directory = fresh(files)
    shutil.copytree(files["hf"], directory)
    if keep_real:  # the real tensors, one entry of the header replaced
        raw = (directory / "model.safetensors").read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        real = json.loads(raw[8 : 8 + n])
        real.update(header)
        blob = json.dumps(real).encode()
        (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])
    else:
        blob = json.dumps(header).encode()
        (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob + tail)
    model = clear_or_done(lambda: modernlm.load_model(directory))
    if model is not None:
        runs(model)
    shutil.rmtree(directory)


# ---- config.json --------------------------------------------------------------------------------------------------
HF_KEYS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
           "intermediate_size", "rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings",
           "max_position_embeddings", "architectures", "model_type", "attention_bias", "sliding_window",
           "use_sliding_window", "layer_types", "hidden_act"]  # fmt: skip
names = st.sampled_from(["LlamaForCausalLM", "llama", "silu", "false", "linear"])
scalars = st.none() | st.booleans() | st.integers(-5, 200) | st.integers(-(2**63), 2**63) | st.floats() | names
values = st.recursive(
    scalars | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(st.dictionaries(st.sampled_from(HF_KEYS), values, min_size=1, max_size=4), st.booleans())
def test_config_json(files, changes, drop):
    """A real config.json with fields replaced (or removed) by values of any type and size: load_config and load."""
    directory = fresh(files)
    shutil.copytree(files["hf"], directory)
    config = json.loads((directory / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in changes} if drop else {**config, **changes}
    (directory / "config.json").write_text(json.dumps(config))
    clear_or_done(lambda: modernlm.load_config(directory))
    model = clear_or_done(lambda: modernlm.load_model(directory))
    if model is not None:
        runs(model)
    shutil.rmtree(directory)


# ---- tokenizer.json -----------------------------------------------------------------------------------------------
def _paths(obj, prefix=()):
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj[:4]) if isinstance(obj, list) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


@MORE
@given(st.data())
def test_tokenizer_json(files, data):
    """tokenizer.json with parts replaced by values of any type (its model, pre-tokenizer, added tokens...): the
    tokenizer is refused clearly, or it encodes, decodes and renders the chat template."""
    directory = fresh(files)
    shutil.copytree(files["hf"], directory)
    tree = json.loads((directory / "tokenizer.json").read_text())
    paths = [p for p in _paths(tree) if p and not (len(p) > 2 and p[:2] == ("model", "vocab"))]
    for path in data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        node = tree
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = data.draw(values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed the place
    (directory / "tokenizer.json").write_text(json.dumps(tree))

    def use():
        tok = Tokenizer.from_directory(directory)
        ids = tok.encode("the quick <|endoftext|> fox ü")
        assert isinstance(tok.decode(ids), str)
        return tok.apply_chat_template([{"role": "user", "content": "hi"}])

    clear_or_done(use)
    shutil.rmtree(directory)


# ---- chat templates -----------------------------------------------------------------------------------------------
numbers = st.sampled_from([0, 1, 3, 100, 100_000, 10**9, -1])
expr = st.sampled_from([
    "messages[0]['content']", "messages|length", "'ab' * {n}", "[0] * {n}", "range({n})|list|length", "{n} ** {n}",
    "'x'|center({n})", "'%{n}d' % 1", "'{{:>{n}}}'.format(1)", "bos_token", "add_generation_prompt", "loop",
    "raise_exception('no')", "''.__class__", "messages|tojson", "strftime_now('%Y')", "undefined_name.attr",
])  # fmt: skip


def _template(draw_expr, depth: int) -> st.SearchStrategy[str]:
    leaf = st.builds(lambda e, n: "{{ " + e.format(n=n) + " }}", draw_expr, numbers) | st.text(max_size=5)
    if depth == 0:
        return leaf
    inner = _template(draw_expr, depth - 1)
    return leaf | st.builds(
        lambda kind, n, body: {
            "for": "{% for i in range(" + str(n) + ") %}" + body + "{% endfor %}",
            "if": "{% if messages %}" + body + "{% else %}x{% endif %}",
            "macro": "{% macro m(k) %}" + body + "{{ m(k) if k else '' }}{% endmacro %}{{ m(" + str(n) + ") }}",
            "set": "{% set v = " + str(n) + " %}" + body,
            "broken": "{% for %}" + body,
        }[kind],
        st.sampled_from(["for", "if", "macro", "set", "broken"]), numbers, st.lists(inner, max_size=3).map("".join),
    )  # fmt: skip


@MORE
@given(_template(expr, 3))
def test_chat_template(monkeypatch, template):
    """Templates built from loops (nested, long), macros (recursive), big repetitions, widths and powers, escapes
    from the sandbox and syntax errors: each renders, or is refused by name, within its time limit."""
    from modernlm import tokenizer as module

    monkeypatch.setattr(module, "TEMPLATE_SECONDS", 0.3)
    tok = _tokenizer()
    tok.chat_template = template
    text = clear_or_done(lambda: tok.apply_chat_template([{"role": "user", "content": "hi"}]), seconds=3)
    assert text is None or isinstance(text, str)


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Tokenizer:
    from modernlm.training.bpe import train_bpe

    return train_bpe([TEXT], 280)


# ---- request bodies -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(files):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'modernlm[serve]'")
    from starlette.testclient import TestClient

    from modernlm.serving.api import create_app
    from modernlm.serving.engine import Engine

    model, tok = modernlm.load(save_tiny_chat_model(files["root"] / "served", TEXT, max_seq_len=64))
    engine = Engine(model, tok, max_batch=4).start()
    yield TestClient(create_app(engine, "tiny", max_body=64 * 1024), raise_server_exceptions=False)
    engine.stop()


FIELDS = ["model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "stop", "n",
          "presence_penalty", "frequency_penalty", "stream", "stream_options", "user", "messages", "logprobs",
          "top_logprobs", "max_completion_tokens", "prompt", "tools", "extra"]  # fmt: skip
message = st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "system", "assistant", "robot", 3]),
                                              "content": values | st.just("hi")})  # fmt: skip
body_values = values | st.lists(message, max_size=3) | st.lists(st.integers(-5, 2**40), max_size=4)
deep = st.integers(1, 20_000).map(lambda n: '{"messages": ' + "[" * n + "]" * n + "}")


@MORE
@given(
    st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
    st.dictionaries(st.sampled_from(FIELDS), body_values, max_size=5).map(json.dumps) | deep | st.text(max_size=30),
)
def test_request_bodies(server, caplog, path, raw):
    """Any body: an answer that is not a server error; a 400 is logged as one line without a traceback."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modernlm"):
        if '"max_tokens"' not in raw and raw.startswith("{") and raw.endswith("}") and raw != "{}":
            raw = raw[:-1] + ', "max_tokens": 2}'  # valid requests generate briefly
        start = time.perf_counter()
        answer = server.post(path, content=raw.encode("utf-8", "surrogatepass"),
                             headers={"content-type": "application/json"})  # fmt: skip
        assert time.perf_counter() - start < SECONDS
    assert answer.status_code < 500, (answer.status_code, answer.text[:300])
    records = [r for r in caplog.records if r.name == "modernlm"]
    assert all(r.exc_info is None for r in records), [r.getMessage() for r in records]
    if answer.status_code == 400:
        assert answer.json()["error"]["message"] and len(records) == 1, [r.getMessage() for r in records]
