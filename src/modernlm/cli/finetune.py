"""`modernlm finetune`: adapt a pretrained model to chat data (JSONL) with LoRA (default) or in full.

With no arguments: SmolLM2-135M-Instruct, LoRA r=8 on the attention projections, the example dataset (short
arithmetic and unit answers), a few minutes on 2 CPU cores. `--config file.json` (a FinetuneConfig) sets everything
at once; flags given beside it win. `--resume` continues the run in `--out` with its saved settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    add_run_args,
    add_table,
    add_targets,
    already_finished,
    given_values,
    is_main_process,
    stopped_early,
    targets,
)

# flag -> (FinetuneConfig field or "train.<TrainConfig field>", default text) for a flag of the shared table
# (common.SHARED), or (field, type, help) for one of fine-tuning's own
FLAGS = {
    "--model": ("base", "smollm2-135m-instruct"),
    "--train": ("train_file", "the example dataset, written into the run directory"),
    "--val": ("val_file", str, "held-out JSONL (default: the last tenth of --train)"),
    "--out": ("train.out_dir", "runs/finetune, runs/finetune-full with --full"),
    "--quantize": ("quantize", "float"),
    "--r": ("r", "8"),
    "--alpha": ("alpha", "16"),
    "--dropout": ("dropout", float, "dropout on the LoRA input (default 0)"),
    "--max-len": ("train.seq_len", int, "longest example in tokens; longer ones are cut (default 64)"),
    "--max-steps": ("train.max_steps", "100"),
    "--batch-size": ("train.batch_size", "8"),
    "--lr": ("train.lr", "1e-3 LoRA, 2e-5 full"),
    "--warmup-steps": ("train.warmup_steps", int, "linear warmup steps (default 10)"),
    "--eval-interval": ("train.eval_interval", "25"),
    "--save-interval": ("train.save_interval", int, "steps between checkpoints (default 50)"),
    "--seed": ("train.seed", "0"),
    "--num-threads": ("train.num_threads", "torch's"),
    "--grad-accum": ("train.grad_accum", int, "micro-batches per optimizer step (default 1)"),
    "--device": ("train.device", str, "cpu or cuda (under torchrun: each process takes cuda:LOCAL_RANK)"),
    "--precision": ("train.precision", str, "fp32, bf16 (autocast) or fp16 (CUDA) (default fp32)"),
    "--parallel": ("train.parallel", str, "none, ddp or fsdp under torchrun; --batch-size stays the global batch"),
    "--dist-timeout": ("train.dist_timeout", int, "seconds a process waits for the others (default 600)"),
    "--compare-prompts": ("compare_prompts", int, "held-out prompts answered before and after (default 4)"),
}


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model on chat JSONL with LoRA or in full (no arguments: a demo)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="lora", action="store_true", default=None, help="LoRA adapters (the default)")
    mode.add_argument("--full", dest="lora", action="store_false", help="train every weight instead of LoRA")
    add_targets(p)
    add_table(p, FLAGS)
    add_run_args(p, "FinetuneConfig")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The FinetuneConfig the flags describe: the saved one (--resume), a --config file or the defaults; then flags."""
    from ..finetune.config import CONFIG_NAME, FinetuneConfig, default_train_config

    lora = True if args.lora is None else args.lora
    if args.config is not None:
        values = FinetuneConfig.from_json(args.config).to_dict()
    elif args.resume:
        out = Path(args.out or default_train_config(lora).out_dir)
        if not (out / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no fine-tuning run to resume in {out} (no {CONFIG_NAME}); start without --resume")
        values = FinetuneConfig.from_json(out / CONFIG_NAME).to_dict()
    else:
        values = FinetuneConfig(lora=lora).to_dict()
    if args.lora is not None:
        values["lora"] = args.lora
    for name, given in given_values(args, FLAGS).items():
        section, _, key = name.rpartition(".")
        (values[section] if section else values)[key] = given
    if args.targets is not None:
        values["targets"] = targets(args.targets)
    if args.no_progress:
        values["train"]["progress"] = False
    return FinetuneConfig.from_dict(values).validate()


def run(args: argparse.Namespace) -> int:
    from ..finetune.run import finetune

    cfg = build_config(args)
    if args.print_config:
        print(cfg.to_json())
        return 0
    if cfg.train.parallel != "none":
        from ..distributed import finetune
    result = finetune(cfg, resume=args.resume, stop_at_step=args.stop_at_step, extend=args.extend)
    if not is_main_process():
        return 0 if result.status in ("done", "finished", "paused") else 130
    if result.status == "finished":
        return already_finished(result, "finetune", cfg.train.max_steps)
    if result.status != "done":
        return stopped_early(result, "finetune")
    for c in result.comparisons:
        print(f"---- {c.prompt}\n  reference: {c.reference}\n  before: {c.before!r}\n  after:  {c.after!r}")
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"held-out loss {fmt(result.val_before)} -> {fmt(result.val_after)}; {result.step} steps, "
          f"{result.trainable:,} of {result.total:,} parameters trained, {result.seconds:.0f} s")  # fmt: skip
    out = result.run_dir
    made = f"{out / 'adapter'} (adapter), " if result.adapter_dir else ""
    print(f"wrote {made}{result.model_dir} (a transformers checkpoint) and {out / 'before_after.md'}")
    print(f"try: modernlm chat --model {result.model_dir}")
    return 0
