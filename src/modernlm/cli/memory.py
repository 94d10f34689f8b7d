"""`modernlm memory MODEL`: training memory (parameters, gradients, optimizer states, activations with and without
activation checkpointing) and KV-cache bytes, for a preset, a config JSON or a model; for an encoder, an
encoder-decoder or a ViT, its step's parameters, gradients, optimizer states and activations (analysis/family.py)."""

from __future__ import annotations

import json

from ..alignment.memory import PARTS, ppo_memory
from ..analysis.memory import OPTIMIZER_STATES, PARALLEL_MODES, PRECISIONS
from ..analysis.report import check_member_request, member_memory_report, memory_report
from ..config import PRESETS, ModelConfig
from ..loading import load_config
from . import positive_int
from .common import add_renamed, targets


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
    p.add_argument("--targets", default=None, help="LoRA fine-tuning: the adapted projections, e.g. q_proj,v_proj")
    add_renamed(p, "--lora", "targets")
    p.add_argument("--r", type=positive_int, default=8, help="LoRA rank (default 8)")
    add_renamed(p, "--lora-r", "r", positive_int)
    p.add_argument("--quantize", default=None, metavar="Q", help="QLoRA: the base in int8 or int4 (with --targets)")
    p.add_argument("--parallel", default="none", choices=list(PARALLEL_MODES), help="per-rank bytes under ddp or fsdp")
    p.add_argument("--world-size", type=positive_int, default=1, help="processes (--batch-size is the global batch)")
    p.add_argument(
        "--ppo", metavar="TARGETS", help="PPO's four models: full copies vs shared frozen bases + LoRA on TARGETS"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = load_config(args.model)  # no weights read
    check_member_request(cfg, args.model, seq_len=args.seq_len, target_len=args.target_len, padded=args.padded,
                         lora=bool(args.targets or args.quantize))  # fmt: skip
    if cfg.family not in ("decoder", "vlm"):  # a VLM: all its parameters, its language model's activations
        return run_member(args, cfg)
    seq_len = args.seq_len or cfg.max_seq_len
    if getattr(args, "ppo", None):
        return _ppo(args, cfg, seq_len)
    adapters = dict.fromkeys(targets(args.targets), args.r) if args.targets else None
    if args.quantize and not adapters:
        raise ValueError("--quantize counts a QLoRA run: give the adapted projections with --targets as well")
    report = memory_report(cfg, args.batch_size, seq_len, args.precision, args.optimizer, args.device, args.kv_dtype,
                           adapters, args.quantize, args.parallel, args.world_size)  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    lora = f", LoRA r={args.r} on {','.join(adapters)}" if adapters else ""
    lora += f" over an {args.quantize} base" if args.quantize else ""  # int8, int4
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
    report = member_memory_report(cfg, args.batch_size, args.seq_len, args.target_len, args.precision, args.optimizer,
                                  padded=args.padded, device=args.device)  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    seq_len, cache = report["seq_len"], report.get("generation_cache_bytes")
    lengths = f"{seq_len} source + {report['target_len']} target tokens" if cache else f"{seq_len} tokens"
    print(f"{args.model} ({cfg.family}): batch {args.batch_size} x {lengths}, {args.precision}, {args.optimizer}")
    for part, value in report["training"].items():
        print(f"  {part:<28} {_mib(value):>14}")
    if cache:
        cross, own = _mib(cache["cross_kv"]), _mib(cache["self_kv"])
        print(f"  generation, per sequence: cross-attention K/V {cross}, self-attention K/V {own}")
    return 0


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def _ppo(args, cfg: ModelConfig, seq_len: int) -> int:
    adapters = dict.fromkeys(targets(args.ppo), args.r)
    report = ppo_memory(cfg, args.batch_size, seq_len, adapters, args.precision, args.optimizer, args.device)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.model}: PPO (actor, reference, reward model, critic), batch {args.batch_size} x {seq_len} tokens, "
          f"{args.precision}, {args.optimizer}, LoRA r={args.r} on {','.join(adapters)}")  # fmt: skip
    names = list(report)
    print(f"  {'':<18}" + "".join(f"{n:>28}" for n in names))
    for part in (*PARTS, "total", "rollout_kv_cache"):
        print(f"  {part:<18}" + "".join(f"{_gib(report[n][part]):>28}" for n in names))
    return 0


def _gib(n: int) -> str:
    return f"{n / 2**30:,.3f} GiB"
