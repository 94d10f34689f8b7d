"""Interventions by hook, each a context manager: inside it every forward of the model runs changed, outside it the
model is as it was.

- `ablate_heads`: a head's output (its slice of the attention's z, before the output projection) set to zero, or
  to its mean over a reference run's batch and positions (mean ablation);
- `patch`: an activation replaced by the one another prompt produced there (activation patching), at every position
  or at some.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from .hooks import ActivationCache, Hook, hooks, resolve


@contextlib.contextmanager
def ablate_heads(
    model: nn.Module,
    heads: Iterable[tuple[int, int]],  # (layer, head) pairs
    *,
    mean: ActivationCache | None = None,  # a run_with_cache of reference inputs holding these layers' z: mean ablation
    blocks: str = "blocks",  # the stack: "blocks", or T5's "encoder" / "decoder"
    attn: str = "attn",  # or T5's "cross_attn"
) -> Iterator[None]:
    """Remove heads: their outputs zeroed (or set to their reference mean) before the output projection mixes them."""
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        by_layer[int(layer)].append(int(head))
    fns: dict[str, Hook] = {}
    for layer, chosen in by_layer.items():
        name = f"{blocks}.{layer}.{attn}.z"
        n_heads = resolve(model, name).heads
        bad = [h for h in chosen if not 0 <= h < n_heads]
        if bad:
            raise ValueError(f"head {bad[0]} of layer {layer} does not exist: the layer has heads 0..{n_heads - 1}")
        fill = None
        if mean is not None:
            if name not in mean:
                raise ValueError(f"mean ablation needs {name} in the reference cache: run_with_cache(..., names=[...])")
            fill = mean[name].flatten(0, -3).mean(0)  # (B, T, H, Dh) -> (H, Dh)
        fns[name] = _ablator(chosen, fill)
    with hooks(model, fns):
        yield


def _ablator(chosen: list[int], fill: torch.Tensor | None) -> Hook:
    def fn(z: torch.Tensor) -> torch.Tensor:  # (B, T, H, Dh)
        z = z.clone()
        z[..., chosen, :] = 0.0 if fill is None else fill[chosen].to(z.dtype)
        return z

    return fn


@contextlib.contextmanager
def patch(
    model: nn.Module,
    name: str,
    value: torch.Tensor,  # the activation another run produced at `name` (its cache's entry), the same shape
    positions: Sequence[int] | torch.Tensor | None = None,  # only these positions (dim 1); None: every position
) -> Iterator[None]:
    """Replace the activation at `name` by `value` (wholly, or at `positions` along the token dimension)."""
    resolve(model, name)  # the name checked before the model runs

    def fn(x: torch.Tensor) -> torch.Tensor:
        if positions is None:
            if tuple(value.shape) != tuple(x.shape):
                raise ValueError(
                    f"patching {name}: the value is {tuple(value.shape)} but this run's is {tuple(x.shape)}; give "
                    "positions= to patch some positions of prompts of different lengths"
                )
            return value.to(x.dtype)
        x = x.clone()
        x[:, positions] = value[:, positions].to(x.dtype)
        return x

    with hooks(model, {name: fn}):
        yield
