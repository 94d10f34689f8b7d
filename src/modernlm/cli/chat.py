"""`modernlm chat`: an interactive multi-turn chat in the model's template, streamed, with tokens/s after each reply.

Each turn renders the whole conversation with the chat template; the Session finds the part already in its KV cache
(all previous turns) and prefills only the new text. A line starting with "/" is a command (`/help` lists them:
/set changes a sampling setting for the next replies, /save and /load keep a conversation as JSON, /reset starts
over, /exit or Ctrl-D leaves); start a line with a space to send text that begins with "/". Reading from a pipe
works too: one user message (or command) per line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_json
from ..generation.inputs import encode_prompt
from ..text import from_user, read_json
from .common import add_model_args, add_sampling_args, check_sampling, load_for, sampling_options, sampling_values

HELP = "commands: /help, /set [NAME VALUE], /save FILE, /load FILE, /reset (forget the conversation), /exit (or Ctrl-D)"
COMMANDS = """/help                 this list
/set                  show the sampling settings of the next replies
/set NAME VALUE       change one: temperature, top_p, top_k, min_p, repetition_penalty, max_tokens, seed (none: off)
/save FILE            write the conversation as JSON (a list of {"role", "content"} messages)
/load FILE            read such a file and go on from it
/reset                forget the conversation (the system message stays)
/exit                 leave (or Ctrl-D)
A line starting with a space is sent as a message even if it starts with "/"."""
OFF = {"top_k": -1, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0}  # the flags' values for "off"
SETTABLE = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "repetition_penalty": float,
            "max_tokens": int, "seed": int}  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a model in its chat template",
        description="Interactive chat (default model: the embedded SmolLM2-135M-Instruct). " + HELP,
    )
    p.add_argument("--system", default=None, help="system message (default: the template's own)")
    add_model_args(p, compile=True, kv_cache=True)
    add_sampling_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no tokens/s line after each reply")
    p.set_defaults(func=run)


@dataclass
class Chat:
    """What a conversation holds between turns: its messages, its sampling options, the model's cache."""

    model: object
    session: object
    options: dict
    max_new_tokens: int
    start: list[dict] = field(default_factory=list)  # the system message, kept by /reset
    messages: list[dict] = field(default_factory=list)

    def settings(self) -> str:
        keys = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")
        shown = {k: self.options[k] for k in keys} | {"max_tokens": self.max_new_tokens}
        return ", ".join(f"{k} {'none' if v is None else v}" for k, v in shown.items())


def _read(prompt: str, interactive: bool) -> str | None:
    """One line of user input, or None at the end of input."""
    try:
        if interactive:
            return input(prompt)
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    except EOFError:
        return None


def _say(text: str) -> None:
    print(f"[{text}]", file=sys.stderr)


def _set(chat: Chat, words: list[str]) -> str:
    """/set NAME VALUE: one sampling setting of the next replies, checked as the flag is."""
    if not words:
        return chat.settings()
    if len(words) != 2 or words[0] not in SETTABLE:
        raise ValueError(f"/set takes NAME VALUE with NAME one of {', '.join(SETTABLE)}")
    name, text = words
    off = text.lower() in ("none", "off") and name not in ("temperature", "max_tokens")
    try:
        value = None if off else SETTABLE[name](text)
    except ValueError:
        raise ValueError(f"/set {name}: {text!r} is not a {SETTABLE[name].__name__}") from None
    if name == "max_tokens":
        if value < 1:
            raise ValueError(f"/set max_tokens must be >= 1, got {value}")
        chat.max_new_tokens = value
    elif name == "seed":
        chat.options["seed"] = value
    else:  # checked as the flags are; None is the filter's "off" value
        given = {k: chat.options[k] if chat.options[k] is not None else OFF.get(k) for k in OFF | {"temperature": 0}}
        given[name] = OFF[name] if value is None else value
        chat.options.update(sampling_values(chat.model, given))
    return f"{name} {'none' if value is None else value}"


def _load(chat: Chat, path: str) -> str:
    messages = read_json(Path(path))
    ok = isinstance(messages, list) and all(
        isinstance(m, dict) and set(m) == {"role", "content"} and isinstance(m["content"], str) for m in messages
    )
    if not ok:
        raise ValueError(f"{path} is not a conversation: a JSON list of {{\"role\", \"content\"}} messages")
    chat.messages = messages
    return f"loaded {len(messages)} messages from {path}"


def command(chat: Chat, line: str) -> str | None:
    """Run a /command line; what to say back (None: leave the chat). ValueError/OSError: said, the chat goes on."""
    name, *words = line.split()
    if name == "/exit":
        return None
    if name == "/help":
        return COMMANDS
    if name == "/reset":
        chat.messages = list(chat.start)
        chat.session.reset()
        return "conversation reset"
    if name == "/set":
        return _set(chat, words)
    if name in ("/save", "/load") and len(words) != 1:
        raise ValueError(f"{name} takes one FILE")
    if name == "/save":
        write_json(words[0], chat.messages)
        return f"saved {len(chat.messages)} messages to {words[0]}"
    if name == "/load":
        return _load(chat, words[0])
    raise ValueError(f"unknown command {name}; /help lists them (start the line with a space to send it as text)")


def _turn(chat: Chat, tokenizer, messages: list[dict]) -> str | None:
    """Stream one reply to `messages`; its text, or None (with a one-line error) when the turn cannot run."""
    try:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        pieces = []
        ids = encode_prompt(tokenizer, prompt, chat=True)
        for piece in chat.session.stream(ids, chat.max_new_tokens, **chat.options):
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
    options = sampling_options(args, tokenizer, model)
    system = from_user(args.system, "--system") if args.system else None
    start = [{"role": "system", "content": system}] if system else []
    chat = Chat(model, Session(model, tokenizer=tokenizer), options, args.max_new_tokens, start, list(start))
    if interactive:
        print(f"modernlm chat with {args.model}. {HELP}", file=sys.stderr)
    while True:
        line = _read(">>> ", interactive)
        if line is None:
            break
        line = from_user(line, "this line")
        if line.startswith("/"):
            try:
                said = command(chat, line)
            except (ValueError, OSError) as e:
                said = f"error: {e}"
            if said is None:
                break
            _say(said)
            continue
        text = line.strip()
        if text:
            _reply(chat, tokenizer, text, args.quiet)
    return 0


def _reply(chat: Chat, tokenizer, text: str, quiet: bool) -> None:
    reply = _turn(chat, tokenizer, [*chat.messages, {"role": "user", "content": text}])
    if reply is None:  # the turn failed and said why; the conversation goes on without it
        return
    chat.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
    s = chat.session.stats
    if not quiet:
        print(
            f"[{s.new_tokens} tokens, {s.decode_tokens_per_s:.1f} tokens/s; prompt {s.prompt_tokens} tokens, "
            f"{s.reused_tokens} reused from the cache]",
            file=sys.stderr,
        )
