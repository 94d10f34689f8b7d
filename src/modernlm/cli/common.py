"""What the verbs share, declared once: the model flags and the one loader every verb loads through, the sampling
flags, the flags of a run directory (config, resume, extend, stop-at-step), and the table of flags that several verbs
take, so that one idea has one spelling everywhere (`--max-steps`, `--r`, `--targets`...). An old spelling stays as
an alias that says, when used, which flag replaced it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..checkpoints.generation_config import GREEDY, GenerationConfig
from ..checkpoints.sources import DEFAULT_MODEL
from ..finetune.lora import ATTENTION_TARGETS
from ..generation.compiled import compile_decode
from ..generation.sampling import SamplingParams
from ..layers.kv_cache import KV_KINDS
from ..loading import load
from ..quant import describe
from ..threads import apply_threads, torch_threads
from . import positive_int

log = logging.getLogger("modernlm")
TARGETS = ",".join(ATTENTION_TARGETS)

# flag -> (type, help without the default): the flags more than one verb takes, one spelling and one meaning each.
# A verb's own table names the field a flag sets and its default (see `add_table`); the verb's config checks the
# values (`validate()`), with messages that name the field.
SHARED = {
    "--model": (str, "the model: an embedded name, a Hugging Face directory, a .gguf file or a run directory"),
    "--train": (str, "training JSONL"),
    "--out": (str, "run directory"),
    "--max-steps": (int, "optimizer steps"),
    "--batch-size": (int, "examples per optimizer step"),
    "--lr": (float, "peak learning rate"),
    "--seed": (int, "seed of the adapter initialisation, the batch order and sampling"),
    "--num-threads": (positive_int, "torch threads"),
    "--eval-interval": (int, "steps between held-out evaluations"),
    "--r": (int, "LoRA rank"),
    "--alpha": (float, "LoRA alpha; the update is scaled by alpha / r"),
    "--quantize": (str, "QLoRA: the frozen base in int8 or int4 (int4-g64...)"),
    "--max-new-tokens": (int, "new tokens at most"),
}
# old spelling -> the shared flag that replaced it
RENAMED = {"--steps": "--max-steps", "--lora-r": "--r", "--lora": "--targets"}


class _Renamed(argparse.Action):
    """An old spelling: sets the new flag's value and says which flag to use from now on."""

    def __call__(self, parser, namespace, values, option_string=None):
        log.warning("%s is the old spelling of %s; use %s", option_string, RENAMED[option_string],
                    RENAMED[option_string])  # fmt: skip
        setattr(namespace, self.dest, values)


def add_renamed(p: argparse.ArgumentParser, old: str, dest: str, kind=str) -> None:
    """The old spelling `old` of a verb's flag, kept as an alias that says so when used."""
    p.add_argument(old, dest=dest, type=kind, action=_Renamed, default=None, help=f"old spelling of {RENAMED[old]}")


def add_table(p: argparse.ArgumentParser, table: dict[str, tuple]) -> None:
    """A verb's flags: `flag -> (field, default text)` for a shared flag (type and help from SHARED), or
    `flag -> (field, type, help)` for one of the verb's own. Every flag defaults to None (not given)."""
    for flag, entry in table.items():
        if len(entry) == 2:
            kind, text = SHARED[flag]
            text = f"{text} (default: {entry[1]})"
        else:
            _, kind, text = entry
        p.add_argument(flag, type=kind, default=None, help=text)


def given_values(args: argparse.Namespace, table: dict[str, tuple]) -> dict:
    """`field -> value` of the table's flags that were given."""
    values = {}
    for flag, entry in table.items():
        given = getattr(args, flag[2:].replace("-", "_"))
        if given is not None:
            values[entry[0]] = given
    return values


def add_targets(p: argparse.ArgumentParser) -> None:
    """--targets, for the verbs that train or count LoRA adapters."""
    p.add_argument("--targets", default=None, help=f"LoRA target modules, comma-separated (default: {TARGETS})")


def targets(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


# ---- the model and the one loader ------------------------------------------------------------------------------
def add_model_args(
    p: argparse.ArgumentParser, *, quantize: bool = True, compile: bool = False, kv_cache: bool = False
) -> None:
    """--model, --dtype, --device, and the flags the verb uses: --quantize, --compile, --kv-cache."""
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"model source (default: {DEFAULT_MODEL})")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weight dtype")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    if quantize:
        p.add_argument("--quantize", default=None, metavar="Q",
                       help="int8, int4 (or int4-g64, int4-g128): quantize the linears on load; gguf: keep a GGUF "
                       "file's own quantized blocks (default: float weights in --dtype)")  # fmt: skip
    if compile:
        p.add_argument("--compile", action="store_true", help="compile the one-token decode step (torch.compile)")
    if kv_cache:
        p.add_argument("--kv-cache", default="auto", choices=["auto", *KV_KINDS],
                       help="the KV cache's storage: auto (the weights' dtype), a float dtype, or int8 (a scale per "
                       "head and token: about half of bf16's bytes)")  # fmt: skip


def load_for(args, tokenizer: bool = True):
    """The model and its tokenizer as the flags say, the source resolved once; the weights' form and the threads
    said in one line each."""
    quantize = getattr(args, "quantize", None)
    model, tok = load(args.model, dtype=getattr(args, "dtype", None), device=getattr(args, "device", None),
                      quantize=quantize, tokenizer=tokenizer)  # fmt: skip
    if quantize:
        log.info("weights: %s", describe(model))
    if getattr(args, "kv_cache", "auto") != "auto":
        model.kv_cache = args.kv_cache  # every cache built for this model (layers/kv_cache.new_cache) takes it
    if getattr(args, "compile", False):
        compile_decode(model)
    if getattr(args, "device", None) in (None, "cpu"):
        default, n = torch_threads(), apply_threads()
        if n < default:
            log.info("threads: %d of %d, other processes keep the rest busy (MODERNLM_THREADS=N to choose)", n, default)
    return model, tok


