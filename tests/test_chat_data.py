"""Instruction data: the loss covers exactly the assistant replies and their end-of-turn marker (ChatML's rule for
SmolLM2's template), batches never mix examples, and bad lines are reported with their line numbers."""

from __future__ import annotations

import json

import pytest
import torch

import modernlm
from modernlm.finetune.chat_data import IGNORE, ChatDataError, batches, encode_conversation, read_jsonl

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy? Ünïcode 🙂"},
    {"role": "assistant", "content": "Rome, of course 🙂"},
]


@pytest.fixture(scope="module")
def tok():
    return modernlm.load_tokenizer()


def test_labels_cover_exactly_the_assistant_replies(tok, hf_smollm2_tokenizer):
    ex = encode_conversation(tok, CHAT)
    rendered = hf_smollm2_tokenizer.apply_chat_template(CHAT, tokenize=False)  # the reference rendering
    assert ex.ids == hf_smollm2_tokenizer.encode(rendered, add_special_tokens=False)
    learned = [t for t in ex.labels if t != IGNORE]
    # ChatML: each reply is followed by <|im_end|> and a newline; those are what the model must learn to produce
    assert tok.decode(learned) == "Paris.<|im_end|>\nRome, of course 🙂<|im_end|>\n"
    for token, label in zip(ex.ids, ex.labels, strict=True):
        assert label in (token, IGNORE)


def test_prompt_completion_lines(tok, tmp_path):
    path = tmp_path / "pc.jsonl"
    path.write_text(json.dumps({"prompt": "2+2?", "completion": "4"}) + "\n")
    (conversation,) = read_jsonl(path)
    ex = encode_conversation(tok, conversation)
    assert tok.decode([t for t in ex.labels if t != IGNORE]) == "4<|im_end|>\n"


def test_batches_pad_right_and_shift_labels():
    from modernlm.finetune.chat_data import Example

    rows = [Example([5, 6, 7, 8], [IGNORE, IGNORE, 7, 8]), Example([9, 10], [IGNORE, 10])]
    ((ids, labels),) = list(batches(rows, 2, pad_id=0, generator=torch.Generator().manual_seed(0)))
    by_first = {int(r[0]): (r.tolist(), lab.tolist()) for r, lab in zip(ids, labels, strict=True)}
    assert by_first[5] == ([5, 6, 7], [IGNORE, 7, 8])
    assert by_first[9] == ([9, 0, 0], [10, IGNORE, IGNORE])


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}', "{oops"],
            r":2: not valid JSON",
        ),
        (['{"messages": [{"role": "user", "content": "hi"}]}'], r":1: the conversation has no assistant turn"),
        (['{"text": "hi"}'], r':1: expected "messages", or "prompt" and "completion"'),
        (['{"messages": [{"role": "robot", "content": "hi"}]}'], r":1: message 0 must be"),
        (["", "  "], "holds no examples"),
    ],
)
def test_bad_lines_are_reported_with_their_numbers(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ChatDataError, match=message):
        read_jsonl(path)
