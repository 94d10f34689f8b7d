"""Alignment data: preference pairs and prompts from JSONL, rendered with the model's chat template, and batched.

Pairs: `{"prompt": str | messages, "chosen": str | [assistant message], "rejected": ...}` per line. Prompts (GRPO,
PPO): `{"prompt": str | messages, "answer": str}` (the answer feeds the task's checker; optional with a reward model).
A prompt is rendered with the generation prompt; a response is the template's rendering of the reply after it, cut
after the end-of-sequence token, so it has the shape of a sampled reply (the reply's tokens, then EOS).

Rows are right-padded prompt + response sequences; in the target frame (position t predicts token t + 1) the mask
marks the response tokens. With a causal mask no real token attends to padding, so no attention mask is needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..finetune.chat_data import ROLES
from ..text import read_strict, too_deep


class AlignDataError(ValueError):
    """Alignment data that cannot be used; the message names the file, the line and the fix."""


@dataclass
class Pair:
    prompt: list[dict]
    chosen: str
    rejected: str


@dataclass
class PromptRecord:
    prompt: list[dict]
    answer: str | None


def _records(path: str | os.PathLike, what: str) -> list[tuple[str, dict]]:
    path = Path(path)
    if not path.is_file():
        raise AlignDataError(f"no such file: {path}; give a JSONL file of {what}")
    out = []
    for n, line in enumerate(read_strict(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise AlignDataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise AlignDataError(too_deep(where)) from None
        if not isinstance(record, dict):
            raise AlignDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        out.append((where, record))
    if not out:
        raise AlignDataError(f"{path} holds no {what}; write one JSON object per line")
    return out


def _prompt(value, where: str) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise AlignDataError(f"{where}: the prompt is empty; every pair answers a question")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise AlignDataError(f'{where}: "prompt" must be a string or a non-empty list of {{"role", "content"}}')
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise AlignDataError(f"{where}: prompt message {i} must be {{'role': {'|'.join(ROLES)}, 'content': str}}")
    if value[-1]["role"] != "user":
        raise AlignDataError(f"{where}: the prompt must end with a user turn (the reply answers it)")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _response(value, key: str, where: str) -> str:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant":
            raise AlignDataError(f'{where}: "{key}" must be one assistant message, got role {value[0].get("role")!r}')
        value = value[0].get("content")
    if not isinstance(value, str):
        raise AlignDataError(f'{where}: "{key}" must be a string or [{{"role": "assistant", "content": str}}]')
    if not value.strip():
        raise AlignDataError(f'{where}: "{key}" is an empty response; a preference needs two real replies')
    return value


def _implicit_prompt(record: dict, where: str) -> dict:
    """trl's implicit-prompt form: chosen and rejected are whole conversations that differ in the last (assistant)
    turn; the shared turns before it are the prompt."""
    chosen, rejected = record["chosen"], record["rejected"]
    if not (isinstance(chosen, list) and isinstance(rejected, list) and len(chosen) >= 2 and len(rejected) >= 2):
        return record
    if chosen[:-1] != rejected[:-1]:
        raise AlignDataError(f"{where}: chosen and rejected conversations must share every turn but the last reply")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Pairs of a JSONL file: {"prompt", "chosen", "rejected"}, or {"chosen", "rejected"} whole conversations."""
    pairs = []
    for where, record in _records(path, "preference pairs"):
        if "prompt" not in record and "chosen" in record and "rejected" in record:
            record = _implicit_prompt(record, where)
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in record]
        if missing:
            raise AlignDataError(f'{where}: missing {missing}; each line is {{"prompt", "chosen", "rejected"}}')
        chosen = _response(record["chosen"], "chosen", where)
        rejected = _response(record["rejected"], "rejected", where)
        if chosen.strip() == rejected.strip():
            raise AlignDataError(
                f"{where}: chosen and rejected are the same reply ({chosen.strip()[:40]!r}); a pair teaches only "
                "when they differ: fix or drop the line"
            )
        pairs.append(Pair(_prompt(record["prompt"], where), chosen, rejected))
    return pairs


