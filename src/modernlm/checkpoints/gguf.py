"""GGUF files in: llama.cpp's one-file checkpoints (metadata + tensors, often quantized) -> (ModelConfig, state dict).

Every tensor is dequantized to float32 with `gguf.quants.dequantize`, so any type that package reads (F32, F16, BF16,
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants, the IQ types) loads. Two conventions of llama.cpp's converter are undone:
- for the `llama` architecture it reorders the rows of Q and K within each head, because llama.cpp's RoPE rotates
  adjacent pairs (x0, x1), (x2, x3)... while Hugging Face's rotates halves (x_i, x_{i + Dh/2}); `unpermute_qk` puts
  them back. `qwen2` files use llama.cpp's "neox" RoPE, which is the halves convention, and are not reordered.
- Llama 3's RoPE scaling is stored as a `rope_freqs.weight` tensor of per-frequency divisors, not as metadata;
  `_llama3_scaling` recovers the scaling parameters from it.
The other architectures llama.cpp defines that are configuration over our decoder (ARCHITECTURES): `qwen3` (QK-norm),
`phi3` (fused attn_qkv, and ffn_up holding gate and up), `gemma2` / `gemma3` (norm gains stored as 1 + w, which is what
our norms hold; the soft-caps, window and layer pattern as llama.cpp sets them: one global layer in 2 for Gemma 2, in 6
for Gemma 3, whose local layers rotate with base 10000; queries scaled by 1/sqrt(D / H) for the 27B models, by
1/sqrt(head_dim) otherwise), `falcon` (the 7B layout: LayerNorm, parallel attention and MLP off one norm, fused
attn_qkv; GELU taken exact as Falcon was trained, where llama.cpp computes the tanh approximation).
GGUF shapes are written innermost-first ([in, out]); `gguf.GGUFReader` gives numpy arrays in torch order (out, in).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, ModelConfig
from .base import CheckpointError, load_bar
from .decoders import split_qkv
from .names import NameTable


class GGUFError(CheckpointError):
    """A GGUF file that cannot be read as one of our models; the message names the file, the value and the fix."""


@dataclass(frozen=True)
class _Arch:
    hf_name: str  # the transformers class a Hugging Face checkpoint of it would name
    permuted_qk: bool  # llama.cpp's converter reordered the Q/K rows (llama RoPE); undone on load
    fields: tuple[tuple[str, Any], ...] = ()  # our config fields the architecture fixes


_GEMMA = (("ffn", "geglu"), ("sandwich_norm", True), ("scale_embeddings", True))


# `general.architecture` -> how its tensors were written. All share llama's tensor names and metadata keys.
# llama.cpp writes Mistral models as `llama`; `mistral` files are read the way transformers reads them (not reordered).
ARCHITECTURES = {
    "llama": _Arch("LlamaForCausalLM", permuted_qk=True),
    "mistral": _Arch("MistralForCausalLM", permuted_qk=False),
    "qwen2": _Arch("Qwen2ForCausalLM", permuted_qk=False),
    "qwen3": _Arch("Qwen3ForCausalLM", permuted_qk=False, fields=(("qk_norm", True),)),
    "phi3": _Arch("Phi3ForCausalLM", permuted_qk=False),
    "gemma2": _Arch("Gemma2ForCausalLM", permuted_qk=False, fields=_GEMMA),
    "gemma3": _Arch("Gemma3ForCausalLM", permuted_qk=False, fields=(*_GEMMA, ("qk_norm", True))),
    "falcon": _Arch("FalconForCausalLM", permuted_qk=False,
                    fields=(("norm", "layernorm"), ("ffn", "gelu_erf"), ("parallel_block", True))),  # fmt: skip
}
_LARGEST = {"gemma2": 46, "gemma3": 62}  # layers of the 27B models, whose queries llama.cpp scales by 1/sqrt(D / H)

# ---- names ------------------------------------------------------------------------------------------------------
# (GGUF name, our name); `{i}` is the layer index. The one place GGUF names meet ours.
NAME_TABLE = NameTable([
    ("token_embd.weight", "embed.weight"),
    ("blk.{i}.attn_norm.{t}", "blocks.{i}.attn_norm.{t}"),
    ("blk.{i}.attn_qkv.{t}", "blocks.{i}.attn.qkv.{t}"),  # fused (phi3, falcon): split on load
    ("blk.{i}.attn_q_norm.weight", "blocks.{i}.attn.q_norm.weight"),
    ("blk.{i}.attn_k_norm.weight", "blocks.{i}.attn.k_norm.weight"),
    ("blk.{i}.post_attention_norm.weight", "blocks.{i}.attn_post_norm.weight"),
    ("blk.{i}.post_ffw_norm.weight", "blocks.{i}.ffn_post_norm.weight"),
    *[
        (f"blk.{{i}}.attn_{g}.{t}", f"blocks.{{i}}.attn.{p}_proj.{t}")
        for g, p in (("q", "q"), ("k", "k"), ("v", "v"), ("output", "o"))
        for t in ("weight", "bias")
    ],
    ("blk.{i}.ffn_norm.weight", "blocks.{i}.ffn_norm.weight"),
    *[
        (f"blk.{{i}}.ffn_{p}.{t}", f"blocks.{{i}}.ffn.{p}_proj.{t}")
        for p in ("gate", "up", "down")
        for t in ("weight", "bias")
    ],
    ("output_norm.{t}", "norm.{t}"),
    ("output.weight", "lm_head.weight"),
])  # fmt: skip
# Tensors that describe the config rather than weights: read into it (rope_freqs) or recomputed (attn_rot_embd).
_NOT_WEIGHTS = re.compile(r"^(rope_freqs\.weight|blk\.\d+\.attn_rot_embd|rope_factors_(long|short)\.weight)$")


def gguf_to_ours(name: str) -> str | None:
    """Our state-dict name for a GGUF tensor name, or None if it is not one of ours."""
    return NAME_TABLE.ours(name)


# ---- reading ----------------------------------------------------------------------------------------------------
def _open(path: str | os.PathLike):
    """A `gguf.GGUFReader` over the file (memory-mapped), or GGUFError saying what is wrong with the file."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise GGUFError(f"GGUF file {path} {what}; give the path of a .gguf file")
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as e:
        raise GGUFError(
            f"{path} is truncated or not a GGUF file ({type(e).__name__}: {e}); download it again, "
            "and check that the whole file arrived (its size should match the source's)"
        ) from e


