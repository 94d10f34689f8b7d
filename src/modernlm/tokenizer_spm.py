"""A GGUF file's SentencePiece vocabulary (`tokenizer.ggml.model == "llama"`: Llama 2, Mistral, Gemma...) as a
`tokenizers` BPE with byte fallback, the ids `AutoTokenizer.from_pretrained(dir, gguf_file=...)` gives.

The file stores the pieces, their scores and their types, and usually no merges. SentencePiece BPE merges the pair
whose joined piece ranks best; the `tokenizers` BPE wants that order as a list of merges, so every piece that is two
pieces joined becomes a merge, ranked by the joined piece: pieces that are not learned merges (user-defined runs of
spaces like Gemma's, which SentencePiece matches whole, and the file stores with a placeholder score) first, by id;
then the learned pieces by score, best first, ties by id (SentencePiece's BPE trainer scores piece n as -n, so this is
the file's order). A file that lists its merges (`tokenizer.ggml.merges`) is taken at its word.

Spaces are "▁" (U+2581) inside pieces: a normalizer writes them so, and a "▁" goes before the text only where the file
says `tokenizer.ggml.add_space_prefix` (the default for SentencePiece; Gemma says no). Characters without a piece fall
back to their UTF-8 bytes (`<0x41>` pieces), which the decoder joins back into text.
"""

from __future__ import annotations

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

SPACE = "\u2581"  # "▁", SentencePiece's space inside pieces
# GGUF token types (llama.cpp's llama_token_type): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4


def gguf_sentencepiece(meta: dict) -> BackendTokenizer:
    """The tokenizer of a GGUF file's SentencePiece metadata (`tokenizer.ggml.*`)."""
    return sentencepiece_bpe(
        meta["tokenizer.ggml.tokens"],
        meta["tokenizer.ggml.scores"],
        meta.get("tokenizer.ggml.token_type"),
        merges=meta.get("tokenizer.ggml.merges"),
        unk_token_id=meta.get("tokenizer.ggml.unknown_token_id"),
        add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", True)),
    )


def sentencepiece_bpe(
    tokens: list[str],
    scores: list[float],
    token_types: list[int] | None,
    *,
    merges: list[str] | None = None,
    unk_token_id: int | None = None,
    add_space_prefix: bool = True,
) -> BackendTokenizer:
    """The `tokenizers.Tokenizer` of a SentencePiece BPE vocabulary: pieces (id = position), their scores and GGUF
    token types; `merges` ("left right", best first) when the file has them. Raises ValueError on a malformed
    vocabulary (the caller names the file)."""
    types = list(token_types) if token_types is not None else [NORMAL] * len(tokens)
    for name, values in (("scores", scores), ("token types", types)):
        if len(values) != len(tokens):
            raise ValueError(f"{len(tokens)} tokens but {len(values)} {name}; the vocabulary is corrupt")
    pieces = [_piece(t) for t in tokens]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    if len(vocab) != len(pieces):
        raise ValueError(f"{len(pieces) - len(vocab)} piece(s) appear twice; the vocabulary is corrupt")
    pairs = _listed_merges(merges) if merges else derived_merges(pieces, scores, types)
    unk = pieces[unk_token_id] if unk_token_id is not None and 0 <= unk_token_id < len(pieces) else None
    if unk is None:
        unk = next((p for p, k in zip(pieces, types, strict=True) if k == UNKNOWN), None)
    backend = BackendTokenizer(
        models.BPE(vocab=vocab, merges=pairs, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None)
    )
    backend.normalizer = normalizers.Replace(" ", SPACE)
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:  # "▁" before the text's first piece (not after a special token), stripped again on decode
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=False)
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    _add_special_pieces(backend, tokens, types, vocab)
    return backend


def _piece(token: str) -> str:
    """A piece as SentencePiece spells it: llama.cpp writes user-defined runs of spaces (Gemma's) with real spaces."""
    return SPACE * len(token) if token and not token.strip(" ") else token


def _listed_merges(merges: list[str]) -> list[tuple[str, str]]:
    pairs = [tuple(m.split(" ")) for m in merges]
    broken = [m for m, p in zip(merges, pairs, strict=True) if len(p) != 2]
    if broken:
        raise ValueError(f"merges must be 'left right' pairs; got {broken[:3]}")
    return pairs


def derived_merges(pieces: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every (left, right) with left + right a piece, best first: the joined piece's rank (see the module's doc), then
    the longer left part, then the lower ids, the order transformers' `generate_merges` gives."""
    vocab = {p: i for i, p in enumerate(pieces)}
    ranked = []
    for i, piece in enumerate(pieces):
        rank = (0, 0.0, i) if types[i] != NORMAL else (1, -scores[i], i)
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((rank, -len(left), vocab[left], vocab[right], left, right))
    ranked.sort(key=lambda r: r[:4])
    return [(left, right) for *_, left, right in ranked]


def _add_special_pieces(
    backend: BackendTokenizer, tokens: list[str], types: list[int], vocab: dict[str, int]
) -> None:
    """Control and unknown pieces (<bos>, <start_of_turn>, <unk>) as special tokens, user-defined ones (<think>,
    "\\n\\n") as added tokens: both matched whole in the text, as llama.cpp does. User-defined runs of spaces stay
    BPE pieces."""
    control = [t for t, k in zip(tokens, types, strict=True) if k in (CONTROL, UNKNOWN)]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    user = [t for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED and t in vocab]
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
