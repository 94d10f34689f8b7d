"""A tiny chat model trained briefly on the arithmetic task's SFT mix (it knows the sums, but rambles when greedy and
is sometimes wrong): the "before" model of the alignment tests and lab experiments, built in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import preset
from ..files import write_json
from ..finetune.chat_data import IGNORE, collate, encode_conversations, read_jsonl
from ..loading import save_model
from ..model import Transformer
from ..training.bpe import train_bpe
from . import task

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


LARGEST = 4  # operands 0..4: 40 questions, which a tiny model learns in seconds


def build_tiny_sft_model(out: Path, steps: int = 300) -> Path:
    """Write the task (operands 0..LARGEST) into out/../task and the trained model (a HF directory) into `out`."""
    data = out.parent / "task"
    paths = task.write_task(data, largest=LARGEST)
    texts = [line for name in task.FILES for line in paths[name].read_text().splitlines()]
    tokenizer = train_bpe(["\n".join(texts) + " user: assistant:"], 600)
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = preset("llama-tiny", vocab_size=tokenizer.vocab_size, d_model=64, n_heads=4, n_kv_heads=2)
    model = Transformer(config)
    examples = encode_conversations(tokenizer, read_jsonl(paths["sft"]), 64, "sft")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        rows = [examples[i] for i in torch.randint(len(examples), (16,), generator=g).tolist()]
        ids, labels = collate(rows, tokenizer.eos_token_id)
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        loss.backward()
        opt.step()
        opt.zero_grad()
    save_model(model.eval(), out, tokenizer=tokenizer)
    write_json(out / "sft_loss.json", loss.item())
    return out
