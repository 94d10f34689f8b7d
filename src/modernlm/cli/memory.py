"""`modernlm memory MODEL`: training memory (parameters, gradients, optimizer states, activations with and without
activation checkpointing) and KV-cache bytes, for a preset, a config JSON or a model; for an encoder, an
encoder-decoder or a ViT, its step's parameters, gradients, optimizer states and activations (analysis/family.py)."""

from __future__ import annotations

import functools
import json

import torch

from ..analysis import kv_cache_bytes, training_memory
from ..analysis.memory import OPTIMIZER_STATES, PARALLEL_MODES, PRECISIONS, per_rank_memory
from ..analysis.params import adapter_parameters
from ..config import PRESETS, ModelConfig
from . import positive_int
from .flops import resolve_config


def add_parser(sub) -> None:
    p = sub.add_parser("memory", help="training memory by part and KV-cache bytes")
    p.add_argument("model", help=f"a preset ({', '.join(PRESETS)}), a ModelConfig JSON file, or a model source")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--seq-len", type=positive_int, default=None, help="default: the model's max_seq_len")
    p.add_argument("--target-len", type=positive_int, default=None, help="an encoder-decoder's decoder tokens "
                   "(default: --seq-len)")  # fmt: skip
    p.add_argument("--padded", action="store_true", help="an encoder's batch comes with an attention mask")
    p.add_argument("--precision", default="bf16", choices=list(PRECISIONS), help="bf16/fp16: autocast (default bf16)")
    p.add_argument("--optimizer", default="adamw", choices=list(OPTIMIZER_STATES))
    p.add_argument("--device", default="cuda", help="cuda or cpu: sets the dropout-mask size and attention kernel")
    p.add_argument("--kv-dtype", default="bfloat16", help="dtype of the KV cache (default bfloat16)")
    p.add_argument("--lora", metavar="TARGETS", help="LoRA fine-tuning: the adapted projections, e.g. q_proj,v_proj")
    p.add_argument("--lora-r", type=positive_int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--quantize", default=None, metavar="Q", help="QLoRA: the frozen base in int8 or int4 (with --lora)")
    p.add_argument("--parallel", default="none", choices=list(PARALLEL_MODES), help="per-rank bytes under ddp or fsdp")
    p.add_argument("--world-size", type=positive_int, default=1, help="processes (--batch-size is the global batch)")
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
    parallel: str = "none",
    world_size: int = 1,
) -> dict:
    """Training memory (per process of `world_size` under `parallel`, `batch_size` the global batch) and KV-cache
    bytes."""
    kw = dict(precision=precision, optimizer=optimizer, device=device, adapters=adapters, quantize=quantize)
    if adapters is not None:
        kw["trainable_parameters"] = adapter_parameters(cfg, adapters)
    if parallel == "none" and world_size > 1:
        raise ValueError(f"--world-size {world_size} needs --parallel ddp or fsdp")
    memory = training_memory
    if parallel != "none":
        memory = functools.partial(per_rank_memory, world_size=world_size, parallel=parallel)
    dtype = getattr(torch, kv_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown kv dtype {kv_dtype!r}; use e.g. float32, bfloat16, float16")
    return {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "precision": precision,
        "optimizer": optimizer,
        "parallel": parallel,
        "world_size": world_size,
        "training": memory(cfg, batch_size, seq_len, activation_checkpointing=False, **kw),
        "training_checkpointed": memory(cfg, batch_size, seq_len, activation_checkpointing=True, **kw),
        "kv_cache_bytes": kv_cache_bytes(cfg, tokens=seq_len, batch_size=batch_size, dtype=dtype),
        "kv_cache_bytes_per_token": kv_cache_bytes(cfg, dtype=dtype),
    }


def run(args) -> int:
    cfg = resolve_config(args.model)
    if cfg.family != "decoder":
        return run_member(args, cfg)
    if args.target_len is not None or args.padded:
        raise ValueError(f"--target-len and --padded describe encoders and encoder-decoders; {args.model} is a decoder")
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
        args.parallel,
        args.world_size,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    lora = f", LoRA r={args.lora_r} on {','.join(adapters)}" if adapters else ""
    lora += f" over a {args.quantize} base" if args.quantize else ""
    print(f"{args.model}: batch {args.batch_size} x {seq_len} tokens, {args.precision}, {args.optimizer}{lora}")
    if args.parallel != "none":
        rows = args.batch_size // args.world_size
        print(f"  per process of {args.world_size} under {args.parallel} ({rows} rows of the batch each)")
    print(f"  {'training memory':<28} {'plain':>12} {'checkpointed':>14}")
    plain, ckpt = report["training"], report["training_checkpointed"]
    for part in plain:
        print(f"  {part:<28} {_gib(plain[part]):>12} {_gib(ckpt[part]):>14}")
    print(
        f"  KV cache ({args.kv_dtype}): {_gib(report['kv_cache_bytes'])} for the batch, "
        f"{report['kv_cache_bytes_per_token']:,} B per token"
    )
    return 0


def run_member(args, cfg: ModelConfig) -> int:
    """An encoder's, encoder-decoder's or ViT's step: parameters, gradients, optimizer states, activations."""
    from ..analysis.family import generation_cache_bytes, member_training_memory

    if args.lora or args.quantize:
        raise ValueError(f"--lora and --quantize count decoder fine-tuning; {args.model} is a {cfg.family} model")
    if cfg.family == "vit" and (args.seq_len or args.target_len):
        raise ValueError(f"a ViT's tokens come from its image ({cfg.n_patches} patches + [CLS]); drop --seq-len")
    if cfg.family != "seq2seq" and args.target_len:
        raise ValueError(f"--target-len is an encoder-decoder's decoder length; {args.model} is a {cfg.family} model")
    seq_len = cfg.n_patches + 1 if cfg.family == "vit" else args.seq_len or cfg.max_seq_len
    target_len = args.target_len or seq_len
    mem = member_training_memory(
        cfg, args.batch_size, seq_len, target_len, args.precision, args.optimizer, padded=args.padded,
        device=args.device,
    )  # fmt: skip
    report = {"family": cfg.family, "batch_size": args.batch_size, "seq_len": seq_len, "precision": args.precision,
              "optimizer": args.optimizer, "training": mem}  # fmt: skip
    if cfg.family == "seq2seq":
        report["target_len"] = target_len
        report["generation_cache_bytes"] = generation_cache_bytes(cfg, seq_len, target_len, PRECISIONS[args.precision])
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    lengths = f"{seq_len} source + {target_len} target tokens" if cfg.family == "seq2seq" else f"{seq_len} tokens"
    print(f"{args.model} ({cfg.family}): batch {args.batch_size} x {lengths}, {args.precision}, {args.optimizer}")
    for part, value in mem.items():
        print(f"  {part:<28} {_mib(value):>14}")
    if cfg.family == "seq2seq":
        cache = report["generation_cache_bytes"]
        cross, own = _mib(cache["cross_kv"]), _mib(cache["self_kv"])
        print(f"  generation, per sequence: cross-attention K/V {cross}, self-attention K/V {own}")
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


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
