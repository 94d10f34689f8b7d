"""`modernlm chat`: an interactive multi-turn chat in the model's template, streamed, with tokens/s after each reply.

Each turn renders the whole conversation with the chat template; the Session finds the part already in its KV cache
(all previous turns) and prefills only the new text. Commands: /reset starts over, /exit (or Ctrl-D) leaves.
Reading from a pipe works too: one user message per line.
"""

from __future__ import annotations

import sys

from ..generation.inputs import encode_prompt
from ..text import from_user
from .common import add_model_args, add_sampling_args, check_sampling, load_for, sampling_options

HELP = "commands: /reset (forget the conversation), /exit (or Ctrl-D)"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a model in its chat template",
        description="Interactive chat (default model: the embedded SmolLM2-135M-Instruct). " + HELP,
    )
    p.add_argument("--system", default=None, help="system message (default: the template's own)")
    add_model_args(p, compile=True)
    add_sampling_args(p, temperature=0.7, top_p=0.9)
    p.add_argument("--quiet", "-q", action="store_true", help="no tokens/s line after each reply")
    p.set_defaults(func=run)


def _read(prompt: str, interactive: bool) -> str | None:
    """One line of user input, or None at the end of input."""
    try:
        if interactive:
            return input(prompt)
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    except EOFError:
        return None


def _turn(session, tokenizer, messages: list[dict], max_new_tokens: int, options: dict) -> str | None:
    """Stream one reply to `messages`; its text, or None (with a one-line error) when the turn cannot run."""
    try:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        pieces = []
        for piece in session.stream(encode_prompt(tokenizer, prompt, chat=True), max_new_tokens, **options):
            pieces.append(piece)
            print(piece, end="", flush=True)
    except ValueError as e:  # e.g. the conversation outgrew the context
        print(f"[error: {e}; /reset starts a new conversation]", file=sys.stderr)
        return None
    print()
    return "".join(pieces).strip()


def run(args) -> int:
    from ..generation import Session

    if sys.stdin is None or sys.stdin.closed:
        raise ValueError("chat reads your messages from standard input, and this process has none: run it in a "
                         "terminal, or pipe the messages in (one per line)")  # fmt: skip
    check_sampling(args)
    interactive = sys.stdin.isatty()
    model, tokenizer = load_for(args)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{args.model} has no chat template; use `modernlm generate` for plain continuation")
    session = Session(model, tokenizer=tokenizer)
    options = sampling_options(args, tokenizer)
    system = from_user(args.system, "--system") if args.system else None
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    if interactive:
        print(f"modernlm chat with {args.model}. {HELP}", file=sys.stderr)
    while True:
        line = _read(">>> ", interactive)
        if line is None or line.strip() == "/exit":
            break
        text = from_user(line, "this line").strip()
        if not text:
            continue
        if text == "/reset":
            messages = list(start)
            session.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        reply = _turn(session, tokenizer, [*messages, {"role": "user", "content": text}], args.max_new_tokens, options)
        if reply is None:  # the turn failed and said why; the conversation goes on without it
            continue
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
        s = session.stats
        if not args.quiet:
            print(
                f"[{s.new_tokens} tokens, {s.decode_tokens_per_s:.1f} tokens/s; prompt {s.prompt_tokens} tokens, "
                f"{s.reused_tokens} reused from the cache]",
                file=sys.stderr,
            )
    return 0
