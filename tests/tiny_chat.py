"""A tiny Llama-style chat model for tests that run the CLI, the server or whole runs on a real directory: a byte-level
BPE tokenizer trained on `text` with a minimal chat template, random weights, saved as a Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

import torch

import modernlm
from modernlm.training.bpe import train_bpe

CHAT_TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}"
)


def save_tiny_chat_model(out: Path, text: str, **config) -> Path:
    """Write the model to `out`; `config`: ModelConfig overrides of the llama-tiny preset (e.g. max_seq_len)."""
    tokenizer = train_bpe([text], 300)
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    fields = dict(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=2, n_kv_heads=1) | config
    modernlm.save_model(modernlm.Transformer(modernlm.preset("llama-tiny", **fields)), out, tokenizer=tokenizer)
    return out
