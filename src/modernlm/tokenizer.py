"""One Tokenizer over the `tokenizers` library, from a Hugging Face directory (tokenizer.json) or from the vocabulary
inside a GGUF file, with the checkpoint's own chat template rendered the way transformers renders it.

A GGUF file holds no tokenizer.json: its byte-level BPE (`tokenizer.ggml.model == "gpt2"`) is rebuilt here from the
token list, the merges and the token types, with the pre-tokenizer transformers picks for the file's
`tokenizer.ggml.pre`, so the ids are the ones `AutoTokenizer.from_pretrained(dir, gguf_file=...)` gives. A SentencePiece
vocabulary ("llama": Llama 2, Gemma) is rebuilt by `tokenizer_spm`.
"""

from __future__ import annotations

import functools
import json
import numbers
import os
import re
import sys
import time
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from .files import write_json, write_text
from .text import TextError, read_json, read_strict
from .tokenizer_spm import gguf_sentencepiece

SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")
# GGUF token types (llama.cpp's llama_token_type): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
CONTROL, USER_DEFINED = 3, 4

# How text is cut into words before BPE, by `tokenizer.ggml.pre`: a split regex, then bytes -> the byte alphabet.
# Files naming none of these (gpt2, smollm, starcoder...) get GPT-2's own regex, as transformers gives them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# The GGUF vocabularies read here (`tokenizer.ggml.model`) and the metadata each needs.
GGUF_VOCABULARIES = {
    "gpt2": ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"),
    "llama": ("tokenizer.ggml.tokens", "tokenizer.ggml.scores"),
}
GGUF_PRE_TOKENIZER_SPLITS = {
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}


class TokenizerError(ValueError):
    """A tokenizer that cannot be built or used as asked; the message names the file or value and the fix."""


