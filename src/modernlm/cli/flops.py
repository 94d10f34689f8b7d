"""`modernlm flops MODEL`: forward and training FLOPs per token by part, for a preset, a config JSON or a model."""

from __future__ import annotations

import json
from pathlib import Path

from ..analysis import forward_flops, parameter_counts, training_flops
from ..config import PRESETS, ModelConfig, preset
from . import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "flops", help="FLOPs per token by part (QKV, QK^T, softmax, weights x V, ...), forward and train"
    )
    p.add_argument("model", help=f"a preset ({', '.join(PRESETS)}), a ModelConfig JSON file, or a model source")
    p.add_argument(
        "--seq-len", type=positive_int, default=None, help="context length (default: the model's max_seq_len)"
    )
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--checkpointing", action="store_true", help="count the recompute of activation checkpointing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def resolve_config(source: str) -> ModelConfig:
    """A preset name, a JSON file of ModelConfig fields, or anything `load_model` accepts (its weights are read)."""
    if source in PRESETS:
        return preset(source)
    if source.endswith(".json") and Path(source).is_file():
        return ModelConfig.from_json(Path(source)).validate()
    from .. import load_model

    try:
        return load_model(source).config
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; or a preset: {', '.join(PRESETS)}; or a ModelConfig .json file") from e


def flops_report(cfg: ModelConfig, seq_len: int, batch_size: int, checkpointing: bool) -> dict:
    tokens = seq_len * batch_size
    fwd = forward_flops(cfg, seq_len, batch_size)
    train = training_flops(cfg, seq_len, batch_size, activation_checkpointing=checkpointing)
    parts = ["qkv_projection", "attention_scores", "softmax", "attention_values", "output_projection", "ffn"]
    parts += ["lm_head", "recompute"]
    return {
        "seq_len": seq_len,
        "batch_size": batch_size,
        "parameters": parameter_counts(cfg)["total"],
        "forward_per_token": {k: fwd[k] / tokens for k in parts if k in fwd},
        "training_per_token": {k: train[k] / tokens for k in parts if k in train},
        "forward_total_per_token": fwd["per_token"],
        "training_total_per_token": train["per_token"],
        "note": "matmul FLOPs (2 per multiply-add); softmax (3 per score) is listed apart and not in the totals",
    }


def run(args) -> int:
    cfg = resolve_config(args.model)
    if cfg.family != "decoder":
        return run_member(args, cfg)
    report = flops_report(cfg, args.seq_len or cfg.max_seq_len, args.batch_size, args.checkpointing)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.model}: {report['parameters']:,} parameters, T={report['seq_len']}, batch {report['batch_size']}")
    print(f"  {'FLOPs per token':<20} {'forward':>14} {'training':>14}")
    total = report["forward_total_per_token"]
    for part, f in report["forward_per_token"].items():
        t = report["training_per_token"].get(part, 0)
        print(f"  {part:<20} {f / 1e6:>11,.2f} M {t / 1e6:>11,.2f} M  {100 * f / total:5.1f}%")
    if "recompute" in report["training_per_token"]:
        print(f"  {'recompute':<20} {'':>14} {report['training_per_token']['recompute'] / 1e6:>11,.2f} M")
    fwd_total, train_total = report["forward_total_per_token"], report["training_total_per_token"]
    print(f"  {'total (matmuls)':<20} {fwd_total / 1e6:>11,.2f} M {train_total / 1e6:>11,.2f} M")
    print(f"  ({report['note']})")
    return 0


def run_member(args, cfg: ModelConfig) -> int:
    """Forward FLOPs of an encoder, encoder-decoder (source and target of --seq-len tokens) or ViT, by part."""
    from ..analysis.family import member_forward_flops

    if args.checkpointing:
        raise ValueError(f"--checkpointing is counted for the decoder only, not a {cfg.family}")
    T = cfg.n_patches + 1 if cfg.family == "vit" else args.seq_len or cfg.max_seq_len
    parts = member_forward_flops(cfg, T, target_len=T, batch_size=args.batch_size)
    tokens = args.batch_size * T
    if args.json:
        print(json.dumps({"family": cfg.family, "seq_len": T, "batch_size": args.batch_size, "forward": parts}))
        return 0
    print(f"{args.model}: a {cfg.family}, T={T} (source and target for seq2seq), batch {args.batch_size}")
    for part, f in parts.items():
        print(f"  {part:<20} {f / tokens / 1e6:>11,.2f} M per token  {100 * f / parts['total']:5.1f}%")
    print("  (forward matmul FLOPs, 2 per multiply-add; cross-attention K/V counted once per source token)")
    return 0
