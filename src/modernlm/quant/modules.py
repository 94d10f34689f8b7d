"""Quantized modules swapped into a model in place, as LoRA swaps its linears (DESIGN rule 3: no second model class).

`quantize(model, "int8" | "int4", group_size=...)` replaces every `nn.Linear` by a `QuantLinear` holding a
`QuantWeight` (weights.py) and the same bias Parameter. The output head takes int8 per channel whatever the kind, as
llama.cpp keeps it at 6-8 bits: it is the layer most sensitive to rounding, and its rows are a tied model's
embedding, which `QuantEmbedding` then serves from the same codes (a lookup dequantizes only the rows it reads).
Every check runs before the first layer is touched.
"""

from __future__ import annotations

import torch
from torch import nn

from .weights import DEFAULT_GROUP, Int8Weight, QuantError, QuantWeight, kind_class

HEAD_KIND, HEAD_GROUP = "int8", None


class _QuantMatmul(torch.autograd.Function):
    """x @ W.T with W frozen: the gradient reaches x (LoRA over a quantized base, QLoRA), never the codes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: QuantWeight) -> torch.Tensor:  # (M, K) -> (M, N)
        ctx.weight = weight
        return weight.matmul(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # (M, N) -> (M, K)
        return grad @ ctx.weight.dequantize(torch.float32).to(grad.dtype), None


def quant_matmul(weight: QuantWeight, x: torch.Tensor) -> torch.Tensor:
    """(..., K) -> (..., N) through the weight's kernel; differentiable in x."""
    x2 = x.reshape(-1, x.shape[-1])  # (M, K)
    y = _QuantMatmul.apply(x2, weight) if torch.is_grad_enabled() and x.requires_grad else weight.matmul(x2)
    return y.reshape(*x.shape[:-1], weight.out_features)


class QuantLinear(nn.Module):
    """A frozen linear layer over quantized weights: y = x @ dequantize(W).T + b."""

    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.qweight = weight
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else nn.Parameter(bias)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.qweight.in_features

    @property
    def out_features(self) -> int:
        return self.qweight.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = quant_matmul(self.qweight, x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def dequantized(self) -> nn.Linear:
        """A plain nn.Linear with the dequantized weights (the twin as a module)."""
        from ..layers.linear import Linear

        plain = Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight = nn.Parameter(self.qweight.dequantize(), requires_grad=False)
        plain.bias = self.bias
        return plain


class QuantEmbedding(nn.Module):
    """A token embedding over quantized rows; `project(x)` is the tied output head over the same codes."""

    def __init__(self, weight: QuantWeight, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.qweight = weight
        self.dtype = dtype  # of the vectors a lookup returns (the model's float dtype)
        self.num_embeddings, self.embedding_dim = weight.out_features, weight.in_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, D)
        return self.qweight.rows(ids, self.dtype)

    def project(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., V)
        return quant_matmul(self.qweight, x)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.qweight.label()}"


# ---- inspecting ---------------------------------------------------------------------------------------------------
def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantEmbedding))}


def is_quantized(model: nn.Module) -> bool:
    return bool(quantized_modules(model))


def summary(model: nn.Module) -> dict[str, int]:
    """{label: number of matrices} of what is kept quantized, plus 'float' for the linears left in float."""
    out: dict[str, int] = {}
    for m in quantized_modules(model).values():
        out[m.qweight.label()] = out.get(m.qweight.label(), 0) + 1
    floats = sum(1 for m in model.modules() if isinstance(m, nn.Linear))
    if floats:
        out["float"] = floats
    return out


def describe(model: nn.Module) -> str:
    """What the weights are kept as, in words: 'int4 g32 x210, int8 g32 x1; float32 norms (61 MB)'."""
    parts = [f"{label} x{n}" for label, n in summary(model).items() if label != "float"]
    floats = summary(model).get("float")
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    rest = f"{dtype} linears x{floats} and norms" if floats else f"{dtype} norms"
    kept = ", ".join(parts) if parts else "no quantized matrices"
    return f"{kept}; {rest} ({model_bytes(model) / 2**20:.1f} MiB)"


def model_bytes(model: nn.Module) -> int:
    """Bytes of the weights as stored (the state dict: float parameters plus quantized codes, scales and zeros; no
    RoPE tables, no kernels' copies), each tensor once."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


# ---- swapping -----------------------------------------------------------------------------------------------------
def quantize(model: nn.Module, kind: str, group_size: int | None | str = "default") -> nn.Module:
    """Swap the model's linears (and a tied embedding) for quantized ones in place; returns the model.

    `kind`: "int8" (symmetric; per output channel by default, or `group_size` 32/64/128) or "int4" (asymmetric
    groups of `group_size` 32 (default), 64 or 128). Raises QuantError for an unknown kind, a group size that does
    not divide a layer's width, a model already quantized or carrying LoRA adapters, before changing anything."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize takes a model (a torch.nn.Module) first, then the kind; got {type(model).__name__}")
    cls = kind_class(kind)
    group_size = DEFAULT_GROUP[kind] if group_size == "default" else group_size
    if is_quantized(model):
        raise QuantError(
            f"the model is already quantized ({', '.join(summary(model))}); load a fresh float model to quantize it "
            f"to {kind}"
        )
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n}
    if any(hasattr(m, "lora_A") for m in linears.values()):
        raise QuantError("the model carries LoRA adapters; quantize the base first, then apply LoRA (QLoRA)")
    head = "lm_head" if "lm_head" in linears else None
    tied = head is None and getattr(getattr(model, "config", None), "tie_embeddings", False)
    for name, m in linears.items():  # every check before the first swap
        (Int8Weight if name == head else cls).check(
            m.out_features, m.in_features, HEAD_GROUP if name == head else group_size, name
        )
    for name, m in linears.items():
        weight = Int8Weight.quantize(m.weight, HEAD_GROUP) if name == head else cls.quantize(m.weight, group_size)
        _swap(model, name, QuantLinear(weight, m.bias))
    if tied and isinstance(getattr(model, "embed", None), nn.Embedding):
        table = model.embed.weight
        model.embed = QuantEmbedding(Int8Weight.quantize(table, HEAD_GROUP), table.dtype)
    model.quantization = {"kind": kind, "group_size": group_size, "head": HEAD_KIND}
    return model


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def dequantize_model(model: nn.Module) -> nn.Module:
    """Put plain float modules back (the dequantized weights); the twin of a whole quantized model."""
    for name, m in quantized_modules(model).items():
        if isinstance(m, QuantLinear):
            _swap(model, name, m.dequantized())
        else:
            emb = nn.Embedding(m.num_embeddings, m.embedding_dim, device="meta")
            emb.weight = nn.Parameter(m.qweight.dequantize().to(m.dtype))
            _swap(model, name, emb)
    model.__dict__.pop("quantization", None)
    return model