def _field_value(field) -> Any:
    """One metadata value as plain Python: str, int, float, bool, or a list of them."""
    from gguf import GGUFValueType

    def scalar(part: np.ndarray, kind: GGUFValueType) -> Any:
        return bytes(part).decode("utf-8") if kind == GGUFValueType.STRING else part[0].item()

    if field.types[0] == GGUFValueType.ARRAY:
        return [scalar(field.parts[i], field.types[-1]) for i in field.data]
    return scalar(field.parts[field.data[0]], field.types[0])


def _metadata(reader) -> dict[str, Any]:
    return {name: _field_value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Every metadata key of a GGUF file (`general.*`, `{arch}.*`, `tokenizer.*`) with its value as plain Python."""
    return read_gguf(path).meta


@dataclass(frozen=True)
class GGUFContents:
    """A GGUF file opened once (memory-mapped): its metadata as plain Python and its tensors by name, in torch's shape
    order. Nothing is read from the tensors' data until `dequantize` (or a caller's own unpacking) asks for it."""

    path: Path
    reader: Any  # gguf.GGUFReader
    meta: dict[str, Any]

    @property
    def tensors(self) -> dict[str, Any]:
        return {t.name: t for t in self.reader.tensors}

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each tensor's shape in torch order (GGUF lists dims innermost-first)."""
        return {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in self.reader.tensors}

    @property
    def permuted_qk(self) -> bool:
        """Whether llama.cpp's converter reordered Q/K rows for this architecture (`unpermute_qk` undoes it)."""
        return ARCHITECTURES[_architecture(self.meta, self.path)].permuted_qk

    def dequantize(self, tensor) -> torch.Tensor:
        """A float32 tensor in torch's shape order from one of the file's tensors (a name or a `ReaderTensor`)."""
        return _dequantize(self.tensors[tensor] if isinstance(tensor, str) else tensor, self.path)

    def config(self) -> ModelConfig:
        """Our config from the metadata and the tensor shapes; of the data, only `rope_freqs.weight` (Dh / 2 floats,
        Llama 3's scaling) is read."""
        rope_freqs = self.dequantize("rope_freqs.weight") if "rope_freqs.weight" in self.tensors else None
        return config_from_gguf(self.meta, self.shapes, rope_freqs, self.path)


