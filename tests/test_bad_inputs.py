"""Bad input at every entry point: the CLI verbs, the Python API, config files, checkpoints and data files.

Each case asserts the outcome a user should get: the CLI exits with 2 and one line on stderr that names the offending
value (or field, or file) and, where there is one, the fix, with no traceback; the API raises the project's error
(a ValueError or TypeError subclass) with the same kind of message. Cases that are not errors (text that is not
UTF-8 typed at a prompt, generation that reaches the context limit) assert the result and the notice instead.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

import modernlm
from modernlm.cli.__main__ import main
from modernlm.config import ConfigError, ModelConfig, preset

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture(scope="module")
def chat_dir(tiny_chat_dir) -> Path:
    """The tiny chat model's directory (a BPE tokenizer, a chat template), with a context of 48 tokens."""
    return tiny_chat_dir(TEXT, max_seq_len=48)


def copy_model(source: Path, dest: Path, edit=None, weights=None) -> Path:
    """A copy of a model directory with its config.json edited (`edit(dict) -> value`) or weights replaced."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, dest)
    if edit is not None:
        config = json.loads((dest / "config.json").read_text())
        (dest / "config.json").write_text(json.dumps(edit(config)))
    if weights is not None:
        save_file(weights(load_file(dest / "model.safetensors")), dest / "model.safetensors")
    return dest


def run(argv: list[str], capsys, stdin: bytes | None = None) -> tuple[int, str, str]:
    """The CLI in this process, as a user runs it: (exit code, stdout, stderr); a traceback fails the test."""
    old = sys.stdin
    if stdin is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    finally:
        sys.stdin = old
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _with(config: dict, **changes) -> dict:
    return {**config, **changes}


def _set(name, value):
    return lambda w: {k: (value if k == name else v) for k, v in w.items()}


def _scale(name, factor):
    return lambda w: {k: (v * factor if k == name else v) for k, v in w.items()}


# ---- the CLI: (argv, what the one-line error must say) ------------------------------------------------------------
CLI_ERRORS = [
    (["generate", "-m", "{model}", "-p", "hi", "--num-beams", "0"], ["--num-beams", ">= 1"]),
    (["generate", "-m", "{model}", "-p", "hi", "--num-beams", "2", "-t", "0.7"], ["--temperature 0"]),
    (["generate", "-m", "{model}", "-p", "hi", "--device", "cuda"], ["cuda", "--device cpu"]),
    (["generate", "-m", "{model}", "-p", "hi", "--device", "tpu9"], ["tpu9", "'cpu'"]),
    (["generate", "-m", "{model}", "-p", "hi", "--top-k", "0"], ["top_k"]),
    (["generate", "-m", "{model}", "-p", "hi", "--min-p", "2"], ["min_p"]),
    (["generate", "-m", "{model}", "-p", "hi", "--repetition-penalty", "0"], ["repetition_penalty"]),
    (["generate", "-m", "{model}", "-p", "hi", "--system", "be brief"], ["--system", "--chat"]),
    (["generate", "-m", "{model}", "-p", "x" * 400], ["more than the model's context of 48"]),
    (["generate", "-m", "{tmp}/nothing-here", "-p", "hi"], ["nothing-here"]),
    (["generate", "-m", "{tmp}/notes.txt", "-p", "hi"], ["not a .gguf"]),
    (["generate", "-m", "{tmp}/broken.gguf", "-p", "hi"], ["broken.gguf"]),
    (["generate", "-m", "{tmp}/list-config", "-p", "hi"], ["config.json", "JSON object", "list"]),
    (["generate", "-m", "{tmp}/bad-json", "-p", "hi"], ["config.json", "not valid JSON"]),
    (["generate", "-m", "{tmp}/latin1-config", "-p", "hi"], ["config.json", "not UTF-8", "byte"]),
    (["generate", "-m", "{tmp}/zero-heads", "-p", "hi"], ["num_attention_heads", "positive integer"]),
    (["generate", "-m", "{tmp}/str-width", "-p", "hi"], ["config.json", "hidden_size", "positive integer"]),
    (["generate", "-m", "{tmp}/wrong-vocab", "-p", "hi"], ["embed.weight", "does not fit", "vocabulary"]),
    (["generate", "-m", "{tmp}/wrong-shape", "-p", "hi"], ["q_proj", "does not fit"]),
    (["generate", "-m", "{tmp}/nan-weights", "-p", "hi"], ["NaN/Inf", "corrupt"]),
    (["generate", "-m", "{tmp}/no-weights", "-p", "hi"], ["model.safetensors"]),
    (["generate", "-m", "{tmp}/truncated-weights", "-p", "hi"], ["truncated or corrupt"]),
    (["chat", "-m", "{tmp}/no-template"], ["no chat template"]),
    (["generate", "-m", "{tmp}/bad-tokenizer", "-p", "hi"], ["tokenizer.json", "restore"]),
    (["info", "{tmp}/nothing-here"], ["nothing-here"]),
    (["flops", "no-such-preset"], ["no-such-preset"]),
    (["memory", "llama-tiny", "--batch-size", "0"], ["batch"]),
    (["lab", "run", "no-such-experiment", "--quick"], ["no-such-experiment"]),
    (["train", "--model-override", "tie_embeddings=maybe", "--print-config"], ["tie_embeddings", "true or false"]),
    (["train", "--model-override", "norm_eps=abc", "--print-config"], ["norm_eps", "a number"]),
    (["train", "--model-override", "extra=5", "--print-config"], ["extra", "object"]),
    (["train", "--model-override", "n_layer=3", "--print-config"], ["n_layer", "did you mean 'n_layers'"]),
    (["train", "--model-override", "n_heads", "--print-config"], ["KEY=VALUE"]),
    (["train", "--model-override", "n_heads=0", "--out", "{tmp}/r0"], ["n_heads", "positive integer"]),
    (["train", "--model", "gpt-9", "--out", "{tmp}/r1"], ["gpt-9", "presets"]),
    (["train", "--config", "{tmp}/list.json"], ["list.json", "JSON object"]),
    (["train", "--config", "{tmp}/bad-types.json"], ["bad-types.json", "max_steps", "an integer"]),
    (["train", "--config", "{tmp}/latin1.json"], ["latin1.json", "not UTF-8", "byte"]),
    (["train", "--data", "{tmp}/blob.bin", "--out", "{tmp}/r2"], ["blob.bin", "not a text file"]),
    (["train", "--data", "{tmp}/missing.txt", "--out", "{tmp}/r3"], ["missing.txt"]),
    (["train", "--device", "cuda", "--out", "{tmp}/r4"], ["cuda", "cpu"]),
    (["train", "--device", "tpu9", "--out", "{tmp}/r8"], ["tpu9", "'cpu'"]),
    (["train", "--max-steps", "0", "--out", "{tmp}/r5"], ["max_steps", "positive integer"]),
    (["train", "--precision", "fp8", "--out", "{tmp}/r6"], ["fp8"]),
    (["train", "--resume", "--out", "{tmp}/never-ran"], ["nothing to resume"]),
    (["train", "--extend", "--max-steps", "9", "--out", "{tmp}/r7"], ["--resume"]),
    (["finetune", "--train", "{tmp}/assistant-first.jsonl", "--model", "{model}", "--out", "{tmp}/f1"], ["user turn"]),
    (["finetune", "--train", "{tmp}/bad-line.jsonl", "--model", "{model}", "--out", "{tmp}/f2"], [":2", "valid JSON"]),
    (["finetune", "--train", "{tmp}/latin1.jsonl", "--model", "{model}", "--out", "{tmp}/f3"], ["line 2", "not UTF-8"]),
    (["finetune", "--train", "{tmp}/no-reply.jsonl", "--model", "{model}", "--out", "{tmp}/f4"], ["no assistant"]),
    (["finetune", "--train", "{tmp}/role.jsonl", "--model", "{model}", "--out", "{tmp}/f5"], ["message 1", "role"]),
    (["finetune", "--train", "{tmp}/empty.jsonl", "--model", "{model}", "--out", "{tmp}/f6"], ["no examples"]),
    (["finetune", "--train", "{tmp}/missing.jsonl", "--model", "{model}", "--out", "{tmp}/f7"], ["missing.jsonl"]),
    (["tokenizer", "train", "--data", "{tmp}/notes.txt", "--vocab-size", "100", "--out", "{tmp}/t"], ["vocab"]),
    # issue 30: accepted silently, or a traceback, before
    (["generate", "-m", "{model}", "-p", "hi", "--num-beams", "100000"], ["num_beams 100000", "vocabulary"]),
    (["generate", "-m", "{model}", "-p", "hi", "-t", "inf"], ["temperature", "finite", "inf"]),
    (["generate", "-m", "{model}", "-p", "hi", "--repetition-penalty", "inf"], ["repetition_penalty", "finite"]),
    (["generate", "-m", "{model}", "-p", "hi", "--num-beams", "2", "--length-penalty", "nan"], ["--length-penalty"]),
    (["generate", "-m", "{model}", "-p", "hi", "--seed", "99999999999999999999999"], ["seed", "2**64"]),
    (["embed", "--model", "{model}", "--max-len", "0", "hello"], ["--max-len", ">= 3"]),
    (["serve", "-m", "{model}", "--context", "100000000"], ["--context 100000000", "context of 48"]),
    (["serve", "-m", "{model}", "--time-limit", "nan"], ["--time-limit", "nan"]),
    (["serve", "-m", "{model}", "--max-tokens", "999999", "--context", "512"], ["--max-tokens 999999", "--context"]),
    (["serve", "-m", "{model}", "--max-tokens", "999999"], ["--max-tokens 999999", "context of 48"]),
    (["serve", "-m", "{model}", "--host", "no.such.host.invalid"], ["--host 'no.such.host.invalid'", "127.0.0.1"]),
    (["memory", "llama-tiny", "--kv-dtype", "int3"], ["int3", "bfloat16"]),
    (["generate", "-m", "{tmp}/str-tie", "-p", "hi"], ["tie_word_embeddings", "true or false"]),
]


@pytest.fixture(scope="module")
def files(chat_dir, tmp_path_factory) -> Path:
    """The bad files the table names, written once."""
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "notes.txt").write_text("hello world, some notes\n" * 20)
    (tmp / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 7)
    (tmp / "blob.bin").write_bytes(bytes(range(256)) * 64)
    (tmp / "list.json").write_text("[1, 2, 3]")
    (tmp / "bad-types.json").write_text(json.dumps({"max_steps": "many"}))
    (tmp / "latin1.json").write_bytes('{"out_dir": "caf\xe9"}'.encode("latin-1"))
    copy_model(chat_dir, tmp / "list-config", edit=lambda c: [c])
    copy_model(chat_dir, tmp / "str-tie", edit=lambda c: _with(c, tie_word_embeddings="false"))
    copy_model(chat_dir, tmp / "zero-heads", edit=lambda c: _with(c, num_attention_heads=0))
    copy_model(chat_dir, tmp / "str-width", edit=lambda c: _with(c, hidden_size="wide"))
    copy_model(chat_dir, tmp / "wrong-vocab", edit=lambda c: _with(c, vocab_size=c["vocab_size"] + 5))
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    copy_model(chat_dir, tmp / "wrong-shape", weights=lambda w: {**w, q_proj: torch.zeros(4, 4)})
    copy_model(chat_dir, tmp / "nan-weights", weights=_scale("model.layers.1.mlp.up_proj.weight", float("nan")))
    copy_model(chat_dir, tmp / "no-template")
    (tmp / "no-template" / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"})
    )
    copy_model(chat_dir, tmp / "bad-tokenizer")
    (tmp / "bad-tokenizer" / "tokenizer.json").write_text('{"version": "1.0", "model": 5}')
    copy_model(chat_dir, tmp / "bad-json")
    (tmp / "bad-json" / "config.json").write_text("{'hidden_size': 32,")
    copy_model(chat_dir, tmp / "latin1-config")
    (tmp / "latin1-config" / "config.json").write_bytes(b'{"model_type": "llama", "name": "caf\xe9"}')
    copy_model(chat_dir, tmp / "no-weights")
    (tmp / "no-weights" / "model.safetensors").unlink()
    copy_model(chat_dir, tmp / "truncated-weights")
    data = (tmp / "truncated-weights" / "model.safetensors").read_bytes()
    (tmp / "truncated-weights" / "model.safetensors").write_bytes(data[: len(data) // 2])
    user, reply = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}
    lines = {
        "assistant-first": [{"messages": [reply, user, reply]}] * 3,
        "no-reply": [{"messages": [user]}] * 3,
        "role": [{"messages": [user, {"role": "robot", "content": "beep"}]}] * 3,
    }
    for name, records in lines.items():
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp / "bad-line.jsonl").write_text(json.dumps({"messages": [user, reply]}) + "\n{not json\n")
    (tmp / "latin1.jsonl").write_bytes(
        json.dumps({"messages": [user, reply]}).encode() + b'\n{"prompt": "caf\xe9", "completion": "x"}\n'
    )
    (tmp / "empty.jsonl").write_text("\n\n")
    return tmp


@pytest.mark.parametrize(
    "argv, words", CLI_ERRORS, ids=[" ".join(a[:3]) + f" #{i}" for i, (a, _) in enumerate(CLI_ERRORS)]
)
def test_cli_bad_input_is_one_clear_line(argv, words, chat_dir, files, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MODERNLM_CACHE", str(tmp_path / "cache"))
    argv = [a.replace("{model}", str(chat_dir)).replace("{tmp}", str(files)) for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) >= 1 and lines[-1].startswith("modernlm") or "usage:" in err, err
    for word in words:
        assert word in err, (word, err)


def test_reading_a_missing_stdin_is_one_clear_line(chat_dir, capsys, monkeypatch):
    """A process started without standard input (a service, `nohup ... <&-`): `-p -` and `chat` say so."""
    for argv in (["generate", "-m", str(chat_dir), "-p", "-"], ["chat", "-m", str(chat_dir)]):
        monkeypatch.setattr(sys, "stdin", None)
        code, _, err = run(argv, capsys)
        assert code == 2 and "standard input" in err and "none" in err, err


# ---- text that is not UTF-8 ---------------------------------------------------------------------------------------
def test_prompt_bytes_that_are_not_utf8_are_replaced_with_a_notice(chat_dir, capsys):
    argv = ["generate", "-m", str(chat_dir), "-p", "-", "-n", "3", "-q"]
    code, out, err = run(argv, capsys, stdin=b"caf\xe9 au lait")
    assert code == 0 and out.strip() != ""
    assert "not valid UTF-8" in err and "offset 3" in err


def test_argv_bytes_that_are_not_utf8_are_replaced_with_a_notice(chat_dir, capsys):
    prompt = b"caf\xe9".decode("utf-8", errors="surrogateescape")  # how Python hands such argv bytes over
    code, _, err = run(["generate", "-m", str(chat_dir), "-p", prompt, "-n", "3", "-q"], capsys)
    assert code == 0 and "--prompt is not valid UTF-8" in err


def test_chat_survives_a_bad_line_and_an_overlong_turn(chat_dir, capsys):
    stdin = b"hello\ncaf\xe9\n" + b"fox " * 200 + b"\n/reset\nthe dog\n"
    code, out, err = run(["chat", "-m", str(chat_dir), "-n", "2", "-t", "0", "-q"], capsys, stdin=stdin)
    assert code == 0
    assert "this line is not valid UTF-8" in err
    assert "more than the model's context" in err and "/reset" in err  # the long turn is refused, the chat goes on
    assert len([line for line in out.splitlines()]) >= 3  # replies to hello, the bad line and the dog


def test_generation_that_reaches_the_context_limit_says_so(chat_dir, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="modernlm"):
        code, _, _ = run(["generate", "-m", str(chat_dir), "-p", "the fox " * 10, "-n", "200", "--ignore-eos"], capsys)
    assert code == 0
    assert any("leaves room for" in r.getMessage() and "200 new tokens" in r.getMessage() for r in caplog.records)


# ---- the Python API -----------------------------------------------------------------------------------------------
def test_python_api_type_mistakes_get_our_messages(chat_dir):
    model = modernlm.load_model(chat_dir)
    cases = [
        (lambda: modernlm.load_model(123), TypeError, "source must be a model name, a path"),
        (lambda: modernlm.load_tokenizer(["a"]), TypeError, "source must be"),
        (lambda: modernlm.load_model(chat_dir, dtype="int8"), ValueError, "unknown dtype 'int8'"),
        (lambda: modernlm.load_model(chat_dir, dtype=torch.int64), ValueError, "not a floating-point"),
        (lambda: modernlm.load_model(chat_dir, device="cuda:3"), ValueError, "no CUDA GPU"),
        (lambda: modernlm.generate(model, "text", 5), TypeError, "tokenizer.encode(text)"),
        (lambda: modernlm.generate(model, [["a", "b"]], 5), TypeError, "encode text"),
        (lambda: modernlm.generate(model, [1, 2], 0), ValueError, "max_new_tokens"),
        (lambda: modernlm.generate(model, [1, 10**6], 2), ValueError, "outside this model's vocabulary"),
        (lambda: modernlm.generate(model, [1, 2], 2, num_beams=0), ValueError, "num_beams"),
        (lambda: model(torch.tensor([[1.0, 2.0]])), ValueError, "integer tensor"),
        (lambda: model(torch.tensor([[1, 10**6]])), ValueError, "vocab"),
        (lambda: modernlm.save_model("model", chat_dir.parent / "x"), TypeError, "save_model takes a modernlm model"),
        (lambda: ModelConfig.from_dict([1, 2]), ConfigError, "must be a JSON object"),
        (lambda: ModelConfig(n_heads="8"), ConfigError, "n_heads must be an integer"),
        (lambda: preset("llama-tiny", tie_embeddings="maybe"), ConfigError, "true or false"),
        # issue 30
        (lambda: modernlm.save_model(chat_dir.parent / "x", model), TypeError, "arguments are swapped"),
        (lambda: modernlm.save_model(model, 5), TypeError, "directory must be a str or a Path"),
        (lambda: modernlm.save_model(model, chat_dir.parent / "y", tokenizer="tok"), TypeError, "tokenizer must be"),
        (lambda: modernlm.generate(model, [1, 2], 2, eos_token_id="12"), TypeError, "eos_token_id"),
        (lambda: modernlm.generate(model, [1, 2], 2, eos_token_id=1.5), TypeError, "eos_token_id"),
        (lambda: modernlm.generate(model, [1, 2], 2, eos_token_id=["a"]), TypeError, "eos_token_id"),
        (lambda: modernlm.generate(model, [2**70], 2), ValueError, "outside any vocabulary"),
        (lambda: modernlm.generate(model, [1], 2, temperature=1.0, seed=2**70), ValueError, "seed"),
        (lambda: modernlm.generate(model, [1], 2, temperature=float("inf")), ValueError, "finite"),
        (lambda: modernlm.generate(model, [1], 2, num_beams=2, length_penalty=float("nan")), ValueError, "finite"),
        (lambda: modernlm.generate(model, [1], 2, num_beams=10**5), ValueError, "num_beams 100000"),
        (lambda: modernlm.generate(model, [1], 2, stop_strings=["x"], tokenizer="tok"), TypeError, "tokenizer"),
        (lambda: modernlm.load_tokenizer(chat_dir).decode([1.7]), TypeError, "1.7 (float)"),
        (lambda: modernlm.load_tokenizer(chat_dir).decode(["a"]), TypeError, "token ids"),
        (lambda: modernlm.load_tokenizer(chat_dir).decode(None), TypeError, "token ids"),
        (lambda: modernlm.load(chat_dir, tokenizer="yes"), TypeError, "tokenizer must be True or False"),
        (lambda: modernlm.quantize("model", "int8"), TypeError, "quantize takes a model"),
    ]
    for call, error, words in cases:
        with pytest.raises(error) as info:
            call()
        assert words in str(info.value), (words, str(info.value))


def test_save_model_writes_the_tokenizer_of_the_source(chat_dir, tmp_path):
    model = modernlm.load_model(chat_dir)
    modernlm.save_model(model, tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer.json").is_file()
    assert modernlm.load_tokenizer(tmp_path / "again").encode("the fox") == modernlm.load_tokenizer(chat_dir).encode(
        "the fox"
    )


def test_the_readme_python_snippet_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, executed as a newcomer would paste it (on the chat_dir model, not the real one)."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("From Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    assert "import torch" in block  # the snippet uses torch.tensor: it must import it
    compile(block, "README.md", "exec")
