"""Weight-only quantization: int8 and int4 linears swapped in like LoRA, GGUF blocks kept as they are, their kernels
and plain twins. `quantize(model, "int8" | "int4", group_size=...)`; `load_model(..., quantize=...)` calls it."""

from .kernels import plain
from .modules import (
    QuantEmbedding,
    QuantLinear,
    dequantize_model,
    describe,
    is_quantized,
    model_bytes,
    quantize,
    quantized_modules,
    summary,
)
from .weights import KINDS, Int4Weight, Int8Weight, QuantError, QuantWeight

__all__ = [
    "KINDS",
    "Int4Weight",
    "Int8Weight",
    "QuantEmbedding",
    "QuantError",
    "QuantLinear",
    "QuantWeight",
    "dequantize_model",
    "describe",
    "is_quantized",
    "model_bytes",
    "plain",
    "quantize",
    "quantized_modules",
    "summary",
]