# ---- sampling ------------------------------------------------------------------------------------------------------
MAX_NEW_TOKENS = 256  # when neither -n nor the model's generation_config.json says


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """The decoding flags; each one not given takes the model's own default (its generation_config.json, see
    modernlm.checkpoints.generation_config; `modernlm info` shows them)."""
    g = p.add_argument_group("decoding (default: the model's generation_config.json; `modernlm info` shows it)")
    g.add_argument("--max-new-tokens", "-n", type=int, default=None,
                   help=f"new tokens at most (default: the model's max_new_tokens, else {MAX_NEW_TOKENS})")  # fmt: skip
    g.add_argument("--temperature", "-t", type=float, default=None, help="0 is greedy; > 0 samples")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (-1: off)")
    g.add_argument("--top-p", type=float, default=None, help="nucleus sampling, in (0, 1] (1: off)")
    g.add_argument("--min-p", type=float, default=None, help="drop tokens below min_p x the top probability (0: off)")
    g.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeats (e.g. 1.1; 1: off)")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop after this text (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")


def model_defaults(model) -> GenerationConfig:
    """The model's sampling defaults: set by the loader (generation_config.json, or its fallback); greedy for a
    model built in Python."""
    return getattr(model, "generation_config", None) or GREEDY


OFF = {"top_k": -1, "min_p": 0, "top_p": 1, "repetition_penalty": 1}  # the value that turns a filter off (vLLM's)
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def sampling_values(model, given: dict) -> dict:
    """The five sampling settings: the model's defaults, each overridden by a value given (not None); 0 turns
    min_p off, -1 top_k (vLLM's), 1 top_p and repetition_penalty. Checked here."""
    values = model_defaults(model).sampling()
    values.update({k: v for k, v in given.items() if v is not None})
    values = {k: None if k in OFF and v == OFF[k] else v for k, v in values.items()}
    SamplingParams(**values)
    return values


def check_sampling(args) -> None:
    """The decoding flags given, checked before a model loads: finite numbers in their ranges (`-t inf` is a
    mistake); the model's own defaults fill in the rest after it loads (sampling_values)."""
    given = {k: getattr(args, k) for k in SAMPLING if getattr(args, k) is not None}
    SamplingParams(**{k: None if k in OFF and v == OFF[k] else v for k, v in given.items()})
    n = args.max_new_tokens
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"--max-new-tokens (max_new_tokens) must be >= 1, got {n}")


def read_stdin(flag: str) -> str:
    """All of standard input, for a flag that reads it; a clear error where this process has none (closed, or
    started without one), instead of an AttributeError deep in a read."""
    stream = sys.stdin
    if stream is None or getattr(stream, "closed", False):
        raise ValueError(f"{flag} reads standard input, and this process has none (closed or not connected): "
                         "give the text on the command line, or pipe it in")  # fmt: skip
    return stream.read()


def sampling_options(args, tokenizer, model) -> dict:
    """The keyword arguments of `generate` / `Session.stream`: the model's defaults overridden by the flags given;
    also sets args.max_new_tokens when -n was not given. EOS: the tokenizer's and the generation config's."""
    values = sampling_values(model, {k: getattr(args, k) for k in SAMPLING})
    if args.max_new_tokens is None:
        args.max_new_tokens = model_defaults(model).max_new_tokens or MAX_NEW_TOKENS
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    eos += [e for e in model_defaults(model).eos_ids() if e not in eos]
    return dict(
        **values,
        stop_strings=args.stop,
        eos_token_id=None if args.ignore_eos or not eos else eos[0] if len(eos) == 1 else eos,
        seed=args.seed,
    )


# ---- run directories ---------------------------------------------------------------------------------------------
def add_run_args(p: argparse.ArgumentParser, config_name: str, resume: bool = True) -> None:
    """--config and --print-config of a verb that writes a run directory; --resume, --extend and --stop-at-step
    where its runs resume."""
    p.add_argument("--config", type=Path, default=None, help=f"a {config_name} JSON file; flags override its values")
    p.add_argument("--print-config", action="store_true", help="print the effective config as JSON and exit")
    if not resume:
        return
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--extend", action="store_true", help="with --resume and a larger --max-steps: train a run further")
    p.add_argument("--stop-at-step", type=positive_int, default=None,
                   help="save and stop after this many steps (resume later)")  # fmt: skip


def is_main_process() -> bool:
    """Whether this process reports (rank 0 of a torchrun launch, or a process alone)."""
    return os.environ.get("RANK", "0") == "0"


def already_finished(result, verb: str, max_steps: int) -> int:
    """Say that a resumed run had nothing left to do, and how to train it further."""
    print(
        f"{result.run_dir} already finished at step {result.step} (max_steps {max_steps}): nothing to train. "
        f"To train it further: modernlm {verb} --resume --out {result.run_dir} --extend --max-steps {2 * max_steps}",
        file=sys.stderr,
    )
    return 0


def stopped_early(result, verb: str) -> int:
    """Say how to continue a run that stopped before its last step (paused or interrupted); its exit code."""
    how = f"continue with: modernlm {verb} --resume --out {result.run_dir}"
    print(f"{result.status} at step {result.step}; checkpoint saved; {how}", file=sys.stderr)
    return 130 if result.status == "interrupted" else 0
