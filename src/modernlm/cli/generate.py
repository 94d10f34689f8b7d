"""`modernlm generate --prompt TEXT`: one continuation (or chat reply, with --chat), printed or streamed."""

from __future__ import annotations

import math
import sys
import time

from tqdm import tqdm

from ..generation.inputs import encode_prompt
from ..text import from_user
from .common import add_model_args, add_sampling_args, check_sampling, load_for, read_stdin, sampling_options


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
    add_model_args(p, compile=True, kv_cache=True)
    add_sampling_args(p)
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

    if args.num_beams > 1 or args.stream or args.stop or options["repetition_penalty"]:
        raise ValueError(
            "--speculative decodes greedy or sampled text without --num-beams, --stream, --stop or a repetition "
            "penalty (the model's default one too: give --repetition-penalty 1)"
        )
    for key in ("stop_strings", "repetition_penalty"):
        del options[key]
    s = SpecStats()
    out = speculative_generate(
        model, ids, args.max_new_tokens, draft=args.speculative, num_draft_tokens=args.draft_tokens, stats=s, **options
    )
    elapsed = time.perf_counter() - loaded
    print(tokenizer.decode(without_eos(out, options["eos_token_id"])))
    return (
        f"{len(out)} tokens in {elapsed:.2f} s ({len(out) / elapsed:.1f} tokens/s) with {s.rounds} target forwards; "
        f"{s.acceptance:.0%} of {s.proposed} drafted tokens accepted"
    )


def _checked(args) -> tuple[str, str | None]:
    """The prompt and the system message, and every flag checked, before the model loads."""
    stdin = args.prompt == "-"
    prompt = from_user(read_stdin("--prompt -") if stdin else args.prompt, "standard input" if stdin else "--prompt")
    if not prompt:
        raise ValueError("the prompt is empty: give some text with --prompt")
    check_sampling(args)
    if args.num_beams < 1:
        raise ValueError(f"--num-beams must be >= 1 (1: no beam search), got {args.num_beams}")
    if not math.isfinite(args.length_penalty):
        raise ValueError(f"--length-penalty must be a finite number (1: none), got {args.length_penalty}")
    if args.stream and args.num_beams > 1:
        raise ValueError("--stream works with greedy or sampled decoding, not with --num-beams > 1")
    if args.num_beams > 1 and args.temperature:
        raise ValueError("beam search is deterministic: use --temperature 0 with --num-beams > 1")
    if args.num_beams > 1:
        args.temperature = 0.0  # beams are greedy, whatever the model's sampling defaults
    system = from_user(args.system, "--system") if args.system else None
    if system and not args.chat:
        raise ValueError("--system goes with --chat (a system message is part of a chat template)")
    return prompt, system


def run(args) -> int:
    from ..generation import Session, generate

    prompt, system = _checked(args)
    t0 = time.perf_counter()
    model, tokenizer = load_for(args)
    if model.config.family != "decoder":  # an encoder-decoder writes from the encoded prompt; the others cannot
        return generate_member(args, model, tokenizer, prompt)
    if args.chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = encode_prompt(tokenizer, prompt, chat=args.chat)
    options = sampling_options(args, tokenizer, model)
    loaded = time.perf_counter()
    if args.speculative:
        stats = _speculative(args, model, tokenizer, ids, options, loaded)
    elif args.num_beams > 1:
        del options["stop_strings"], options["seed"]
        out = generate(
            model, ids, args.max_new_tokens, num_beams=args.num_beams, length_penalty=args.length_penalty, **options
        )[0]
        n_new, elapsed = len(out), time.perf_counter() - loaded
        print(tokenizer.decode(without_eos(out, options["eos_token_id"])))
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


def without_eos(out: list[int], eos) -> list[int]:
    """The tokens without a final end-of-sequence token (`eos`: an id, a list of them, or None)."""
    ends = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return out[:-1] if out and out[-1] in ends else out


def generate_member(args, model, tokenizer, prompt: str) -> int:
    """`generate` with an encoder-decoder (T5): the prompt (+ EOS) is the encoder's input; an encoder or a ViT is
    refused by `generate` itself, with what to use instead."""
    from ..generation import generate

    if args.chat or args.num_beams > 1 or args.stop:
        raise ValueError("an encoder-decoder generates plainly here: drop --chat, --num-beams and --stop")
    options = sampling_options(args, tokenizer, model)
    del options["stop_strings"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = generate(model, tokenizer.encode(prompt) + eos, args.max_new_tokens, **options)[0]
    print(tokenizer.decode([t for t in out if t not in eos]))
    return 0
