"""The quantized loads `load_model(source, quantize=...)` makes (loading.py): `parse` reads the spec ("int8",
"int4", "int4-g64"... quantize a float load; "gguf"), and `load_gguf_kept` reads a GGUF file with its own quantized
blocks kept as they are (gguf_blocks.py), the rest as float.

"gguf" reads the GGUF file itself, not the float conversion cache (checkpoints/gguf_cache.py), since that cache holds
dequantized weights. Tensors of a type without a kernel here (Q5_*, Q6_K, the IQ types...) are dequantized to float
and the loader says so once; F32/F16/BF16 tensors (norms, small models) are float already.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..checkpoints.gguf import gguf_to_ours, read_gguf, unpermute_qk
from ..checkpoints.limits import check_finite
from ..model import Transformer
from .gguf_blocks import KEPT, unpack
from .modules import QuantEmbedding, QuantLinear, _swap
from .weights import DEFAULT_GROUP, QuantError, kind_class

log = logging.getLogger("modernlm")
FLOAT_TYPES = ("F32", "F16", "BF16")


def parse(spec: str) -> tuple[str, int | None | str]:
    """'int4' -> ('int4', 'default'); 'int4-g64' -> ('int4', 64); 'gguf' -> ('gguf', None). Raises QuantError."""
    if spec == "gguf":
        return "gguf", None
    kind, _, group = str(spec).partition("-g")
    kind_class(kind)
    if not group:
        return kind, "default"
    if not group.isdigit():
        raise QuantError(f"cannot read the group size of {spec!r}; write it as {kind}-g32 (or 64, 128)")
    return kind, int(group)


def load_gguf_kept(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A model whose Q8_0/Q4_0/Q4_1/Q4_K matrices stay in their blocks (int8 g32 / int4 g32); the rest in `dtype`."""
    path = Path(path)
    contents = read_gguf(path)
    tensors, shapes = contents.tensors, contents.shapes
    config = contents.config()
    permuted = contents.permuted_qk
    floats, kept, counts = {}, {}, {"kept": {}, "dequantized": {}}
    for name, tensor in tensors.items():
        ours = gguf_to_ours(name)
        if ours is None:
            continue
        heads = config.n_heads if ".attn_q." in name else config.n_kv_heads if ".attn_k." in name else None
        kind = tensor.tensor_type.name
        if kind in KEPT and len(shapes[name]) == 2:
            w = unpack(kind, tensor.data.reshape(shapes[name][0], -1), shapes[name][1])
            if permuted and heads:  # llama.cpp's Q/K row order: rows move whole, with their scales
                for buf in w._buffers:
                    w._buffers[buf] = unpermute_qk(w._buffers[buf], heads).contiguous()
            kept[ours] = w
            counts["kept"][kind] = counts["kept"].get(kind, 0) + 1
            continue
        weight = contents.dequantize(tensor)
        if permuted and heads:
            weight = unpermute_qk(weight, heads)
        floats[ours] = weight.to(dtype)
        if kind not in FLOAT_TYPES:
            counts["dequantized"][kind] = counts["dequantized"].get(kind, 0) + 1
    check_finite(floats, path)
    check_finite({f"{n}.{b}": t for n, w in kept.items() for b, t in w.named_buffers()}, path)  # block scales
    if counts["dequantized"]:
        log.info(
            "%s: kept quantized %s; dequantized to %s (no kernel here for these types): %s",
            path.name,
            counts["kept"],
            str(dtype).removeprefix("torch."),
            counts["dequantized"],
        )
    return _assemble(Transformer, config, floats, kept, dtype, counts, path)


def _assemble(cls, config, floats: dict, kept: dict, dtype: torch.dtype, counts: dict, path: Path) -> nn.Module:
    """Build on the meta device, put the quantized modules in, then the float tensors (assign=True, no copies)."""
    with torch.device("meta"):
        model = cls(config)
    _check_shapes(model, floats, kept, path)
    for name, w in kept.items():
        module = name.removesuffix(".weight")
        if module == "embed":
            model.embed = QuantEmbedding(w, dtype)
        else:
            bias = floats.pop(f"{module}.bias", None)
            _swap(model, module, QuantLinear(w, None if bias is None else nn.Parameter(bias, requires_grad=False)))
    model.load_state_dict(floats, strict=False, assign=True)
    model.reset_rope()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise QuantError(f"{path}: the GGUF file has no tensors for {left[:6]}; the file is incomplete, re-convert it")
    model.quantization = {"kind": "gguf", "group_size": 32, **counts}
    return model.eval()


def _check_shapes(model: nn.Module, floats: dict, kept: dict, path: Path) -> None:
    """Each tensor of the file against the shape the config gives it (torch's 'While copying the parameter' wall
    otherwise, or a kept matrix the wrong size that fails at the first product)."""
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    got = {n: tuple(t.shape) for n, t in floats.items()} | {n: (w.out_features, w.in_features) for n, w in kept.items()}
    wrong = [
        f"{n} is {shape}, the config needs {expected[n]}" if n in expected else f"{n} has no place in it"
        for n, shape in got.items()
        if shape != expected.get(n)
    ]
    if wrong:
        raise QuantError(
            f"{path}: the tensors do not fit the file's own config ({'; '.join(wrong[:3])}); the file is corrupt or "
            "was converted wrongly: download or convert it again"
        )


__all__ = ["DEFAULT_GROUP", "load_gguf_kept", "parse"]