def read_gguf(path: str | os.PathLike) -> GGUFContents:
    """The file opened and its metadata parsed, once for the tokenizer, the config and the weights (parsing takes
    seconds): a second call on the unchanged file returns the same contents."""
    path = Path(path)
    try:
        stat = path.resolve().stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        key = (str(path), -1, -1)  # _open reports the missing file
    reader, meta = _read_cached(*key)
    return GGUFContents(path, reader, meta)


@lru_cache(maxsize=1)
def _read_cached(path: str, size: int, mtime_ns: int) -> tuple[Any, dict[str, Any]]:
    reader = _open(path)
    return reader, _metadata(reader)


def _dequantize(tensor, where: Path) -> torch.Tensor:
    """A float32 torch tensor in torch's shape order from one `ReaderTensor`, whatever its GGML type."""
    from gguf.quants import dequantize

    kind = tensor.tensor_type
    try:
        values = dequantize(tensor.data, kind)
    except NotImplementedError as e:
        raise GGUFError(
            f"{where}: tensor {tensor.name!r} has type {kind.name}, which gguf {_gguf_version()} cannot dequantize; "
            "upgrade the gguf package, or re-quantize the file to a common type (F16, Q8_0, Q4_K_M...)"
        ) from e
    if not np.issubdtype(values.dtype, np.floating):
        raise GGUFError(f"{where}: tensor {tensor.name!r} has the integer type {kind.name}; model weights are floats")
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # GGUF lists dims innermost-first
    values = np.asarray(values, dtype=np.float32).reshape(shape)
    return torch.from_numpy(values if values.flags.writeable else values.copy())


def _gguf_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("gguf")


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row reordering: w (n_head * Dh, ...) from pairs-adjacent back to halves order.

    The converter does w.reshape(n_head, 2, Dh/2, ...).swapaxes(1, 2); this is its inverse."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)  # (n_head * Dh, ...)


# ---- config -----------------------------------------------------------------------------------------------------
def _architecture(meta: dict[str, Any], where: Path) -> str:
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(
            f"{where}: unsupported GGUF architecture {arch!r}; supported: {', '.join(ARCHITECTURES)} "
            "(decoders: SmolLM, Llama 2/3, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3, Falcon)"
        )
    return arch


def config_from_gguf(
    meta: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    rope_freqs: torch.Tensor | None = None,
    where: Path = Path("?"),
) -> ModelConfig:
    """ModelConfig from GGUF metadata and the tensor shapes (torch order) of the file."""
    arch = _architecture(meta, where)

    def key(name: str, default: Any = KeyError) -> Any:
        if f"{arch}.{name}" in meta:
            return meta[f"{arch}.{name}"]
        if default is KeyError:
            raise GGUFError(
                f"{where}: the metadata key {arch}.{name} is missing; the file is incomplete, re-convert it"
            )
        return default

    def number(name: str, default: Any = KeyError, kind: type = int) -> Any:
        value = key(name, default)
        if value is None and default is None:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        if not (ok and (kind is float or isinstance(value, int))):
            what = "a positive integer" if kind is int else "a positive number"
            raise GGUFError(
                f"{where}: the metadata key {arch}.{name} must be {what}, got {value!r}; re-convert the file"
            )
        return value

    if "token_embd.weight" not in shapes:
        raise GGUFError(f"{where}: the tensor token_embd.weight is missing; the file is incomplete, re-convert it")
    d_model, n_heads = number("embedding_length"), number("attention.head_count")
    head_dim = number("attention.key_length", None) or number("rope.dimension_count", None) or d_model // n_heads
    if key("rope.dimension_count", head_dim) != head_dim:
        raise GGUFError(
            f"{where}: RoPE covers {key('rope.dimension_count')} of {head_dim} head dimensions (partial rotary), "
            "which Llama-style models do not use; this file is not supported"
        )
    theta = float(number("rope.freq_base", 10000.0, float))
    try:
        return _gguf_config(meta, shapes, key, number, d_model, n_heads, head_dim, theta, rope_freqs, where, arch)
    except ConfigError as e:
        raise GGUFError(f"{where}: {e}; re-convert the file") from None


