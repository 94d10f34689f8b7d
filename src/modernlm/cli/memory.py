"""`modernlm memory MODEL`: training memory (parameters, gradients, optimizer states, activations with and without
activation checkpointing) and KV-cache bytes, for a preset, a config JSON or a model."""

from __future__ import annotations

import json

import torch

from ..analysis import kv_cache_bytes, training_memory
from ..analysis.memory import OPTIMIZER_STATES, PRECISIONS
from ..analysis.params import adapter_parameters
from ..config import PRESETS, ModelConfig
from . import positive_int
from .flops import resolve_config


def add_parser(sub) -> None:
    p = sub.add_parser("memory", help="training memory by part and KV-cache bytes")
    p.add_argument("model", help=f"a preset ({', '.join(PRESETS)}), a ModelConfig JSON file, or a model source")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--seq-len", type=positive_int, default=None, help="default: the model's max_seq_len")
    p.add_argument("--precision", default="bf16", choices=list(PRECISIONS), help="bf16/fp16: autocast (default bf16)")
    p.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZER_STATES))
    p.add_argument("--device", default="cuda", help="cuda or cpu: sets the dropout-mask size and attention kernel")
    p.add_argument("--kv-dtype", default="bfloat16", help="dtype of the KV cache (default bfloat16)")
    p.add_argument("--lora", metavar="TARGETS", help="LoRA fine-tuning: the adapted projections, e.g. q_proj,v_proj")
    p.add_argument("--lora-r", type=positive_int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--quantize", default=None, metavar="Q", help="QLoRA: the frozen base in int8 or int4 (with --lora)")
    p.add_argument(
        "--ppo", metavar="TARGETS", help="PPO's four models: full copies vs shared frozen bases + LoRA on TARGETS"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def memory_report(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    precision: str,
    optimizer: str,
    device: str,
    kv_dtype: str,
    adapters: dict[str, int] | None = None,
    quantize: str | None = None,
) -> dict:
    kw = dict(precision=precision, optimizer=optimizer, device=device, adapters=adapters, quantize=quantize)
    if adapters is not None:
        kw["trainable_parameters"] = adapter_parameters(cfg, adapters)
    dtype = getattr(torch, kv_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown kv dtype {kv_dtype!r}; use e.g. float32, bfloat16, float16")
    return {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "precision": precision,
        "optimizer": optimizer,
        "training": training_memory(cfg, batch_size, seq_len, activation_checkpointing=False, **kw),
        "training_checkpointed": training_memory(cfg, batch_size, seq_len, activation_checkpointing=True, **kw),
        "kv_cache_bytes": kv_cache_bytes(cfg, tokens=seq_len, batch_size=batch_size, dtype=dtype),
        "kv_cache_bytes_per_token": kv_cache_bytes(cfg, dtype=dtype),
    }


def run(args) -> int:
    cfg = resolve_config(args.model)
    if cfg.family != "decoder":
        raise ValueError(
            f"the training-memory model covers the decoder; {args.model} is of family {cfg.family!r}. "
            "`modernlm info` gives its parameters, FLOPs and (encoder-decoder) generation cache"
        )
    seq_len = args.seq_len or cfg.max_seq_len
    if getattr(args, "ppo", None):
        return _ppo(args, cfg, seq_len)
    adapters = None
    if args.lora:
        if args.lora_r < 1:
            raise ValueError(f"--lora-r must be >= 1, got {args.lora_r}")
        adapters = dict.fromkeys((t.strip() for t in args.lora.split(",") if t.strip()), args.lora_r)
    if args.quantize and not adapters:
        raise ValueError("--quantize counts a QLoRA run: give the adapted projections with --lora as well")
    report = memory_report(
        cfg,
        args.batch_size,
        seq_len,
        args.precision,
        args.optimizer,
        args.device,
        args.kv_dtype,
        adapters,
        args.quantize,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    lora = f", LoRA r={args.lora_r} on {','.join(adapters)}" if adapters else ""
    lora += f" over a {args.quantize} base" if args.quantize else ""
    print(f"{args.model}: batch {args.batch_size} x {seq_len} tokens, {args.precision}, {args.optimizer}{lora}")
    print(f"  {'training memory':<28} {'plain':>12} {'checkpointed':>14}")
    plain, ckpt = report["training"], report["training_checkpointed"]
    for part in plain:
        print(f"  {part:<28} {_gib(plain[part]):>12} {_gib(ckpt[part]):>14}")
    print(
        f"  KV cache ({args.kv_dtype}): {_gib(report['kv_cache_bytes'])} for the batch, "
        f"{report['kv_cache_bytes_per_token']:,} B per token"
    )
    return 0


def _ppo(args, cfg: ModelConfig, seq_len: int) -> int:
    from ..alignment.memory import PARTS, ppo_memory

    adapters = dict.fromkeys((t.strip() for t in args.ppo.split(",") if t.strip()), args.lora_r)
    report = ppo_memory(cfg, args.batch_size, seq_len, adapters, args.precision, args.optimizer, args.device)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.model}: PPO (actor, reference, reward model, critic), batch {args.batch_size} x {seq_len} tokens, "
          f"{args.precision}, {args.optimizer}, LoRA r={args.lora_r} on {','.join(adapters)}")  # fmt: skip
    names = list(report)
    print(f"  {'':<18}" + "".join(f"{n:>28}" for n in names))
    for part in (*PARTS, "total", "rollout_kv_cache"):
        print(f"  {part:<18}" + "".join(f"{_gib(report[n][part]):>28}" for n in names))
    return 0


def _gib(n: int) -> str:
    return f"{n / 2**30:,.3f} GiB"