class Tokenizer:
    """Text <-> token ids, special tokens, and chat templates.

    `encode` adds no special tokens, but special-token strings in the text (`<|im_start|>`) become their single ids.
    """

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
        add_bos_token: bool = False,
        source: str = "",
    ) -> None:
        self.backend = backend
        self.special_tokens = {
            name: token
            for name, token in zip(SPECIAL_NAMES, (bos_token, eos_token, pad_token, unk_token), strict=True)
            if token is not None
        }
        for name, token in self.special_tokens.items():
            if backend.token_to_id(token) is None:
                raise TokenizerError(f"{source or 'tokenizer'}: the {name} {token!r} is not in the vocabulary")
        self.chat_template = chat_template
        # Whether a prompt starts with BOS: the checkpoint's own setting, as transformers and llama.cpp read it.
        # `encode` never adds it; prompt encoders (cli.generate.encode_prompt) do.
        self.add_bos_token = bool(add_bos_token) and "bos_token" in self.special_tokens
        self.source = source

    # ---- constructors -------------------------------------------------------------------------------------------
    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> Tokenizer:
        """A Hugging Face tokenizer directory: tokenizer.json, with tokenizer_config.json (special tokens, chat
        template) and chat_template.jinja when present."""
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            if (path / "tokenizer.model").is_file():
                raise TokenizerError(
                    f"{path} has only a SentencePiece tokenizer.model, which is not supported yet; write a "
                    "tokenizer.json with transformers: AutoTokenizer.from_pretrained(path).save_pretrained(path)"
                )
            raise TokenizerError(
                f"{path} has no tokenizer.json; give a Hugging Face model directory that includes its tokenizer "
                "(AutoTokenizer.from_pretrained(...).save_pretrained(path) writes one)"
            )
        config = _read_json(path / "tokenizer_config.json")
        special_map = _read_json(path / "special_tokens_map.json")
        special = {name: _token_content(config.get(name, special_map.get(name))) for name in SPECIAL_NAMES}
        try:
            backend = BackendTokenizer.from_str(read_strict(path / "tokenizer.json"))
        except TextError as e:
            raise TokenizerError(str(e)) from None
        except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
            raise TokenizerError(
                f"{path / 'tokenizer.json'} cannot be read by the tokenizers library ({e}); restore the file from the "
                "model's source"
            ) from None
        # A tokenizer.json may carry padding/truncation settings (all-MiniLM-L6-v2's pads and cuts at 128): `encode`
        # returns a text's own ids, so they are switched off; callers cut and pad (transformers does the same).
        backend.no_padding()
        backend.no_truncation()
        add_bos = config.get("add_bos_token")
        if not isinstance(add_bos, bool):  # no setting: what tokenizer.json's post-processor does with a text
            add_bos = _post_processor_adds(backend, special["bos_token"])
        return cls(
            backend,
            **special,
            chat_template=_directory_chat_template(path, config),
            add_bos_token=add_bos,
            source=str(path),
        )

    @classmethod
    def from_gguf_metadata(cls, meta: dict, path: str | os.PathLike) -> Tokenizer:
        """The vocabulary of a GGUF file's metadata: byte-level BPE (`tokenizer.ggml.model == "gpt2"`) or SentencePiece
        BPE ("llama", `tokenizer_spm`), read from `path` by `checkpoints.gguf.tokenizer_from_gguf` (this module reads
        no file format of its own)."""
        kind = meta.get("tokenizer.ggml.model")
        if kind not in GGUF_VOCABULARIES:
            raise TokenizerError(
                f"{path}: the GGUF tokenizer model {kind!r} is not supported; modernlm reads byte-level BPE ('gpt2') "
                "and SentencePiece BPE ('llama'), not WordPiece ('bert') or Unigram ('t5'). Load the tokenizer from "
                "the model's Hugging Face directory (with tokenizer.json) instead"
            )
        for key in GGUF_VOCABULARIES[kind]:
            if key not in meta:
                raise TokenizerError(f"{path}: the GGUF metadata has no {key}; the file's vocabulary is incomplete")
        tokens = meta["tokenizer.ggml.tokens"]
        if kind == "gpt2":
            merges, types = meta["tokenizer.ggml.merges"], meta.get("tokenizer.ggml.token_type")
            backend = _byte_level_bpe(tokens, merges, types, meta.get("tokenizer.ggml.pre"))
        else:
            try:
                backend = gguf_sentencepiece(meta)
            except ValueError as e:
                raise TokenizerError(f"{path}: the GGUF SentencePiece vocabulary cannot be read: {e}") from None
        special = {}
        for name, key in zip(
            SPECIAL_NAMES, ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id"), strict=True
        ):
            token_id = meta.get(f"tokenizer.ggml.{key}")
            special[name] = tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None
        return cls(
            backend,
            **special,
            chat_template=meta.get("tokenizer.chat_template"),
            # SentencePiece vocabularies that do not say start prompts with BOS (llama.cpp and transformers agree)
            add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")),
            source=str(path),
        )

    # ---- text <-> ids ---------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no BOS/EOS added, special-token strings in the text kept whole."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """The text of token ids (a list, or a 1-D tensor/array of ints)."""
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise TypeError(f"decode takes token ids (a list of ints or a 1-D tensor), got {type(ids).__name__}")
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        wrong = [i for i in ids if not isinstance(i, numbers.Integral) or isinstance(i, bool)]
        if wrong:  # int(1.7) would decode token 1: a float is a mistake, never an id
            raise TypeError(f"decode takes token ids (ints), got {wrong[0]!r} ({type(wrong[0]).__name__}) among them")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"token id {bad[0]} is out of range for a vocabulary of {self.vocab_size}")
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    # ---- special tokens -------------------------------------------------------------------------------------------
    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    @property
    def vocab_size(self) -> int:
        """Ids run from 0 to vocab_size - 1, added (special) tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    # ---- chat ---------------------------------------------------------------------------------------------------
    def apply_chat_template(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """The conversation as the model was trained to read it, rendered by the checkpoint's jinja2 template.

        `messages`: [{"role": "system" | "user" | "assistant", "content": str}, ...]. Extra keyword arguments
        (tools=, documents=, ...) are passed to the template, as transformers does."""
        if not self.chat_template:
            raise TokenizerError(
                f"{self.source or 'this tokenizer'} has no chat template (base models usually have none); use an "
                "Instruct/chat model, or set tokenizer.chat_template to a jinja2 template string"
            )
        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
            raise TokenizerError('messages must be a list of dicts like {"role": "user", "content": "Hi"}')
        where = f"the chat template of {self.source or 'this tokenizer'}"
        try:
            return render_bounded(
                _compile(self.chat_template),
                messages=list(messages), add_generation_prompt=add_generation_prompt, **self.special_tokens, **kwargs,
            )  # fmt: skip
        except TemplateLimit as e:
            raise TokenizerError(f"{where} was stopped: {e}; fix the template (tokenizer.chat_template)") from None
        except jinja2.TemplateError as e:
            raise TokenizerError(f"{where} refused: {e}") from e
        except (RecursionError, MemoryError, OverflowError) as e:
            raise TokenizerError(
                f"{where} failed ({type(e).__name__}: a macro calling itself without end, or a value too large); "
                "fix the template (tokenizer.chat_template)"
            ) from None

    # ---- out ----------------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write tokenizer.json and tokenizer_config.json, which `transformers.AutoTokenizer.from_pretrained` loads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        backend = self.backend
        if self.add_bos_token:  # transformers adds BOS through tokenizer.json's post-processor: write one that does
            backend = BackendTokenizer.from_str(self.backend.to_str())
            bos = self.special_tokens["bos_token"]
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, self.bos_token_id)]
            )
        write_text(directory / "tokenizer.json", backend.to_str(pretty=True))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",  # tokenizer.json as written: no class-specific rebuilding
            **self.special_tokens,
            "add_bos_token": self.add_bos_token,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        }
        if self.chat_template:
            config["chat_template"] = self.chat_template
        write_json(directory / "tokenizer_config.json", config)
        return directory

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


# ---- GGUF vocabularies --------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: every byte as a printable character. Printable Latin-1 bytes stand for themselves; the
    others (controls, space, ...) are shifted to U+0100 onwards, in byte order (so the space is 'Ġ', U+0120)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in mapping)
    mapping.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return dict(sorted(mapping.items()))


def _byte_level_bpe(
    tokens: list[str], merges: list[str], token_types: list[int] | None, pre: str | None
) -> BackendTokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` from a GGUF vocabulary, as transformers builds it."""
    alphabet = set(bytes_to_unicode().values())
    spell = bytes_to_unicode()
    # A token outside the byte alphabet (a mislabelled special token) is respelled byte by byte.
    vocab = {
        (t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8"))): i for i, t in enumerate(tokens)
    }
    pairs = [tuple(m.split(" ")) for m in merges]
    broken = [m for m, p in zip(merges, pairs, strict=True) if len(p) != 2]
    if broken:
        raise TokenizerError(f"GGUF merges must be 'left right' pairs; got {broken[:3]}")
    backend = BackendTokenizer(
        models.BPE(
            vocab=vocab, merges=pairs, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
        )
    )
    split = GGUF_PRE_TOKENIZER_SPLITS.get(pre)
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    types = token_types or [1] * len(tokens)
    if len(types) != len(tokens):
        raise TokenizerError(f"GGUF has {len(tokens)} tokens but {len(types)} token types; the file is corrupt")
    control = [t for t, k in zip(tokens, types, strict=True) if k == CONTROL and set(t) <= alphabet]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    user = [t for t, k in zip(tokens, types, strict=True) if k == USER_DEFINED and t in vocab]
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    return backend


# ---- directories --------------------------------------------------------------------------------------------------
def _post_processor_adds(backend: BackendTokenizer, bos_token: str | None) -> bool:
    """Whether the tokenizer.json's post-processor puts `bos_token` before a text (Llama 3's TemplateProcessing)."""
    bos = None if bos_token is None else backend.token_to_id(bos_token)
    return bos is not None and backend.encode("a", add_special_tokens=True).ids[:1] == [bos]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json(path, "tokenizer file (restore it from the model's source)", TokenizerError)
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json spells it: a string, or an AddedToken dict with "content"."""
    return value.get("content") if isinstance(value, dict) else value


def _directory_chat_template(path: Path, config: dict[str, Any]) -> str | None:
    """chat_template.jinja if present (transformers >= 4.47 writes it), else tokenizer_config.json's chat_template.

    The latter may be a list of named templates; the one named "default" is used."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    template = config.get("chat_template") or _read_json(path / "chat_template.json").get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template}
        if "default" not in named:
            raise TokenizerError(
                f"{path}: tokenizer_config.json has chat templates {sorted(named)} but none named 'default'"
            )
        template = named["default"]
    return template


# ---- chat templates -------------------------------------------------------------------------------------------
def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    """JSON without jinja's HTML escaping, as chat templates expect."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


# Limits on one rendering of a chat template (untrusted code that came with a checkpoint): its run time, the text it
# writes, and any number it passes to a call, a filter or `*` / `**` / `%` (a width, a count, a repetition).
TEMPLATE_SECONDS = 5.0
TEMPLATE_CHARS = 8_000_000
_BIG_WIDTH = re.compile(r"\d{8,}")  # a format-string field wider than TEMPLATE_CHARS allows: "%999999999d", "{:>1e9}"


class TemplateLimit(jinja2.exceptions.TemplateError):
    """A chat template stopped for running too long, writing too much, or asking for a value too large."""


def _check_args(args, kwargs, what: str) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > TEMPLATE_CHARS:
            raise TemplateLimit(f"{what} was given {value!r}, over the limit of {TEMPLATE_CHARS:,}")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with the numbers that size work bounded: call and filter arguments, repetition,
    powers and format widths (a string can be made large with one call, before the output limit sees it)."""

    intercepted_binops = frozenset(["*", "**", "%"])

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str) and _BIG_WIDTH.search(left):
            raise TemplateLimit(f"the format {left[:40]!r} asks for a width over the limit of {TEMPLATE_CHARS:,}")
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 1000:
            raise TemplateLimit(f"'**' was given the exponent {right!r}, over the limit of 1000")
        if operator in ("*", "**"):
            _check_args((left, right), {}, f"'{operator}'")
            if isinstance(left, (str, list, tuple)) or isinstance(right, (str, list, tuple)):
                seq, n = (left, right) if isinstance(left, (str, list, tuple)) else (right, left)
                _check_args((len(seq) * n if isinstance(n, int) else 0,), {}, "a repetition")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (jinja's own signature)
        _check_args(args, kwargs, f"{getattr(__obj, '__name__', 'a call')}()")
        text = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)  # str.format's string
        if isinstance(text, str) and _BIG_WIDTH.search(text):
            raise TemplateLimit(f"the format {text[:40]!r} asks for a width over the limit of {TEMPLATE_CHARS:,}")
        return super().call(__context, __obj, *args, **kwargs)


