"""A cross-request prefix cache: the keys and values of token blocks, found again by the tokens before them.

A prompt is cut into blocks of `block` tokens. Block j is keyed by a digest of all the tokens of blocks 0..j (a chain:
each key hashes its parent's key and its own tokens), so a hit means the whole prefix up to the block's end is the
same token sequence at the same positions. The key and value of a position depend only on the tokens up to it and
on the position itself (RoPE rotates by the absolute position; ALiBi adds its bias to the scores, never to the keys;
absolute tables are added below the first layer), so a cached block is exactly what a fresh prefill would compute, for
every position scheme the model has. A request copies its hit blocks into its own cache rows and prefills the rest.

Memory is bounded: a pool of `capacity` blocks, evicted least recently used. A lookup touches every block of the
chain it hits, so a parent is never older than its children and eviction takes leaves first.

Shapes: L layers, N pool blocks, K kv heads, Bk block length, Dh head dim.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import torch

from ..layers.kv_cache import KVCache


def _digest(parent: bytes, tokens: Sequence[int]) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(b"".join(t.to_bytes(4, "little") for t in tokens))
    return h.digest()


class PrefixCache:
    """Pool buffers shaped like the cache's (keys, values, and a quantized cache's scales), (L, N, K, Bk, ...);
    `blocks` maps a chain key to its pool index, oldest first."""

    def __init__(self, like: KVCache, capacity: int, block: int = 16) -> None:
        if block < 1 or capacity < 1:
            raise ValueError(f"the prefix cache needs block >= 1 and capacity >= 1, got {block} and {capacity}")
        self.block, self.capacity = block, capacity
        self.pools = [
            torch.zeros(b.shape[0], capacity, b.shape[2], block, *b.shape[4:], dtype=b.dtype, device=b.device)
            for b in like.buffers()
        ]  # each (L, N, K, Bk, ...)
        self.blocks: OrderedDict[bytes, int] = OrderedDict()
        self.free = list(range(capacity - 1, -1, -1))

    def _keys(self, tokens: Sequence[int], limit: int) -> list[bytes]:
        """Chain keys of the full blocks within tokens[:limit]."""
        keys, parent = [], b""
        for j in range(limit // self.block):
            parent = _digest(parent, tokens[j * self.block : (j + 1) * self.block])
            keys.append(parent)
        return keys

    def lookup(self, tokens: Sequence[int], limit: int) -> list[int]:
        """Pool indices of the longest run of cached blocks that starts the sequence, within its first `limit` tokens
        (touched, so they are evicted last)."""
        hits = []
        for key in self._keys(tokens, limit):
            index = self.blocks.get(key)
            if index is None:
                break
            self.blocks.move_to_end(key)
            hits.append(index)
        return hits

    def load(self, hits: list[int], cache: KVCache, row: int) -> int:
        """Copy the hit blocks into positions 0.. of a cache row; the number of positions filled."""
        for j, index in enumerate(hits):
            span = slice(j * self.block, (j + 1) * self.block)
            for buffer, pool in zip(cache.buffers(), self.pools, strict=True):
                buffer[:, row, :, span] = pool[:, index]
        return len(hits) * self.block

    def store(self, tokens: Sequence[int], cache: KVCache, row: int) -> None:
        """Keep the full blocks of `tokens`, whose keys and values sit at positions 0.. of the cache row."""
        for j, key in enumerate(self._keys(tokens, len(tokens))):
            if key in self.blocks:
                self.blocks.move_to_end(key)
                continue
            if not self.free:
                _, evicted = self.blocks.popitem(last=False)
                self.free.append(evicted)
            index = self.free.pop()
            span = slice(j * self.block, (j + 1) * self.block)
            for buffer, pool in zip(cache.buffers(), self.pools, strict=True):
                pool[:, index] = buffer[:, row, :, span]
            self.blocks[key] = index

    def clear(self) -> None:
        self.blocks.clear()
        self.free = list(range(self.capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.blocks)

    def nbytes(self) -> int:
        return sum(pool.numel() * pool.element_size() for pool in self.pools)
