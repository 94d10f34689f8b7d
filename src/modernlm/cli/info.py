"""`modernlm info MODEL`: architecture, parameters by part, KV-cache bytes per token, the sampling defaults
(generation_config.json, or the fallback), forward FLOPs per token."""

from __future__ import annotations

import json

import numpy as np
import torch

from ..analysis import forward_flops, kv_cache_bytes, parameter_counts
from ..checkpoints.generation_config import as_dict
from ..checkpoints.sources import DEFAULT_MODEL
from .common import load_for, model_defaults


def cfg_generates(model) -> bool:
    return model.config.family in ("decoder", "seq2seq")


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="describe a model: architecture, parameters, KV cache, FLOPs")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help=f"model source (default: {DEFAULT_MODEL})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quantize", default=None, metavar="Q", help="int8, int4[-gN] or gguf: describe it quantized")
    p.set_defaults(func=run)


def describe(model: torch.nn.Module) -> dict:
    cfg = model.config
    if cfg.family not in ("decoder", "vlm"):  # a VLM's counts add its tower and projector to the decoder's
        return describe_member(model)
    counts = parameter_counts(cfg)
    from ..quant import describe as quantized
    from ..quant import is_quantized

    if is_quantized(model):  # the formula counts the float model; say what is kept instead
        return {**describe_config(cfg, counts), "weights": quantized(model)}
    if counts["total"] != sum(p.numel() for p in model.parameters()):
        raise RuntimeError("parameter formula disagrees with the model; please report this")
    return describe_config(cfg, counts)


def describe_config(cfg, counts: dict) -> dict:
    contexts = sorted({1, min(2048, cfg.max_seq_len), cfg.max_seq_len})
    return {
        "config": cfg.to_dict(),
        "parameters": counts,
        "kv_cache_bytes_per_token": {
            dt: kv_cache_bytes(cfg, dtype=getattr(torch, dt)) for dt in ("float32", "bfloat16")
        },
        "forward_flops_per_token": {str(t): forward_flops(cfg, seq_len=t)["per_token"] for t in contexts},
    }


def describe_member(model: torch.nn.Module) -> dict:
    """An encoder, encoder-decoder or ViT: parameters by part, FLOPs per token, what generation keeps."""
    from ..analysis.family import generation_cache_bytes, member_forward_flops, parameters_by_part

    cfg = model.config
    T = cfg.max_seq_len if cfg.family != "vit" else cfg.n_patches + 1
    flops = {str(T): member_forward_flops(cfg, T, target_len=T)["total"] // T}
    kv = generation_cache_bytes(cfg, 1, 1) if cfg.family == "seq2seq" else {}
    return {
        "config": cfg.to_dict(),
        "parameters": parameters_by_part(model),
        "kv_cache_bytes_per_token": kv,
        "forward_flops_per_token": flops,
    }


OPTIONS = ("sliding_window", "local_rope_theta", "qk_norm", "sandwich_norm", "parallel_block", "attn_softcap",
           "logit_softcap", "scale_embeddings", "attn_scale")  # fmt: skip


def shown(value):
    """A config value as printed: a float by the shortest text that gives the same float32 (GGUF stores float32:
    1e-05, not 9.999999747378752e-06)."""
    if isinstance(value, float) and value == value and float(np.float32(value)) == value:
        return str(np.float32(value))
    return value


def run(args) -> int:
    model = load_for(args, tokenizer=False)[0]
    info = describe(model)
    if cfg_generates(model):
        info["generation_config"] = as_dict(model_defaults(model))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cfg, counts = info["config"], info["parameters"]
    print(f"model: {args.model}  ({cfg['extra'].get('architecture', 'modernlm')}, {cfg['family']})")
    keys = (
        "vocab_size",
        "d_model",
        "n_layers",
        "n_heads",
        "n_kv_heads",
        "head_dim",
        "ffn",
        "ffn_hidden",
        "norm",
        "norm_eps",
        "norm_placement",
        "positions",
        "rope_theta",
        "rope_scaling",
        "tie_embeddings",
        "max_seq_len",
    )
    for key in keys:
        print(f"  {key:<16} {shown(cfg[key])}")
    for key in OPTIONS:  # the block options of the later decoders (Qwen3, Gemma, Falcon), where set
        if cfg.get(key) not in (None, False, 0):
            print(f"  {key:<16} {shown(cfg[key])}")
    print("parameters:")
    for part, n in counts.items():
        share = "" if part == "non_embedding" else f"  {100 * n / max(counts['total'], 1):5.1f}%"
        print(f"  {part:<16} {n:>14,}{share}")
    if "weights" in info:
        print(f"weights kept as:     {info['weights']}")
    if info["kv_cache_bytes_per_token"]:  # an encoder or a ViT keeps none
        print(
            "KV cache per token:  " + ", ".join(f"{b:,} B ({dt})" for dt, b in info["kv_cache_bytes_per_token"].items())
        )
    if "generation_config" in info:
        print(f"generation defaults: {model_defaults(model).describe()}")
    print("forward FLOPs per token, by context length:")
    for t, f in info["forward_flops_per_token"].items():
        print(f"  T={t:<8} {f / 1e6:12,.1f} MFLOP")
    return 0
