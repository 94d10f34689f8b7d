"""Training data: the corpus tokenized once into a memory-mapped token file (uint16 or uint32) with a small JSON
metadata file, cached by corpus and tokenizer; batches of random windows drawn from it.

Every document starts with the end-of-text token, so the token after an end-of-text always begins a document.
Batch `i` of a run is drawn by a generator seeded with (seed, i): the data position is one integer, and a resumed
run draws exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path, clean_stale, write_json
from ..tokenizer import Tokenizer
from .bpe import EOT, train_bpe
from .corpus import Corpus

FORMAT = 1  # bump when the token file layout changes; old caches are then ignored


def cache_root() -> Path:
    """$MODERNLM_CACHE or ~/.cache/modernlm."""
    return Path(os.environ.get("MODERNLM_CACHE", Path.home() / ".cache" / "modernlm"))


@dataclass
class TokenData:
    """Tokens (N,) in a memory map; [0, n_train) are training tokens, [n_train, N) validation tokens."""

    tokens: np.ndarray  # (N,) uint16 or uint32 memmap
    n_train: int
    eot_id: int

    @property
    def n_val(self) -> int:
        return len(self.tokens) - self.n_train

    def train_batch(self, index: int, batch_size: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `index` of the run: inputs and next-token targets, each (B, T) long."""
        rng = np.random.default_rng([seed, index])
        starts = rng.integers(0, self.n_train - seq_len, size=batch_size)  # s + T + 1 <= n_train
        return self._windows(starts, seq_len)

    def val_batches(self, n_batches: int, batch_size: int, seq_len: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The same evenly spaced validation windows at every evaluation; [] when validation is too short."""
        if self.n_val < seq_len + 1:
            return []
        starts = np.linspace(self.n_train, len(self.tokens) - seq_len - 1, n_batches * batch_size).astype(np.int64)
        starts = np.unique(starts)
        return [self._windows(starts[i : i + batch_size], seq_len) for i in range(0, len(starts), batch_size)]

    def _windows(self, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts[:, None] + np.arange(seq_len + 1)[None, :]  # (B, T + 1)
        window = torch.from_numpy(self.tokens[idx].astype(np.int64))  # (B, T + 1)
        return window[:, :-1], window[:, 1:]


log = logging.getLogger("modernlm")


def corpus_tokenizer(corpus: Corpus, vocab_size: int, sample_mb: float) -> Tokenizer:
    """A byte-level BPE trained on (a spread sample of) the training documents, cached by corpus and size."""
    key = _key("bpe", corpus.fingerprint, vocab_size, sample_mb)
    directory = cache_root() / "tokenizers" / key
    if not (directory / "tokenizer.json").is_file():
        log.info(
            "training a byte-level BPE tokenizer (%d ids) on up to %g MB of the %d training documents "
            "(once: it is cached in %s)", vocab_size, sample_mb, len(corpus.train), directory.parent,
        )  # fmt: skip
        tokenizer = train_bpe(corpus.sample(int(sample_mb * 2**20)), vocab_size)
        _atomic_dir(directory, tokenizer.save)
    return Tokenizer.from_directory(directory)


def tokenize_corpus(corpus: Corpus, tokenizer: Tokenizer, val_fraction: float) -> TokenData:
    """The corpus as one token file (cached by corpus and tokenizer): training documents, then validation ones."""
    eot = tokenizer.token_to_id(EOT) if tokenizer.token_to_id(EOT) is not None else tokenizer.eos_token_id
    if eot is None:
        raise ValueError(f"the tokenizer has no {EOT} or EOS token to separate documents; train one with modernlm")
    vocab_json = tokenizer.backend.to_str()
    directory = cache_root() / "tokens" / _key("tokens", FORMAT, corpus.fingerprint, vocab_json, eot, val_fraction)
    if not (directory / "meta.json").is_file():
        log.info(
            "tokenizing %d documents into a token file (once: it is cached in %s)",
            len(corpus.train) + len(corpus.val), directory.parent,
        )  # fmt: skip
        _atomic_dir(directory, lambda d: _write_tokens(d, corpus, tokenizer, eot, val_fraction))
    meta = json.loads((directory / "meta.json").read_text())
    tokens = np.memmap(directory / "tokens.bin", dtype=meta["dtype"], mode="r")
    return TokenData(tokens, meta["n_train"], meta["eot_id"])


def _write_tokens(directory: Path, corpus: Corpus, tokenizer: Tokenizer, eot: int, val_fraction: float) -> None:
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    with open(directory / "tokens.bin", "wb") as f:
        n_train = _encode_documents(f, corpus.train, tokenizer, eot, dtype)
        n_val = _encode_documents(f, corpus.val, tokenizer, eot, dtype)
    if n_train == 0:
        raise ValueError("the training documents hold no text: the corpus is empty; give files with text in them")
    if corpus.split_by_tokens:  # one document (or all on one side of the split): validate on the last tokens
        n_val = int((n_train + n_val) * val_fraction)
        n_train -= n_val
    meta = dict(format=FORMAT, dtype=np.dtype(dtype).name, n_train=n_train, n_val=n_val, eot_id=eot)
    meta.update(n_documents=len(corpus.train) + len(corpus.val), vocab_size=tokenizer.vocab_size)
    write_json(directory / "meta.json", meta)


def _encode_documents(f, docs, tokenizer: Tokenizer, eot: int, dtype, chunk: int = 256) -> int:
    """Append [EOT] + ids of each document to the open file `f`; return the number of tokens written."""
    written = 0
    for i in range(0, len(docs), chunk):
        texts = [t for t in (d.read() for d in docs[i : i + chunk]) if t]
        for enc in tokenizer.backend.encode_batch(texts, add_special_tokens=False):
            ids = np.asarray([eot, *enc.ids], dtype=dtype)
            f.write(ids.tobytes())
            written += len(ids)
    return written


def _atomic_dir(directory: Path, fill) -> None:
    """Build the directory's contents under a temporary name and rename it into place, so a crash never leaves a
    half-written cache entry; staging directories of killed runs are removed first."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(directory.parent)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        fill(tmp)


def _key(*parts) -> str:
    return hashlib.sha256("\0".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:20]
