"""What a user sees of a run besides the progress bar: the metrics log (JSONL), the loss-curve PNG, text samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..files import append_line, atomic_path, write_text
from ..tokenizer import Tokenizer


class MetricsLog:
    """Append-only JSONL of training and validation records; each record has the optimizer `step` it follows."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is None:
            write_text(self.path, "")
        else:  # drop what an interrupted run logged after its last checkpoint: those steps are run again
            write_text(self.path, "".join(f"{json.dumps(r)}\n" for r in self.read() if r["step"] <= resume_step))

    def write(self, record: dict) -> None:
        append_line(self.path, json.dumps(record))

    def read(self) -> list[dict]:
        """The records; a line cut short by a kill mid-append (only ever the last) is skipped."""
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return [r for r in records if isinstance(r, dict) and "step" in r]


class NullLog(MetricsLog):
    """The metrics log of a process that is not rank 0: it writes nothing and reads rank 0's file."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)

    def write(self, record: dict) -> None:
        pass


def plot_losses(records: list[dict], path: str | os.PathLike, title: str = "") -> Path | None:
    """Training and validation loss against the step, as a PNG; None when there is nothing to plot."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="training", linewidth=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", linewidth=1.5)
    ax.set(xlabel="step", ylabel="cross-entropy (nats / token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


@torch.no_grad()
def sample_texts(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 0.8,
    top_k: int = 40,
) -> list[str]:
    """Each prompt and its sampled continuation, ended at the end-of-text token. The prompt follows an end-of-text
    token, as every training document does."""
    from ..generation import generate

    eos = tokenizer.eos_token_id
    start = [eos] if eos is not None else []
    texts = []
    for i, prompt in enumerate(prompts):
        ids = start + tokenizer.encode(prompt)
        new = generate(
            model, ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed + i, eos_token_id=eos
        )
        new = new[0][:-1] if new[0] and new[0][-1] == eos else new[0]
        texts.append(prompt + tokenizer.decode(new))
    return texts