def _gguf_config(meta, shapes, key, number, d_model, n_heads, head_dim, theta, rope_freqs, where, arch) -> ModelConfig:
    fields = dict(
        vocab_size=shapes["token_embd.weight"][0],  # (V, D)
        d_model=d_model,
        n_layers=key("block_count"),
        n_heads=n_heads,
        n_kv_heads=key("attention.head_count_kv", n_heads),
        head_dim=head_dim,
        ffn="swiglu",
        ffn_hidden=key("feed_forward_length"),
        norm="rmsnorm",
        norm_eps=float(number("attention.layer_norm_rms_epsilon", 1e-5, float)),
        rope_theta=theta,
        rope_scaling=_rope_scaling(key, rope_freqs, head_dim, theta, where),
        qkv_bias="blk.0.attn_q.bias" in shapes,
        out_bias="blk.0.attn_output.bias" in shapes,
        mlp_bias="blk.0.ffn_down.bias" in shapes,
        tie_embeddings="output.weight" not in shapes,
        max_seq_len=key("context_length", 2048),
        extra={"architecture": ARCHITECTURES[arch].hf_name, "gguf_architecture": arch, "format": "gguf"},
    )
    fields.update(ARCHITECTURES[arch].fields)
    fields.update(_arch_fields(arch, fields, key, number, shapes, where))
    return ModelConfig(**fields).validate()


def _arch_fields(arch: str, fields: dict[str, Any], key, number, shapes, where: Path) -> dict[str, Any]:
    """What an architecture reads besides llama's keys: Falcon's LayerNorm epsilon and fused biases, the windows,
    layer patterns, soft-caps, local RoPE base and query scale of Gemma 2 / 3, Phi-3's window."""
    out: dict[str, Any] = {}
    if arch == "falcon":
        if "blk.0.attn_norm_2.weight" in shapes:
            raise GGUFError(f"{where}: a Falcon with two norms per block (new_decoder_architecture: 40B / 180B) is "
                            "not supported; the 7B layout is")  # fmt: skip
        biased = "blk.0.attn_qkv.bias" in shapes
        out.update(norm_eps=float(number("attention.layer_norm_epsilon", 1e-5, float)), qkv_bias=biased)
    if arch == "phi3" and any(name.startswith("rope_factors") for name in shapes):
        raise GGUFError(f"{where}: Phi-3's LongRoPE factors (rope_factors_long / short) are not supported in GGUF "
                        "files; load the Hugging Face checkpoint, whose LongRoPE is")  # fmt: skip
    window = key("attention.sliding_window", 0) if arch in ("phi3", "gemma2", "gemma3") else 0
    if window and window < fields["max_seq_len"]:
        out["sliding_window"] = window
        if arch in ("gemma2", "gemma3"):
            every = 2 if arch == "gemma2" else 6
            types = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(fields["n_layers"])]
            out["layer_types"] = types if "full_attention" in types else None
            out["local_rope_theta"] = 10000.0 if arch == "gemma3" else None
    if arch == "gemma2":
        out.update(attn_softcap=key("attn_logit_softcapping", None), logit_softcap=key("final_logit_softcapping", None))
    if fields["n_layers"] == _LARGEST.get(arch):
        out["attn_scale"] = (fields["d_model"] / fields["n_heads"]) ** -0.5
    return out


