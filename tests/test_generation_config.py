"""One set of sampling defaults: the model's generation_config.json, written by save_model, read on load (a fallback
where there is none), shown by `info`, and the default of the Python `generate`, `modernlm generate`, `chat` and the
server's API, each flag or request field overriding it. The same request gives the same text through every one."""

from __future__ import annotations

import io
import json

import pytest
import torch

import modernlm
from modernlm.checkpoints.generation_config import FALLBACK, GREEDY, GenerationConfig, from_hf
from modernlm.cli.__main__ import main

TEXT = "the quick brown fox jumps over the lazy dog. " * 40
PROMPT = "the quick brown fox"
SAMPLING = {"do_sample": True, "temperature": 1.3, "top_p": 0.95, "top_k": 40}


@pytest.fixture(scope="module")
def chat_model(tiny_chat_dir):
    return tiny_chat_dir(TEXT, max_seq_len=128)


def _with_config(chat_model, tmp_path, hf: dict):
    """A copy of the chat_model model whose generation_config.json is `hf`."""
    import shutil

    out = tmp_path / "model"
    shutil.copytree(chat_model, out)
    (out / "generation_config.json").write_text(json.dumps(hf))
    return out


def test_save_model_writes_what_transformers_reads(chat_model, tmp_path):
    from transformers import GenerationConfig as HFGenerationConfig

    written = json.loads((chat_model / "generation_config.json").read_text())
    tok = modernlm.load_tokenizer(chat_model)
    assert written["do_sample"] is False and written["eos_token_id"] == tok.eos_token_id  # built in Python: greedy
    model = modernlm.load_model(chat_model)
    assert model.generation_config.temperature == 0 and model.generation_config.eos_token_id == tok.eos_token_id

    model.generation_config = GenerationConfig(temperature=0.6, top_p=0.9, top_k=20, max_new_tokens=99)
    modernlm.save_model(model, tmp_path / "saved")
    hf = HFGenerationConfig.from_pretrained(tmp_path / "saved")
    assert (hf.do_sample, hf.temperature, hf.top_p, hf.top_k, hf.max_new_tokens) == (True, 0.6, 0.9, 20, 99)
    again = modernlm.load_model(tmp_path / "saved").generation_config
    assert (again.temperature, again.top_p, again.top_k, again.max_new_tokens) == (0.6, 0.9, 20, 99)
    assert again.eos_token_id == tok.eos_token_id  # filled in from the tokenizer


def test_transformers_reading_and_the_fallback(chat_model, tmp_path):
    # transformers' defaults when sampling: temperature 1, top_k 50, top_p 1 (off); do_sample false is greedy
    assert from_hf({"do_sample": True}, "x") == GenerationConfig(temperature=1.0, top_k=50, origin="x")
    assert from_hf({"temperature": 0.6, "eos_token_id": [1, 2]}, "x").sampling() == GREEDY.sampling()
    assert from_hf({"eos_token_id": [1, 2]}, "x").eos_ids() == [1, 2]
    with pytest.raises(ValueError, match="do_sample"):
        from_hf({"do_sample": "yes"}, "x")
    plain = tmp_path / "plain"
    modernlm.save_model(modernlm.load_model(chat_model), plain)
    (plain / "generation_config.json").unlink()
    assert modernlm.load_model(plain).generation_config is FALLBACK  # no file: the chat defaults 0.7 / 0.9
    assert (FALLBACK.temperature, FALLBACK.top_p) == (0.7, 0.9)
    built = modernlm.Transformer(modernlm.preset("llama-tiny"))
    assert not hasattr(built, "generation_config")  # built in Python: generate is greedy, as transformers' default


def test_gguf_has_none_and_takes_the_fallback(chat_model, tmp_path):
    from modernlm.export import export_gguf

    model, tokenizer = modernlm.load(chat_model)
    out = export_gguf(model, tokenizer, tmp_path / "m.gguf", kind="f16")
    assert modernlm.load_model(out).generation_config is FALLBACK


def _generate_cli(capsys, model_dir, *flags) -> str:
    assert main(["generate", "-m", str(model_dir), "--chat", "-p", PROMPT, "-n", "12", "-q", *flags]) == 0
    return capsys.readouterr().out.rstrip("\n")


def _chat_cli(capsys, monkeypatch, model_dir, *flags) -> str:
    monkeypatch.setattr("sys.stdin", io.StringIO(PROMPT + "\n"))
    assert main(["chat", "-m", str(model_dir), "-n", "12", "-q", *flags]) == 0
    return capsys.readouterr().out.strip("\n")


def _python(model_dir, **options) -> str:
    model, tok = modernlm.load(model_dir)
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True))
    out = modernlm.generate(model, ids, 12, eos_token_id=tok.eos_token_id, **options)[0]
    return tok.decode([t for t in out if t != tok.eos_token_id])


def _api(model_dir, **fields) -> str:
    pytest.importorskip("fastapi")
    from test_api import start

    server, engine, _, _ = start(model_dir)
    try:
        import httpx

        body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 12, **fields}
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        card = httpx.get(server.url + "/v1/models", timeout=60).json()["data"][0]
        assert card["generation_config"]["temperature"] == modernlm.load_model(model_dir).generation_config.temperature
        return r.json()["choices"][0]["message"]["content"]
    finally:
        server.stop()
        engine.stop()


@pytest.mark.parametrize("hf", [{"do_sample": False}, SAMPLING], ids=["greedy", "seeded"])
def test_the_same_request_gives_the_same_text_everywhere(chat_model, tmp_path, capsys, monkeypatch, hf):
    model_dir = _with_config(chat_model, tmp_path, hf)
    seed = ("--seed", "7") if hf["do_sample"] else ()
    python = _python(model_dir, **({"seed": 7} if seed else {}))
    assert python
    assert _generate_cli(capsys, model_dir, *seed) == python
    assert _chat_cli(capsys, monkeypatch, model_dir, *seed) == python
    assert _api(model_dir, **({"seed": 7} if seed else {})) == python
    if hf["do_sample"]:  # the defaults are the model's values, and each flag overrides one of them
        torch.manual_seed(0)
        explicit = _python(model_dir, temperature=1.3, top_p=0.95, top_k=40, seed=7)
        assert explicit == python
        greedy = _python(model_dir, temperature=0.0)
        assert greedy != python  # the defaults really sample
        assert _generate_cli(capsys, model_dir, "-t", "0") == greedy
        assert _chat_cli(capsys, monkeypatch, model_dir, "--temperature", "0") == greedy
        assert _api(model_dir, temperature=0) == greedy


def test_info_shows_the_defaults(chat_model, tmp_path, capsys):
    model_dir = _with_config(chat_model, tmp_path, SAMPLING)
    assert main(["info", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "generation defaults: sampling, temperature 1.3, top-k 40, top-p 0.95" in out
    assert "generation_config.json" in out
    assert main(["info", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["generation_config"]["top_k"] == 40


def test_info_prints_float32_values_by_their_shortest_text():
    from modernlm.cli.info import shown

    assert shown(9.999999747378752e-06) == "1e-05"  # a GGUF's float32 norm_eps, as stored
    assert shown(1e-6) == 1e-6 and shown(10000.0) == "10000.0" and shown(128) == 128
