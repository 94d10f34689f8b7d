"""Tensor names: one table of (their name, our name) pairs per format, read in both directions.

A name may hold placeholders, filled from the name matched: `{i}` a layer index, `{t}` weight or bias, `{qkv}` one
of q, k, v (GPT-2's fused projection); any other `{x}` one dot-free part. Every format (Hugging Face's Llama family,
the other members' tables, GPT-2, GGUF in and out) renames through `NameTable`, so a new format is one table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PLACEHOLDERS = {"i": r"\d+", "t": "weight|bias", "qkv": "[qkv]"}


def pattern(name: str) -> re.Pattern:
    """The regular expression of a name with placeholders, each a named group."""
    parts = re.split(r"\{(\w+)\}", name)  # literal, placeholder, literal, ...
    regex = "".join(
        re.escape(part) if k % 2 == 0 else f"(?P<{part}>{PLACEHOLDERS.get(part, r'[^.]+')})"
        for k, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


def fill(template: str, match: re.Match) -> str:
    """`template` with the placeholders `match` captured filled in (the others, e.g. `{qkv}`, left for the caller)."""
    for key, value in match.groupdict().items():
        template = template.replace("{" + key + "}", value)
    return template


class NameTable:
    """(their name, our name) pairs; `ours(name)` and `theirs(name)` rename one tensor name, None if no pair
    matches; `rename_all` renames a state dict and refuses a name the table does not know."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self.pairs = list(pairs)
        self._to_ours = [(pattern(theirs), ours) for theirs, ours in self.pairs]
        self._to_theirs = [(pattern(ours), theirs) for theirs, ours in self.pairs]

    def ours(self, name: str) -> str | None:
        return _first(self._to_ours, name)

    def theirs(self, name: str) -> str | None:
        return _first(self._to_theirs, name)

    def rename_all(self, tensors: dict, to_ours: bool, where: str, skip: re.Pattern | None = None, error=KeyError):
        """Every tensor under its new name (those matching `skip` dropped); `error(message)` for an unknown one."""
        out = {}
        for name, tensor in tensors.items():
            if skip is not None and skip.search(name):
                continue
            new = self.ours(name) if to_ours else self.theirs(name)
            if new is None:
                raise error(f"{where}: unexpected tensor {name!r}")
            out[new] = tensor
        return out


def _first(table: list[tuple[re.Pattern, str]], name: str) -> str | None:
    for compiled, target in table:
        m = compiled.match(name)
        if m:
            return fill(target, m)
    return None
