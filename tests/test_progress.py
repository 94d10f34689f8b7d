"""Progress on every long step: align's phases and step bar (and --no-progress), finetune's evaluations and
publication said as they happen, the first compiled decode step announced, and a bar over a large load."""

from __future__ import annotations

import logging

import pytest
import torch

import modernlm
from modernlm.cli.__main__ import main
from modernlm.threads import one_thread

TEXT = "the quick brown fox jumps over the lazy dog. 12 + 7 = 19. what is 3 + 4? 7. " * 30


@pytest.fixture(scope="module")
def chat_model(tiny_chat_dir):
    return tiny_chat_dir(TEXT, max_seq_len=256)


def _align(chat_model, out, *extra) -> int:
    flags = ["--max-steps", "2", "--batch-size", "2", "--eval-prompts", "2", "--eval-pairs", "4",
             "--max-new-tokens", "4", "--eval-interval", "0"]  # fmt: skip
    with one_thread():
        return main(["align", "dpo", "--model", str(chat_model), "--out", str(out), *flags, *extra])


def test_align_says_each_phase_and_shows_a_step_bar(chat_model, tmp_path, capsys):
    assert _align(chat_model, tmp_path / "a") == 0
    err = capsys.readouterr().err
    for phase in ("align dpo: loading the policy", "with the reference", "answering 2 held-out prompts",
                  "writing the aligned model"):  # fmt: skip
        assert phase in err, err[-2000:]
    assert "2/2" in err  # the bar over the steps
    assert _align(chat_model, tmp_path / "b", "--no-progress") == 0
    assert "align dpo" not in capsys.readouterr().err


def test_finetune_says_what_it_does_after_the_last_step(tmp_path, capsys):
    from test_finetune import example_conversations, finetune, tiny_config, write_jsonl

    conversations = example_conversations(24)
    train = write_jsonl(tmp_path / "t.jsonl", conversations[:16])
    files = (train, write_jsonl(tmp_path / "v.jsonl", conversations[16:]))
    with one_thread():
        finetune(tiny_config(tmp_path / "run", files, max_steps=2, progress=True))
    err = capsys.readouterr().err
    assert "evaluating" in err and "held-out batches" in err  # the bar's description while it stands at 100%
    assert "finetune: answering 1 prompts with the base model" in err
    assert "finetune: answering 1 prompts after training" in err


def test_the_first_compiled_step_is_announced(chat_model, monkeypatch, caplog):
    from modernlm.generation.compiled import compile_decode

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # the message, not the compiler, is tested here
    model = compile_decode(modernlm.load_model(chat_model))
    with caplog.at_level(logging.INFO, logger="modernlm"):
        modernlm.generate(model, [1, 2, 3], 4, temperature=0.0)
        modernlm.generate(model, [1, 2, 3], 4, temperature=0.0)  # the same shape: compiled already, nothing said
    said = [r.getMessage() for r in caplog.records if "compil" in r.getMessage()]
    assert len(said) == 2 and said[0].startswith("compiling the one-token decode step") and "compiled" in said[1]


def test_a_large_load_shows_a_bar(chat_model, monkeypatch, capsys):
    import modernlm.checkpoints.base as base

    modernlm.load_model(chat_model)
    assert "loading model" not in capsys.readouterr().err  # small: no bar
    monkeypatch.setattr(base, "LARGE_LOAD", 0)
    modernlm.load_model(chat_model)
    assert "loading model" in capsys.readouterr().err