def read_prompts(path: str | os.PathLike, need_answer: bool) -> list[PromptRecord]:
    out = []
    for where, record in _records(path, "prompts"):
        if "prompt" not in record:
            raise AlignDataError(f'{where}: missing "prompt"; each line is {{"prompt", "answer"}}')
        answer = record.get("answer")
        if need_answer and answer is None:
            raise AlignDataError(f'{where}: missing "answer", which the task\'s checker needs; or give a reward model')
        out.append(PromptRecord(_prompt(record["prompt"], where), None if answer is None else str(answer)))
    return out


# ---- tokens -------------------------------------------------------------------------------------------------------
def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))


def encode_response(tokenizer, messages: list[dict], reply: str) -> list[int]:
    """The template's tokens of `reply` after the prompt, cut after the first EOS (the shape of a sampled reply)."""
    before = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": reply}], False)
    if not full.startswith(before):
        raise AlignDataError(
            "the chat template renders the prompt differently once a reply follows, so the reply's tokens cannot be "
            "located; use a template whose renderings extend one another (ChatML, Llama 3)"
        )
    ids = tokenizer.encode(full[len(before) :])
    eos = tokenizer.eos_token_id
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def check_same_vocabulary(actor_tokenizer, other_tokenizer, what: str) -> None:
    """Token ids mean the same to both models, or a clear error (a reward model of another vocabulary)."""
    a, b = actor_tokenizer.backend.get_vocab(), other_tokenizer.backend.get_vocab()
    if a != b:
        differ = sorted(set(a.items()) ^ set(b.items()))[:3]
        raise AlignDataError(
            f"the {what} has another vocabulary than the actor ({len(b)} tokens vs {len(a)}; e.g. {differ}): token ids "
            f"would mean different things; train the {what} from the actor's base (or an SFT model of it)"
        )


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return pad if pad is not None else 0


def reply_texts(tokenizer, replies: list[list[int]]) -> list[str]:
    """The decoded replies, their end-of-sequence token dropped."""
    eos = tokenizer.eos_token_id
    return [tokenizer.decode(r[:-1] if r and r[-1] == eos else r).strip() for r in replies]


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int, device=None):
    """(ids (B, L), mask (B, L - 1)): right-padded prompt + response rows, and the response tokens' positions in the
    target frame (position t predicts ids[:, t + 1])."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    L = max(lengths)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L - 1, dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        if not r:
            raise AlignDataError("an empty response (no tokens) cannot be scored or trained on")
        ids[b, : lengths[b]] = torch.tensor(p + r)
        mask[b, len(p) - 1 : lengths[b] - 1] = True
    return ids.to(device), mask.to(device)


def sequence_logps(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs (B, L - 1) of ids[:, 1:] under `model`, zero off the mask."""
    from .losses import token_logps

    logits = model(ids[:, :-1])  # (B, L - 1, V)
    return token_logps(logits, ids[:, 1:]) * mask


@dataclass
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


def encode_pairs(tokenizer, pairs: list[Pair], where: str) -> list[EncodedPair]:
    out = []
    for i, p in enumerate(pairs):
        e = EncodedPair(
            encode_prompt(tokenizer, p.prompt),
            encode_response(tokenizer, p.prompt, p.chosen),
            encode_response(tokenizer, p.prompt, p.rejected),
        )
        if e.chosen == e.rejected:  # e.g. replies differing in surrounding space only
            raise AlignDataError(f"{where}: pair {i + 1} has the same tokens for chosen and rejected; they must differ")
        out.append(e)
    return out


def split_heldout(train: list, heldout: list | None, where: str) -> tuple[list, list]:
    """The held-out list, or the last tenth of the training list when none is given."""
    if heldout is not None:
        return train, heldout
    if len(train) < 2:
        raise AlignDataError(f"{where} has one example: give a held-out file, or more examples to hold some out")
    n = max(len(train) // 10, 1)
    return train[:-n], train[-n:]


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The examples of optimizer step `step`: epochs of a shuffled order (seed + epoch), a pure function of step."""
    per_epoch = max(n // batch_size, 1)
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return order[i * batch_size : (i + 1) * batch_size]
