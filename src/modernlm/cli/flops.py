"""`modernlm flops MODEL`: forward and training FLOPs per token by part, for a preset, a config JSON or a model."""

from __future__ import annotations

import json

from ..analysis.report import a_member, flops_report, member_flops_report
from ..config import PRESETS
from ..loading import load_config
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


def run(args) -> int:
    cfg = load_config(args.model)  # no weights read
    if cfg.family not in ("decoder", "vlm"):  # a VLM: its language model over the text and image tokens
        return run_member(args, member_flops_report(cfg, args.seq_len, args.batch_size, args.checkpointing))
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


def run_member(args, report: dict) -> int:
    """Forward FLOPs of an encoder, encoder-decoder (source and target of --seq-len tokens) or ViT, by part."""
    parts, T = report["forward"], report["seq_len"]
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.model}: {a_member(report['family'])}, T={T} (source and target for seq2seq), batch {args.batch_size}")
    for part, f in parts.items():
        print(f"  {part:<20} {f / (args.batch_size * T) / 1e6:>11,.2f} M per token  {100 * f / parts['total']:5.1f}%")
    print("  (forward matmul FLOPs, 2 per multiply-add; cross-attention K/V counted once per source token)")
    return 0
