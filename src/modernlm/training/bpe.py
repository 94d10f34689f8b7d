"""Byte-level BPE tokenizer training with the `tokenizers` library (GPT-2's scheme: every byte is a base token, so any
text round-trips), saved as a standard tokenizer.json that `transformers.PreTrainedTokenizerFast` loads."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ..files import atomic_dir
from ..tokenizer import Tokenizer

EOT = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE tokenizer of `vocab_size` ids (256 bytes + merges + the `<|endoftext|>` special token, which
    is also its BOS and EOS token) learned from `texts`."""
    if vocab_size < 257:
        raise ValueError(f"vocab_size {vocab_size} is too small: byte-level BPE needs 256 byte tokens + {EOT}")
    backend = BackendTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    seen = [0]

    def counted(items: Iterable[str]):
        for text in items:
            seen[0] += len(text)
            yield text

    backend.train_from_iterator(counted(texts), trainer=trainer)
    if seen[0] == 0:
        raise ValueError("no text to train the tokenizer on: the corpus is empty")
    return Tokenizer(backend, bos_token=EOT, eos_token=EOT, source="trained byte-level BPE")


def train_bpe_files(paths: list[str | os.PathLike], vocab_size: int, out_dir: str | os.PathLike) -> Path:
    """Train on text files (or directories / globs, as `modernlm train --data` reads them) and write tokenizer.json
    and tokenizer_config.json into `out_dir`; return the directory."""
    from .corpus import load_corpus

    corpus = load_corpus([str(p) for p in paths], val_fraction=0.0)
    texts = (t for t in (d.read() for d in corpus.train) if t)
    tokenizer = train_bpe(texts, vocab_size)
    with atomic_dir(out_dir, replaces=("tokenizer*",)) as staging:  # tokenizer.json and its config together
        tokenizer.save(staging)
    return Path(out_dir)
