"""Text as it is generated: pieces that never split a multi-byte character (`IncrementalDecoder`), and which rows of
a batch have finished (an EOS token, or a stop string in their text)."""

from __future__ import annotations


class IncrementalDecoder:
    """The text of a growing token sequence, piece by piece.

    Decodes a short window (the tokens since the last emitted piece, with the piece before them as context) and holds
    back text that ends in U+FFFD, the mark of a multi-byte character whose bytes have not all arrived. The pieces
    joined equal `tokenizer.decode` of all the ids (for byte-level tokenizers; window starts sit at character ends)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start: the tokens of the previous piece, kept as context
        self.read = 0  # tokens before this are emitted

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        """What is left, even if it ends in an incomplete character (then it really is invalid)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


class FinishedRows:
    """Which sequences have finished: on an EOS token, or when their text contains a stop string."""

    def __init__(self, batch: int, eos: frozenset[int], stops: list[str], tokenizer) -> None:
        self.eos, self.stops = eos, stops
        self.done = [False] * batch
        self.decoders = [IncrementalDecoder(tokenizer) for _ in range(batch)] if stops else []
        self.texts = [""] * batch
        self.longest_stop = max((len(s) for s in stops), default=0)

    def update(self, tokens: list[int]) -> list[int | None]:
        """The token each row takes this step (None for rows already done); marks rows that finish."""
        taken: list[int | None] = []
        for b, t in enumerate(tokens):
            if self.done[b]:
                taken.append(None)
                continue
            taken.append(t)
            if t in self.eos:
                self.done[b] = True
            elif self.stops:
                piece = self.decoders[b].push(t)
                if piece:
                    start = max(0, len(self.texts[b]) - self.longest_stop + 1)
                    self.texts[b] += piece
                    self.done[b] = any(s in self.texts[b][start:] for s in self.stops)
        return taken

    @property
    def all_done(self) -> bool:
        return all(self.done)
