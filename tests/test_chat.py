"""`modernlm chat`'s commands: /help, /set (each sampling setting, checked), /save and /load (the conversation as
JSON), unknown commands refused without reaching the model; a line starting with a space is a message."""

from __future__ import annotations

import io
import json

import pytest

import modernlm
from modernlm.cli.__main__ import main

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture(scope="module")
def chat_model(tiny_chat_dir):
    return tiny_chat_dir(TEXT, max_seq_len=128)


def chat(chat_model, capsys, monkeypatch, lines: list[str], *flags) -> tuple[str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    assert main(["chat", "-m", str(chat_model), "-n", "8", "-q", *flags]) == 0
    return capsys.readouterr()


def test_help_and_unknown_commands_do_not_reach_the_model(chat_model, capsys, monkeypatch):
    out, err = chat(chat_model, capsys, monkeypatch, ["/help", "/nonsense", "/exit", "never read"])
    assert out == ""  # no reply: nothing went to the model
    assert "/set NAME VALUE" in err and "/save FILE" in err and "/load FILE" in err
    assert "unknown command /nonsense" in err


def test_set_changes_the_next_replies_and_is_checked(chat_model, capsys, monkeypatch):
    lines = ["/set temperature 1.5", "/set seed 3", "/set top_k 20", "/set top_p none", "/set max_tokens 6", "/set",
             "/set temperature hot", "/set top_p 2", "/set colour 1", "the quick brown fox"]  # fmt: skip
    out, err = chat(chat_model, capsys, monkeypatch, lines)
    assert "[temperature 1.5]" in err and "[top_k 20]" in err and "[top_p none]" in err
    assert "temperature 1.5, top_p none, top_k 20, min_p none, repetition_penalty none, seed 3, max_tokens 6" in err
    assert "'hot' is not a float" in err and "top_p must be in (0, 1]" in err and "NAME one of" in err
    model, tok = modernlm.load(chat_model)
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "the quick brown fox"}]))
    new = modernlm.generate(model, ids, 6, temperature=1.5, top_k=20, seed=3, eos_token_id=tok.eos_token_id)[0]
    assert out.strip("\n") == tok.decode([t for t in new if t != tok.eos_token_id]).strip()


def test_save_and_load_the_conversation(chat_model, tmp_path, capsys, monkeypatch):
    saved, again = tmp_path / "chat.json", tmp_path / "again.json"
    out, err = chat(chat_model, capsys, monkeypatch, ["hello", " /not a command", f"/save {saved}"], "-t", "0")
    messages = json.loads(saved.read_text())
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == "/not a command" and "saved 4 messages" in err
    out, err = chat(chat_model, capsys, monkeypatch, [f"/load {saved}", "the dog", f"/save {again}"], "-t", "0")
    assert "loaded 4 messages" in err and json.loads(again.read_text())[:4] == messages
    assert len(json.loads(again.read_text())) == 6  # the loaded conversation went on
    (tmp_path / "bad.json").write_text('{"role": "user"}')
    loads = [f"/load {tmp_path / 'bad.json'}", f"/load {tmp_path / 'none.json'}"]
    _, err = chat(chat_model, capsys, monkeypatch, loads)
    assert "is not a conversation" in err and "none.json" in err
