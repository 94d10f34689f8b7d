"""The LoRA layer and its error, below both lora.py (which swaps it in, saves and loads it) and qlora.py (its twin over
a quantized base): `LoraLinear` is an nn.Linear with a low-rank update, y = W x + b + (alpha / r) * B A x.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers.linear import linear


class LoraError(ValueError):
    """A LoRA setting or adapter file that cannot work; the message says which and how to fix it."""


class LoraLinear(nn.Linear):
    """An nn.Linear with a low-rank update. `weight` and `bias` are the base module's own Parameters (frozen)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: no copy, same state-dict names
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **kw))  # (out, r): zero, so output = base
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's (and nn.Linear's) initialisation
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + linear(linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta(self) -> torch.Tensor:  # (out, in)
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.weight += self.delta().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight -= self.delta().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, r={self.lora_A.shape[0]}, merged={self.merged}"
