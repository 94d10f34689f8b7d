"""Models written out for other runtimes: GGUF files for llama.cpp (gguf.py). Sits above checkpoints/ (whose GGUF
names it inverts) and quant/ (whose quantized layers it dequantizes and whose GGUF blocks it writes)."""

from .gguf import export_gguf

__all__ = ["export_gguf"]