def _bounded_filter(name: str, f):
    """The filter `f` with its arguments (after the value it filters) bounded: `center(10**9)`, `indent(10**9)`."""
    first = 2 if getattr(f, "jinja_pass_arg", None) is not None else 1  # after the environment/context and the value

    @functools.wraps(f)
    def bounded(*args, **kwargs):
        _check_args(args[first:], kwargs, f"the filter {name}")
        value = args[first - 1] if len(args) >= first else None
        if name == "format" and isinstance(value, str) and _BIG_WIDTH.search(value):
            raise TemplateLimit(f"the format {value[:40]!r} asks for a width over the limit of {TEMPLATE_CHARS:,}")
        return f(*args, **kwargs)

    return bounded


def render_bounded(template, **context: Any) -> str:
    """Render a compiled template, stopped with TemplateLimit after TEMPLATE_SECONDS of work (a loop without end, a
    "CPU bomb") or TEMPLATE_CHARS of output. The clock is read on every line the template's code runs (a trace on its
    frames only, restored afterwards), so a loop that writes nothing and calls nothing is stopped too."""
    deadline = time.monotonic() + TEMPLATE_SECONDS

    def line(frame, event, arg):
        if time.monotonic() > deadline:
            raise TemplateLimit(f"it ran for over {TEMPLATE_SECONDS:g} s (a loop without end?)")
        return line

    previous = sys.gettrace()
    sys.settrace(lambda frame, event, arg: line if frame.f_code.co_filename == "<template>" else None)
    try:
        pieces, size = [], 0
        for piece in template.generate(**context):
            size += len(piece)
            if size > TEMPLATE_CHARS:
                raise TemplateLimit(f"it wrote over {TEMPLATE_CHARS:,} characters")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        sys.settrace(previous)


@lru_cache(maxsize=8)
def _compile(template: str):
    """A chat template compiled in a sandbox (templates come with downloaded checkpoints and are untrusted code),
    with the settings and helpers transformers gives them; `render_bounded` renders it within limits."""
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs: no chat template uses it
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise TokenizerError(f"the chat template is not valid jinja2 (line {e.lineno}: {e.message})") from e
