"""The measured task: one-digit arithmetic with an exact checker as the reward, built by code.

Questions are "What is a + b?" and "What is a - b?" (a >= b) over the digits (155; `largest` sets the operands),
split deterministically into training and held-out questions. The reward of a reply is 1 when it is the bare
correct number, 0.5 when its last number is correct but words come around it (rambling), 0 otherwise; accuracy
counts the correct ones either way. From it comes a preference set: the concise correct reply is chosen over a wrong
number, a rambling correct reply and a rambling wrong one.

`write_task(directory)` writes the files every `modernlm align` method reads (and an SFT mix for making a "before"
model that sometimes rambles and errs):
- train_prompts.jsonl, heldout_prompts.jsonl: {"prompt", "answer"}
- train_pairs.jsonl, heldout_pairs.jsonl: {"prompt", "chosen", "rejected"}
- sft.jsonl: {"prompt", "completion"} over every question, mostly rambling and one reply in five deliberately wrong:
  the data of a "before" model that knows the sums but rambles (held-out questions are held out of the alignment data
  only)
- README.md: what these are, the deliberately wrong SFT replies said in words
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from ..files import write_text

RAMBLE = (
    "I think the answer is {x}.",
    "Let me see, that makes {x}.",
    "Well, adding it up gives {x}.",
    "Hmm, it should be {x}.",
)
_NUMBER = re.compile(r"-?\d+")
FILES = ("train_prompts", "heldout_prompts", "train_pairs", "heldout_pairs", "sft")


@dataclass(frozen=True)
class Problem:
    prompt: str
    answer: str


def problems(seed: int = 0, largest: int = 9, heldout_fraction: float = 0.2) -> tuple[list[Problem], list[Problem]]:
    """(training, held-out) questions over the operands 0..`largest`, shuffled and split by `seed`; the same
    arguments give the same split."""
    if not 1 <= largest <= 99:
        raise ValueError(f"largest operand must be in 1..99, got {largest!r}")
    n = largest + 1
    all_problems = [Problem(f"What is {a} + {b}?", str(a + b)) for a in range(n) for b in range(n)]
    all_problems += [Problem(f"What is {a} - {b}?", str(a - b)) for a in range(n) for b in range(a + 1)]
    random.Random(seed).shuffle(all_problems)
    n_heldout = round(len(all_problems) * heldout_fraction)
    return all_problems[n_heldout:], all_problems[:n_heldout]


def extract(reply: str) -> str | None:
    """The reply's last integer, or None."""
    numbers = _NUMBER.findall(reply)
    return numbers[-1] if numbers else None


def is_correct(reply: str, answer: str) -> bool:
    return extract(reply) == answer


def reward(reply: str, answer: str) -> float:
    """1 for the bare correct number, 0.5 for a correct last number with words around it, else 0."""
    if reply.strip() == answer:
        return 1.0
    return 0.5 if is_correct(reply, answer) else 0.0


def _wrong(answer: str, rng: random.Random) -> str:
    return str(int(answer) + rng.choice([-2, -1, 1, 2, 3]))


def _pairs(problem: Problem, rng: random.Random) -> list[dict]:
    """The concise correct reply chosen over a wrong number, a rambling correct reply and a rambling wrong one."""
    wrong = _wrong(problem.answer, rng)
    rejected = [wrong, rng.choice(RAMBLE).format(x=problem.answer), rng.choice(RAMBLE).format(x=wrong)]
    return [{"prompt": problem.prompt, "chosen": problem.answer, "rejected": r} for r in rejected]


def _sft(problem: Problem, rng: random.Random) -> list[dict]:
    """Five replies to one question: the concise correct one, three rambling correct ones and a rambling wrong one,
    all rambling in one phrasing (so a model trained on them rambles when greedy, and is sometimes wrong)."""
    ramble = rng.choice(RAMBLE)
    replies = [problem.answer] + [ramble.format(x=problem.answer)] * 3 + [ramble.format(x=_wrong(problem.answer, rng))]
    return [{"prompt": problem.prompt, "completion": r} for r in replies]


def write_task(directory: str | os.PathLike, seed: int = 0, largest: int = 9) -> dict[str, Path]:
    """Write the task's files (module docstring) into `directory`; returns {name: path}. Deterministic in `seed`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train, heldout = problems(seed, largest)
    records = {
        "train_prompts": [{"prompt": p.prompt, "answer": p.answer} for p in train],
        "heldout_prompts": [{"prompt": p.prompt, "answer": p.answer} for p in heldout],
        "train_pairs": [pair for p in train for pair in _pairs(p, rng)],
        "heldout_pairs": [pair for p in heldout for pair in _pairs(p, rng)],
        "sft": [row for p in train + heldout for row in _sft(p, rng)],
    }
    paths = {}
    for name in FILES:
        paths[name] = directory / f"{name}.jsonl"
        write_text(paths[name], "".join(json.dumps(r) + "\n" for r in records[name]))
    paths["readme"] = write_text(directory / "README.md", README)
    return paths


README = """# The arithmetic task (written by `modernlm align task`)

- train_prompts.jsonl, heldout_prompts.jsonl: {"prompt", "answer"}; the reward is 1 for the bare correct number,
  0.5 for a correct last number with words around it, 0 otherwise.
- train_pairs.jsonl, heldout_pairs.jsonl: {"prompt", "chosen", "rejected"}: the concise correct reply chosen over a
  wrong number, a rambling correct reply and a rambling wrong one.
- sft.jsonl: {"prompt", "completion"}, five replies per question. **One in five is deliberately wrong** (a rambling
  reply with a wrong sum), and three ramble: this is the data of the "before" model, one that knows the sums but
  rambles and sometimes errs, so that alignment has something measurable to fix. Do not read its completions as
  references: a fine-tune's before_after.md shows them under "reference", wrong ones included.
"""
