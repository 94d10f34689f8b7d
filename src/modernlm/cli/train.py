"""`modernlm train`: train a model; with no arguments, the ~5.5 M parameter recipe on the Python standard library.

Every TrainConfig field is a flag (`--max-steps 600`, `--data 'texts/*.txt'`, `--model-override n_layers=4`); a
`--config file.json` sets them all at once and the flags given beside it win. `--resume` continues the run in
`--out-dir` with its saved settings.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .common import add_run_args, already_finished, is_main_process, stopped_early

HELP = {
    "out_dir": "run directory: checkpoints, weights, tokenizer, metrics, loss curve (alias --out)",
    "data": "sources: 'stdlib', files, directories, globs, 'hf:NAME[:SPLIT[:COLUMN]]'",
    "tokenizer": "a tokenizer directory or source; default: train a byte-level BPE on the data",
    "model": "a model preset (see modernlm.config.PRESETS)",
    "model_overrides": "a ModelConfig field as KEY=VALUE (repeatable), e.g. n_layers=4",
    "precision": "fp32, bf16 (autocast) or fp16 (CUDA, with a grad scaler)",
    "grad_clip": "max gradient norm; 0 disables clipping",
    "sample_prompts": "prompts sampled from at the end",
    "parallel": "none, ddp or fsdp: data-parallel under torchrun (batch_size and grad_accum stay the global batch)",
    "cpu_offload": "fsdp on CUDA: keep the shards in CPU memory",
    "dist_timeout": "seconds a process waits for the others before it stops with an error",
    "device": "cpu or cuda (under torchrun: each process takes cuda:LOCAL_RANK)",
}
_NONE_DEFAULT_TYPES = {"tokenizer": str, "num_threads": int}


OBJECTIVES = ("lm", "mlm", "seq2seq", "image-classification")  # see training/objectives.py


def add_parser(sub) -> None:
    from ..training.config import TrainConfig

    p = sub.add_parser("train", help="train a model (no arguments: a small one on the Python stdlib, ~5 min)")
    add_run_args(p, "TrainConfig")
    p.add_argument(
        "--to-single-file", type=Path, default=None, metavar="NEW_DIR",
        help="convert the distributed run in --out to an ordinary run directory NEW_DIR and exit",
    )  # fmt: skip
    p.add_argument("--objective", default="lm", choices=OBJECTIVES, help="lm (default), or another member's task")
    g = p.add_argument_group("settings (TrainConfig fields)")
    for f in dataclasses.fields(TrainConfig):
        _add_field(g, f)
    p.set_defaults(func=run)


def _add_field(group, f: dataclasses.Field) -> None:
    flag = "--" + f.name.replace("_", "-")
    flags = [flag, "--out"] if f.name == "out_dir" else [flag]
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default
    shown = typed_default(flag, default)
    text = HELP.get(f.name, "") + (f" (default: {shown})" if shown else "")
    kw = dict(dest=f.name, default=None, help=text.lstrip())
    if f.name == "model_overrides":
        group.add_argument("--model-override", action="append", metavar="KEY=VALUE", **kw)
    elif isinstance(default, bool):
        group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
    elif isinstance(default, (list, tuple)):
        item = type(default[0]) if default else str
        group.add_argument(*flags, nargs=len(default) if isinstance(default, tuple) else "+", type=item, **kw)
    else:
        group.add_argument(*flags, type=_NONE_DEFAULT_TYPES.get(f.name, type(default)), **kw)


def typed_default(flag: str, default) -> str:
    """A default as it is typed on the command line (`--help` shows what can be typed back): a list as its items,
    a bool as its flag (--progress / --no-progress); nothing for None or an empty value."""
    if isinstance(default, bool):
        return flag if default else "--no-" + flag[2:]
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default)
    return "" if default is None or default == {} else str(default)


def build_config(args):
    """The TrainConfig the flags describe: the saved one (--resume), a --config file, or the defaults; then flags."""
    from ..config import ModelConfig
    from ..fields import parse_override
    from ..training.config import TrainConfig
    from ..training.setup import read_saved_config

    if args.resume and args.config is None:
        out = Path(args.out_dir or TrainConfig().out_dir)
        config = read_saved_config(out)
    else:
        config = TrainConfig.from_json(args.config) if args.config else TrainConfig()
    values = config.to_dict()
    for name in values:
        given = getattr(args, name, None)
        if given is not None and name != "model_overrides":
            values[name] = given
    for item in args.model_overrides or []:
        key, value = parse_override(ModelConfig, item)
        values["model_overrides"] = {**values["model_overrides"], key: value}
    return TrainConfig.from_dict(values, "the flags").validate()


def run(args) -> int:
    from ..training import train

    if args.objective != "lm":
        return run_objective(args)
    if args.to_single_file is not None:
        from ..distributed import to_single_file

        out = to_single_file(args.out_dir or "runs/stdlib-small", args.to_single_file)
        print(f"wrote {out}: continue it with modernlm train --resume --out {out}")
        return 0
    config = build_config(args)
    if args.print_config:
        print(config.to_json())
        return 0
    if config.parallel != "none":
        from ..distributed import train
    result = train(config, resume=args.resume, stop_at_step=args.stop_at_step, extend=args.extend)
    if not is_main_process():
        return 0 if result.status in ("done", "finished", "paused") else 130
    out = result.run_dir
    if result.status == "finished":
        return already_finished(result, "train", config.max_steps)
    if result.status != "done":
        return stopped_early(result, "train")
    for text in result.samples:
        print(f"---- sample ----\n{text}\n")
    val = f"validation loss {result.val_loss:.4f}; " if result.val_loss is not None else ""
    print(f"done: {result.step} steps; {val}weights, tokenizer, metrics.jsonl and loss.png in {out}")
    print(f'try: modernlm generate --model {out} --prompt "def" -t 0.8 --top-k 40')
    return 0


# Settings of the family's objectives where no flag is given (the TrainConfig defaults are the decoder recipe's).
OBJECTIVE_DEFAULTS = {
    "mlm": dict(out_dir="runs/stdlib-mlm", max_steps=300, batch_size=16, seq_len=128, lr=1e-3, warmup_steps=30),
    "seq2seq": dict(out_dir="runs/dates-t5", max_steps=1500, batch_size=64, lr=2e-3, warmup_steps=100),
    "image-classification": dict(
        out_dir="runs/digits-vit", max_steps=1200, batch_size=64, lr=1e-3, warmup_steps=60, weight_decay=0.05
    ),
}


def run_objective(args) -> int:
    """`modernlm train --objective mlm | seq2seq | image-classification`: training/objectives.py, then the figures."""
    from ..training.config import TrainConfig
    from ..training.objectives import run_objective as train_objective

    if args.resume or args.stop_at_step is not None:
        raise ValueError(f"--objective {args.objective} runs are short and not resumable; drop --resume/--stop-at-step")
    if args.parallel not in (None, "none"):
        raise ValueError(f"--objective {args.objective} runs on one process; drop --parallel (it is for lm runs)")
    values = build_config(args).to_dict()
    for name, value in OBJECTIVE_DEFAULTS[args.objective].items():
        if getattr(args, name, None) is None:
            values[name] = value
    config = TrainConfig.from_dict(values).validate()
    if args.print_config:
        print(config.to_json())
        return 0
    metrics = train_objective(args.objective, config, progress=config.progress)
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    print("done: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))
    print(
        f"model, metrics.json{' and confusion.png' if args.objective == 'image-classification' else ''} in "
        f"{config.out_dir}"
    )
    return 0
