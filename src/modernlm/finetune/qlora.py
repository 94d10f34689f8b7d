"""QLoRA (Dettmers et al. 2023): LoRA adapters trained over a frozen, quantized base.

`apply_lora` puts a `QuantLoraLinear` on each target that `modernlm.quantize` (or `load_model(quantize=...)`) made a
`QuantLinear`: y = base(x) + (alpha / r) * B A x, the base's int8/int4 codes untouched (its product's gradient
reaches x through the dequantized weights, quant/modules.py), the adapters in float32. Adapters save and load in
PEFT's layout exactly as over a float base. They cannot be folded into integer codes: `merge_and_unload` gives a
float linear of the dequantized base plus B A (what a QLoRA model is published as).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers.linear import Linear, linear
from ..quant import QuantLinear
from .lora_linear import LoraError, LoraLinear


class QuantLoraLinear(LoraLinear):
    def __init__(self, base: QuantLinear, r: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.base = base.requires_grad_(False)
        kw = dict(device=base.qweight.scales.device, dtype=torch.float32 if base.bias is None else base.bias.dtype)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **kw))  # (out, r): zero, so output = base
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.merged = False

    @property
    def bias(self):
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        lora = linear(linear(self.dropout(x), self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype)) * self.scaling
        return self.base(x) + lora

    def merge(self) -> None:
        raise LoraError(
            "the base weights are quantized and cannot take B A in place; merge_and_unload() gives float layers "
            "(dequantized base + B A), or load the float base and load_adapter onto it"
        )

    unmerge = merge

    @torch.no_grad()
    def unloaded(self) -> nn.Linear:
        """A float Linear: the dequantized base weight plus the adapters' update."""
        dtype = self.lora_A.dtype
        plain = Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight = nn.Parameter((self.base.qweight.dequantize() + self.delta()).to(dtype))
        plain.bias = self.bias
        return plain

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, r={self.lora_A.shape[0]}, base={self.base.qweight.label()}"
