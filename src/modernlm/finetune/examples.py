"""The example instruction dataset, written by this code (no download): short questions with terse, checkable answers.

An instruct model such as SmolLM2-135M answers "What is 23 + 58?" with a paragraph and often a wrong sum; after a few
minutes of fine-tuning on these examples it answers "23 + 58 = 81." So the before/after comparison shows both the
format and the arithmetic. The same seed gives the same file on every machine.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from ..files import write_text

SYSTEM = "Answer with one short sentence."


def _question(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(("add", "sub", "mul", "weeks", "minutes", "double"))
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if kind == "add":
        return f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
    if kind == "sub":
        a, b = max(a, b), min(a, b)
        return f"What is {a} - {b}?", f"{a} - {b} = {a - b}."
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} times {b}?", f"{a} × {b} = {a * b}."
    if kind == "weeks":
        n = rng.randint(2, 20)
        return f"How many days are in {n} weeks?", f"{n} weeks have {7 * n} days."
    if kind == "minutes":
        n = rng.randint(2, 12)
        return f"How many minutes are in {n} hours?", f"{n} hours have {60 * n} minutes."
    return f"What is double {a}?", f"Double {a} is {2 * a}."


def example_conversations(n: int = 480, seed: int = 0) -> list[list[dict]]:
    """`n` distinct conversations (system, user, assistant)."""
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        q, a = _question(rng)
        if q in seen:
            continue
        seen.add(q)
        out.append(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}, {"role": "assistant", "content": a}]
        )
    return out


def write_example_dataset(directory: str | os.PathLike, n_train: int = 400, n_val: int = 80) -> tuple[Path, Path]:
    """Write train.jsonl and val.jsonl (disjoint questions) into `directory`; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    conversations = example_conversations(n_train + n_val)
    paths = directory / "train.jsonl", directory / "val.jsonl"
    for path, part in zip(paths, (conversations[:n_train], conversations[n_train:]), strict=True):
        write_text(path, "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in part))
    return paths
