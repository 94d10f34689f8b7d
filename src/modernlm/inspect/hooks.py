"""Activations by name, read and rewritten with forward hooks (TransformerLens's `run_with_cache` and hook points, on
modernlm's own modules: nothing in the model changes, and no hook stays registered after its `with` block).

A name is a module's path (`model.named_modules()`, with `mlp` accepted for `ffn`) and a point on it:
  <block>.resid_pre     the block's input, the residual stream before it                     (B, T, D)
  <block>.resid_mid     the stream between the attention and the FFN sub-layers               (B, T, D)
  <block>.resid_post    the block's output                                                   (B, T, D)
  <attn>.z              each head's output before the output projection (o_proj's input)     (B, T, H, Dh)
  <attn>.pattern        the attention probabilities (read only; the explicit softmax path)    (B, H, T, S)
  <module>.in / .out    any module's first input / its output, e.g. blocks.3.attn.out, blocks.3.mlp.out, norm.out
Blocks are `blocks.i` (decoder, encoder, ViT) or `encoder.i` / `decoder.i` (T5, whose decoder blocks also have
`cross_attn`). A point reached more than once in a forward (a generation loop) holds its last value.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from ..layers.attention import Attention, recording
from ..layers.block import Block, CrossBlock

KINDS = ("resid_pre", "resid_mid", "resid_post", "z", "pattern", "in", "out")
Hook = Callable[[torch.Tensor], torch.Tensor | None]  # the value in; a replacement out, or None to leave it


class HookNameError(ValueError):
    """A name that is no point of this model; the message lists what is."""


@dataclasses.dataclass(frozen=True)
class Point:
    module: nn.Module
    side: str  # "in": the module's first input; "out": its output; "pattern": its attention probabilities
    heads: int = 0  # > 0: the value is seen split into (..., heads, Dh) (z)


def resolve(model: nn.Module, name: str) -> Point:
    """The module and side a name reads (see the module's doc); HookNameError naming the fix."""
    path, _, kind = name.rpartition(".")
    if not path or kind not in KINDS:
        raise HookNameError(f"{name!r} is no hook point: a name is a module path and one of {', '.join(KINDS)} "
                            f"(e.g. {block_names(model)[0]}.attn.out)")  # fmt: skip
    module = _module(model, path, name)
    if kind in ("resid_pre", "resid_mid", "resid_post") and not isinstance(module, Block):
        raise HookNameError(f"{name!r}: {kind} belongs to a block ({', '.join(block_names(model)[:3])}, ...)")
    if kind in ("z", "pattern") and not isinstance(module, Attention):
        raise HookNameError(f"{name!r}: {kind} belongs to an attention module, e.g. {block_names(model)[0]}.attn")
    if kind == "resid_mid":  # pre-norm: the FFN's norm reads it; post-norm: the attention's norm writes it
        return Point(module.attn_norm, "out") if module.post_norm else Point(module.ffn_norm, "in")
    if kind == "z":
        return Point(module.o_proj, "in", module.n_heads)
    side = {"resid_pre": "in", "resid_post": "out"}.get(kind, kind)
    return Point(module, side)


def _module(model: nn.Module, path: str, name: str) -> nn.Module:
    parts = ["ffn" if part == "mlp" else part for part in path.split(".")]
    try:
        return model.get_submodule(".".join(parts))
    except AttributeError:
        blocks = block_names(model)
        raise HookNameError(
            f"{name!r}: this {type(model).__name__} has no module {path!r}; its blocks are {blocks[0]} .. {blocks[-1]}"
        ) from None


def block_names(model: nn.Module) -> list[str]:
    """The paths of the model's blocks, in order (blocks.0, ...; T5: encoder.0, ..., decoder.0, ...)."""
    names = [name for name, m in model.named_modules() if isinstance(m, Block)]
    if not names:
        raise HookNameError(f"{type(model).__name__} has no transformer blocks to hook")
    return names


def default_names(model: nn.Module) -> list[str]:
    """Every block's stream (pre, mid, post), its attention's z, pattern and output, and its FFN's output."""
    names = []
    for block in block_names(model):
        names.append(f"{block}.resid_pre")
        attns = ("attn", "cross_attn") if isinstance(model.get_submodule(block), CrossBlock) else ("attn",)
        for attn in attns:
            names += [f"{block}.{attn}.z", f"{block}.{attn}.pattern", f"{block}.{attn}.out"]
        names += [f"{block}.resid_mid", f"{block}.mlp.out", f"{block}.resid_post"]
    return names


@contextlib.contextmanager
def hooks(model: nn.Module, fns: dict[str, Hook]) -> Iterator[None]:
    """Inside, each named point's value goes through its function on every forward: the function may return a
    replacement (same shape) or None (keep the value). Pattern points are read only (their return is ignored), and
    their attention runs the explicit softmax while inside. Every name is checked before anything is registered."""
    points = {name: resolve(model, name) for name in fns}
    attns = [p.module for p in points.values() if p.side == "pattern"]
    handles = []
    try:
        with recording(attns):
            for name, point in points.items():
                handles.append(_register(point, fns[name]))
            yield
    finally:
        for handle in handles:
            handle.remove()


def _register(point: Point, fn: Hook):
    def split(x: torch.Tensor) -> torch.Tensor:  # (..., H * Dh) -> (..., H, Dh) for z
        return x.unflatten(-1, (point.heads, -1)) if point.heads else x

    def join(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        if tuple(new.shape) != tuple(split(old).shape):
            raise ValueError(f"a hook returned shape {tuple(new.shape)} for a value of {tuple(split(old).shape)}")
        return new.reshape(old.shape).to(old.dtype)

    def before(module, args):
        new = fn(split(args[0]))
        return None if new is None else (join(new, args[0]), *args[1:])

    def after(module, args, out):
        if point.side == "pattern":
            fn(module.recorded()[-1])
            return None
        new = fn(split(out))
        return None if new is None else join(new, out)

    if point.side == "in":
        return point.module.register_forward_pre_hook(before)
    return point.module.register_forward_hook(after)


class ActivationCache(dict):
    """name -> the activation a run produced there (detached); `stack(kind)` lines up one point of every block."""

    def stack(self, kind: str, blocks: str = "blocks") -> torch.Tensor:  # (L, ...) e.g. "resid_post", "attn.z"
        layers = sorted(
            (int(name.split(".")[1]), value)
            for name, value in self.items()
            if name.startswith(f"{blocks}.") and name.split(".", 2)[2] == kind
        )
        if not layers:
            raise KeyError(f"no {blocks}.<i>.{kind} in this cache; run_with_cache(..., names=...) must include them")
        return torch.stack([value for _, value in layers])

    def residual_stream(self, blocks: str = "blocks") -> torch.Tensor:  # (L + 1, B, T, D)
        """The stream before the first block, then after each block."""
        return torch.cat([self[f"{blocks}.0.resid_pre"][None], self.stack("resid_post", blocks)])


def run_with_cache(
    model: nn.Module, *args: Any, names: Iterable[str] | Callable[[str], bool] | None = None, **kwargs: Any
) -> tuple[Any, ActivationCache]:
    """model(*args, **kwargs) and the activations at `names` (default: `default_names`; a function keeps the
    default names it accepts), each detached."""
    if names is None or callable(names):
        keep = names or (lambda _: True)
        names = [name for name in default_names(model) if keep(name)]
    cache = ActivationCache()

    def store(name: str) -> Hook:
        def fn(value: torch.Tensor) -> None:
            cache[name] = value.detach()

        return fn

    with hooks(model, {name: store(name) for name in names}):
        out = model(*args, **kwargs)
    return out, cache