def _rope_scaling(key, rope_freqs: torch.Tensor | None, head_dim: int, theta: float, where: Path) -> dict | None:
    """RoPE scaling from `{arch}.rope.scaling.*` (linear, yarn) or from a `rope_freqs.weight` tensor (Llama 3)."""
    kind = key("rope.scaling.type", None)
    factor = key("rope.scaling.factor", None)
    if kind is None and key("rope.scale_linear", None) is not None:  # how older files spelled linear scaling
        kind, factor = "linear", key("rope.scale_linear")
    if kind == "linear" and factor is not None and float(factor) != 1.0:
        return {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        scaling = {"rope_type": "yarn", "factor": float(factor)}
        scaling["original_max_position_embeddings"] = key("rope.scaling.original_context_length")
        for gguf_key, ours in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if key(f"rope.scaling.{gguf_key}", None) is not None:
                scaling[ours] = float(key(f"rope.scaling.{gguf_key}"))
        return scaling
    if kind not in (None, "none", "linear"):
        raise GGUFError(
            f"{where}: RoPE scaling {kind!r} is not supported; supported: linear, yarn, Llama 3 (rope_freqs.weight)"
        )
    return _llama3_scaling(rope_freqs, head_dim, theta, where) if rope_freqs is not None else None


def _llama3_scaling(rope_freqs: torch.Tensor, head_dim: int, theta: float, where: Path) -> dict | None:
    """Llama 3's scaling parameters, recovered from the (Dh/2,) divisors llama.cpp applies to each frequency.

    Every Llama 3.x release uses low_freq_factor 1, high_freq_factor 4 and an original context of 8192, with factor
    8 (3.1, 3.3) or 32 (3.2); the factor is the largest divisor. The guess is checked by recomputing the divisors."""
    from ..layers.rope import inverse_frequencies

    factors = rope_freqs.double().flatten()  # (Dh/2,)
    if torch.allclose(factors, torch.ones_like(factors)):
        return None
    scaling = {
        "rope_type": "llama3",
        "factor": float(factors.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    plain, _ = inverse_frequencies(head_dim, theta, None)
    scaled, _ = inverse_frequencies(head_dim, theta, scaling)
    if factors.numel() != plain.numel() or not torch.allclose(plain.double() / scaled.double(), factors, rtol=1e-4):
        raise GGUFError(
            f"{where}: rope_freqs.weight holds RoPE frequency divisors that match no Llama 3 scaling "
            f"(tried factor {scaling['factor']:g}, low 1, high 4, original context 8192); this file is not supported"
        )
    return scaling


# ---- the loader -------------------------------------------------------------------------------------------------
def load_gguf(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a GGUF file into our config and a float32 state dict in Hugging Face's (rotate-half) layout."""
    path = Path(path)
    contents = read_gguf(path)
    arch = _architecture(contents.meta, path)
    tensors = contents.tensors
    unknown = [n for n in tensors if gguf_to_ours(n) is None and not _NOT_WEIGHTS.match(n)]
    if unknown:
        raise GGUFError(
            f"{path}: tensors {unknown[:6]} have no place in a {arch} model of ours; the file is not a plain "
            f"Llama-style decoder (supported architectures: {', '.join(ARCHITECTURES)})"
        )
    config = contents.config()
    state_dict: dict[str, torch.Tensor] = {}
    bar = load_bar(sum(int(getattr(t, "n_bytes", 0)) for t in tensors.values()), f"reading {path.name}")
    for name, tensor in tensors.items():
        bar.update(int(getattr(tensor, "n_bytes", 0)))
        ours = gguf_to_ours(name)
        if ours is None:
            continue
        weight = contents.dequantize(tensor)  # (out, in) or (D,)
        if contents.permuted_qk and ".attn_q." in name:
            weight = unpermute_qk(weight, config.n_heads)  # (H * Dh, D)
        elif contents.permuted_qk and ".attn_k." in name:
            weight = unpermute_qk(weight, config.n_kv_heads)  # (K * Dh, D)
        state_dict[ours] = weight
    bar.close()
    return config, _split_fused(config, state_dict, arch)


def _split_fused(config: ModelConfig, state: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Fused attn_qkv ([q | k | v] rows, as llama.cpp's converter writes Phi-3 and Falcon) into q, k, v; Phi-3's
    ffn_up ([gate | up] rows) into gate and up."""
    out = {}
    for name, tensor in state.items():
        if ".attn.qkv." in name:
            for p, part in zip("qkv", split_qkv(config, tensor), strict=True):
                out[name.replace(".attn.qkv.", f".attn.{p}_proj.")] = part
        elif arch == "phi3" and ".ffn.up_proj." in name:
            out[name.replace(".up_proj.", ".gate_proj.")], out[name] = tensor.chunk(2, dim=0)  # (2F, D) -> (F, D) x2
        else:
            out[name] = tensor
    return out


def tokenizer_from_gguf(path: str | os.PathLike):
    """The tokenizer stored in a GGUF file's metadata (a byte-level BPE or SentencePiece vocabulary, its chat
    template); a template beside the file is `chat_template_beside`'s, which the loader adds."""
    from ..tokenizer import Tokenizer

    return Tokenizer.from_gguf_metadata(read_gguf_metadata(path), path)


CHAT_TEMPLATE_FILE = "chat_template.jinja"


def chat_template_beside(path: str | os.PathLike) -> str | None:
    """The chat template in `chat_template.jinja` next to a GGUF file, for a file whose metadata has none (the
    embedded Gemma 3 270M's, written there by `sources.assembled`; a user may put one beside any GGUF file)."""
    from ..text import read_strict

    beside = Path(path).parent / CHAT_TEMPLATE_FILE
    return read_strict(beside) if beside.is_file() else None
