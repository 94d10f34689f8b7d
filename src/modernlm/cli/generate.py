"""`modernlm generate --prompt TEXT`: one continuation (or chat reply, with --chat), printed or streamed."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from tqdm import tqdm

from ..checkpoints.sources import DEFAULT_MODEL
from ..text import from_user


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, help=f"model source (default: {DEFAULT_MODEL})")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="weight dtype")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument(
        "--quantize",
        default=None,
        metavar="Q",
        help="int8, int4 (or int4-g64, int4-g128): quantize the linears on load; gguf: keep a GGUF file's own "
        "quantized blocks (default: float weights in --dtype)",
    )
    p.add_argument("--compile", action="store_true", help="compile the one-token decode step (torch.compile)")


def add_sampling_args(p: argparse.ArgumentParser, *, temperature: float, top_p: float | None) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--max-new-tokens", "-n", type=int, default=256, help="new tokens at most (default: 256)")
    g.add_argument(
        "--temperature",
        "-t",
        type=float,
        default=temperature,
        help=f"0 is greedy; > 0 samples (default: {temperature})",
    )
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    g.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling, in (0, 1] (default: {top_p})")
    g.add_argument("--min-p", type=float, default=None, help="drop tokens below min_p x the top probability")
    g.add_argument("--repetition-penalty", type=float, default=None, help="> 1 discourages repeats (e.g. 1.1)")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT", help="stop after this text (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    g.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")


def sampling_options(args, tokenizer) -> dict:
    """The keyword arguments of `generate` / `Session.stream` from the parsed flags (checked here, before a model
    loads or a chat starts)."""
    from ..generation.sampling import SamplingParams

    SamplingParams(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty)
    return dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        stop_strings=args.stop,
        eos_token_id=None if args.ignore_eos else tokenizer.eos_token_id,
        seed=args.seed,
    )


def load(args):
    """The model and its tokenizer, as the flags say."""
    from ..loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=args.dtype, device=args.device, quantize=getattr(args, "quantize", None))
    log = logging.getLogger("modernlm")
    if getattr(args, "quantize", None):
        from ..quant import describe

        log.info("weights: %s", describe(model))
    if getattr(args, "compile", False):
        from ..generation.compiled import compile_decode

        compile_decode(model)
    if args.device in (None, "cpu"):
        from ..threads import apply_threads, torch_threads

        default, n = torch_threads(), apply_threads()
        if n < default:
            log.info("threads: %d of %d, other processes keep the rest busy (MODERNLM_THREADS=N to choose)", n, default)
    return model, tokenizer


def encode_prompt(tokenizer, text: str, chat: bool = False) -> list[int]:
    """Ids of a prompt, BOS first when the tokenizer says prompts start with it (transformers' `tokenizer(text)`);
    a rendered chat template (`chat`) carries its own BOS or none, as `apply_chat_template(tokenize=True)` gives."""
    ids = tokenizer.encode(text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if not chat and getattr(tokenizer, "add_bos_token", False) and bos is not None and ids[:1] != [bos]:
        ids = [bos, *ids]
    return ids


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="continue a prompt (or answer it, with --chat)",
        description="Generate text from a prompt with a model (default: the embedded SmolLM2).",
    )
    p.add_argument("--prompt", "-p", required=True, help="the prompt text ('-' reads it from stdin)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", default=None, help="system message for --chat (default: the template's own)")
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    add_model_args(p)
    add_sampling_args(p, temperature=0.0, top_p=None)
    b = p.add_argument_group("beam search")
    b.add_argument("--num-beams", type=int, default=1, help="beams (> 1: beam search, greedy only)")
    b.add_argument("--length-penalty", type=float, default=1.0, help="beam score = logprob sum / length ** this")
    s = p.add_argument_group("speculative decoding")
    s.add_argument(
        "--speculative",
        choices=["ngram", "int4"],
        default=None,
        help="draft tokens by prompt lookup "
        "(ngram) or with the model quantized to int4, verified in one forward (same output distribution)",
    )
    s.add_argument("--draft-tokens", type=int, default=4, help="tokens drafted per round (default: 4)")
    p.add_argument("--quiet", "-q", action="store_true", help="no timing line on stderr")
    p.set_defaults(func=run)


def _speculative(args, model, tokenizer, ids, options, loaded) -> str:
    from ..generation.speculative import SpecStats, speculative_generate

    if args.num_beams > 1 or args.stream or args.stop or args.repetition_penalty:
        raise ValueError(
            "--speculative decodes greedy or sampled text without --num-beams, --stream, --stop or --repetition-penalty"
        )
    for key in ("stop_strings", "repetition_penalty"):
        del options[key]
    s = SpecStats()
    out = speculative_generate(
        model, ids, args.max_new_tokens, draft=args.speculative, num_draft_tokens=args.draft_tokens, stats=s, **options
    )
    elapsed = time.perf_counter() - loaded
    print(tokenizer.decode(out[:-1] if out and out[-1] == options["eos_token_id"] else out))
    return (
        f"{len(out)} tokens in {elapsed:.2f} s ({len(out) / elapsed:.1f} tokens/s) with {s.rounds} target forwards; "
        f"{s.acceptance:.0%} of {s.proposed} drafted tokens accepted"
    )


def run(args) -> int:
    from ..generation import Session, generate

    prompt = from_user(sys.stdin.read(), "standard input") if args.prompt == "-" else from_user(args.prompt, "--prompt")
    if not prompt:
        raise ValueError("the prompt is empty: give some text with --prompt")
    if args.num_beams < 1:
        raise ValueError(f"--num-beams must be >= 1 (1: no beam search), got {args.num_beams}")
    if args.stream and args.num_beams > 1:
        raise ValueError("--stream works with greedy or sampled decoding, not with --num-beams > 1")
    if args.num_beams > 1 and args.temperature > 0:
        raise ValueError("beam search is deterministic: use --temperature 0 with --num-beams > 1")
    system = from_user(args.system, "--system") if args.system else None
    if system and not args.chat:
        raise ValueError("--system goes with --chat (a system message is part of a chat template)")
    t0 = time.perf_counter()
    model, tokenizer = load(args)
    if model.config.family != "decoder":  # an encoder-decoder writes from the encoded prompt; the others cannot
        return generate_member(args, model, tokenizer, prompt)
    if args.chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = encode_prompt(tokenizer, prompt, chat=args.chat)
    options = sampling_options(args, tokenizer)
    loaded = time.perf_counter()
    if args.speculative:
        stats = _speculative(args, model, tokenizer, ids, options, loaded)
    elif args.num_beams > 1:
        del options["stop_strings"], options["seed"]
        out = generate(
            model, ids, args.max_new_tokens, num_beams=args.num_beams, length_penalty=args.length_penalty, **options
        )[0]
        n_new, elapsed = len(out), time.perf_counter() - loaded
        print(tokenizer.decode(out[:-1] if out and out[-1] == options["eos_token_id"] else out))
        stats = f"{n_new} tokens in {elapsed:.2f} s with {args.num_beams} beams"
    else:
        session = Session(model, tokenizer=tokenizer)
        if args.stream:
            for piece in session.stream(ids, args.max_new_tokens, **options):
                print(piece, end="", flush=True)
            print()
        else:  # a progress bar on a terminal, so a long generation does not look hung
            bar = tqdm(total=args.max_new_tokens, desc="generating", unit="tok", leave=False, file=sys.stderr,
                       disable=args.quiet or not sys.stderr.isatty())  # fmt: skip
            pieces = []
            for piece in session.stream(ids, args.max_new_tokens, **options):
                pieces.append(piece)
                bar.update(session.stats.new_tokens - bar.n)
            bar.close()
            print("".join(pieces))
        s = session.stats
        stats = (
            f"{s.new_tokens} tokens; prompt {s.prompt_tokens} tokens in {s.prefill_s:.2f} s; "
            f"decode {s.decode_tokens_per_s:.1f} tokens/s"
        )
    if not args.quiet:
        print(f"[{stats}; loaded in {loaded - t0:.1f} s]", file=sys.stderr)
    return 0


def generate_member(args, model, tokenizer, prompt: str) -> int:
    """`generate` with an encoder-decoder (T5): the prompt (+ EOS) is the encoder's input; an encoder or a ViT is
    refused by `generate` itself, with what to use instead."""
    from ..generation import generate

    if args.chat or args.num_beams > 1 or args.stop:
        raise ValueError("an encoder-decoder generates plainly here: drop --chat, --num-beams and --stop")
    options = sampling_options(args, tokenizer)
    del options["stop_strings"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = generate(model, tokenizer.encode(prompt) + eos, args.max_new_tokens, **options)[0]
    print(tokenizer.decode([t for t in out if t not in eos]))
    return 0
