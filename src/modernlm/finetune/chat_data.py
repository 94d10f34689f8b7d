"""Instruction data: JSONL conversations rendered with the model's chat template, loss on assistant tokens only.

Each line is `{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}` or
`{"prompt": str, "completion": str}` (one user turn and one assistant turn). Each conversation becomes one row of
token ids and a same-length row of labels: the token id where the token belongs to an assistant reply (its text and
the template's end-of-turn marker, so the model learns to stop), IGNORE elsewhere (system, user, template markers).

Which characters belong to a reply is found by rendering: the template of the messages before reply i with the
generation prompt ends where reply i starts, and the template of the messages up to reply i ends where it ends. A
template whose renderings are not prefixes of one another (it rewrites earlier turns) is refused with the reason.
Rows are batched by right padding: with a causal mask no real token attends to padding, and padding has no labels,
so examples never see each other and need no attention mask.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..text import read_strict, too_deep

IGNORE = -100  # the label of a token that carries no loss (torch's cross_entropy ignore_index)
ROLES = ("system", "user", "assistant")


class ChatDataError(ValueError):
    """Instruction data that cannot be used; the message names the file, the line and the fix."""


@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # IGNORE or the token id


def read_jsonl(path: str | os.PathLike) -> list[list[dict]]:
    """The conversations of a JSONL file, each a list of messages. Every problem names its line."""
    path = Path(path)
    if not path.is_file():
        raise ChatDataError(f"no such file: {path}; give a JSONL file of chat examples")
    conversations = []
    for n, line in enumerate(read_strict(path).splitlines(), start=1):
        if line.strip():
            conversations.append(_conversation(line, f"{path}:{n}"))
    if not conversations:
        raise ChatDataError(f"{path} holds no examples; write one JSON object per line")
    return conversations


def _conversation(line: str, where: str) -> list[dict]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ChatDataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise ChatDataError(too_deep(where)) from None
    if not isinstance(record, dict):
        raise ChatDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
    elif "prompt" in record and "completion" in record:
        messages = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]
    else:
        raise ChatDataError(f'{where}: expected "messages", or "prompt" and "completion"; got keys {sorted(record)}')
    if not isinstance(messages, list) or not messages:
        raise ChatDataError(f'{where}: "messages" must be a non-empty list of {{"role", "content"}} objects')
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ChatDataError(
                f"{where}: message {i} must be {{'role': one of {', '.join(ROLES)}, 'content': a string}}, got {m!r}"
            )
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise ChatDataError(f"{where}: a system message may only come first (message {roles.index('system', 1)})")
    first = roles[1] if roles[0] == "system" and len(roles) > 1 else roles[0]
    if first != "user":
        raise ChatDataError(
            f"{where}: the conversation starts with {first!r}; it must start with a user turn (after an optional "
            "system message), since every assistant reply answers something"
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatDataError(f"{where}: the conversation has no assistant turn, so there is nothing to learn from it")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text of a whole conversation and the (start, end) character spans of its assistant replies."""
    full = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True) if i else ""
        through = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise ChatDataError(
                "the chat template renders earlier turns differently as the conversation grows, so the assistant "
                "tokens cannot be located; use a template whose renderings extend one another (ChatML, Llama 3)"
            )
        spans.append((len(before), len(through)))
    return full, spans


def encode_conversation(tokenizer, messages: list[dict]) -> Example:
    """Token ids of the rendered conversation, and labels on the assistant tokens only."""
    text, spans = assistant_spans(tokenizer, messages)
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    labels = []
    for token, (start, _) in zip(encoding.ids, encoding.offsets, strict=True):
        inside = any(a <= start < b for a, b in spans)
        labels.append(token if inside else IGNORE)
    return Example(list(encoding.ids), labels)


def encode_conversations(tokenizer, conversations: list[list[dict]], max_len: int, where: str) -> list[Example]:
    """Conversations (from `read_jsonl`) encoded and cut to `max_len` tokens; those left without an assistant token
    are dropped. `where` names their source in the error raised when none is left."""
    examples = [encode_conversation(tokenizer, c) for c in conversations]
    for e in examples:
        del e.ids[max_len:], e.labels[max_len:]
    kept = [e for e in examples if any(t != IGNORE for t in e.labels[1:])]
    if not kept:
        raise ChatDataError(f"{where}: no example has an assistant token within {max_len} tokens; raise the length")
    return kept


def batches(
    examples: list[Example], batch_size: int, pad_id: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(ids (B, T), labels (B, T)) batches of a shuffled epoch, right-padded. Labels are already shifted by one (the
    label at t is the token at t + 1): `cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)`."""
    order = torch.randperm(len(examples), generator=generator).tolist()
    for start in range(0, len(order), batch_size):
        yield collate([examples[i] for i in order[start : start + batch_size]], pad_id)


def collate(rows: list[Example], pad_id: int, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T), labels (B, T)): right-padded inputs and next-token labels (IGNORE on padding and prompts)."""
    T = max(len(r.ids) for r in rows) - 1
    T = min(T, max_len) if max_len else T
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for b, r in enumerate(rows):
        n = min(len(r.ids) - 1, T)
        ids[b, :n] = torch.tensor(r.ids[:n])
        labels[b, :n] = torch.tensor(r.labels[1 : n + 1])
    return ids, labels


class ChatData:
    """Encoded conversations behind the trainer's data interface: `train_batch(index, ...)` is a pure function of
    the index and the seed (each epoch reshuffled with seed + epoch), so a resumed run sees exactly the batches it
    would have seen; `val_batches` are fixed. Rows are right-padded with `pad_id` and labelled as `collate` does."""

    def __init__(self, train: list[Example], val: list[Example], pad_id: int) -> None:
        if not train:
            raise ChatDataError("no training examples")
        self.train, self.val, self.pad_id = train, val, pad_id

    @property
    def n_val(self) -> int:
        return len(self.val)

    def train_batch(self, index: int, batch_size: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_epoch = max(len(self.train) // batch_size, 1)
        epoch, i = divmod(index, per_epoch)
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        return collate([self.train[j] for j in order[i * batch_size : (i + 1) * batch_size]], self.pad_id, seq_len)

    def val_batches(self, n_batches: int, batch_size: int, seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rows = self.val[: n_batches * batch_size]
        return [collate(rows[i : i + batch_size], self.pad_id, seq_len) for i in range(0, len(rows), batch_size)]
