"""The request bodies of the OpenAI API, checked field by field: a wrong name, type or value is an `APIError` (HTTP 400
in the API's error shape) that names the field, never a traceback. Fields the API defines but this server does not
implement are refused by name (silently ignoring `tools` or `response_format` would return something else than asked).

Parameters (OpenAI's meaning; top_k, min_p and repetition_penalty are the extensions vLLM and llama.cpp accept); a
sampling field not given takes the model's own default (its generation_config.json, as vLLM does):
max_tokens (max_completion_tokens), temperature, top_p, top_k, min_p, repetition_penalty, seed, stop, n, logprobs /
top_logprobs, presence_penalty, frequency_penalty, stream, stream_options.include_usage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..checkpoints.generation_config import GREEDY, GenerationConfig

MAX_STOPS = 4
MAX_N = 16
MAX_TOP_LOGPROBS = 20
ROLES = ("system", "developer", "user", "assistant")

SAMPLING = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "seed",
    "stop",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "stream",
    "stream_options",
    "user",
}
CHAT_FIELDS = SAMPLING | {"messages", "logprobs", "top_logprobs", "max_completion_tokens", "return_attentions"}
COMPLETION_FIELDS = SAMPLING | {"prompt", "logprobs"}
UNSUPPORTED = {
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "logit_bias",
    "best_of",
    "echo",
    "suffix",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "service_tier",
    "store",
    "metadata",
}


class APIError(Exception):
    """An error the client caused or should know of: HTTP `status`, the OpenAI error `type`, the `param` at fault."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(param: str, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass
class Sampling:
    """What one request asks for, checked."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely


def _number(body: dict, name: str, lo: float, hi: float, default, lo_open: bool = False):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        raise bad(name, f"'{name}' must be a number, got {type(value).__name__}")
    if value > hi or value < lo or (lo_open and value == lo):
        bounds = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise bad(name, f"'{name}' must be in {bounds}, got {value!r}")
    return float(value)


def _integer(body: dict, name: str, lo: int, hi: int | None, default):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(name, f"'{name}' must be an integer, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        limit = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise bad(name, f"'{name}' must be {limit}, got {value}")
    return value


def _boolean(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"'{name}' must be true or false, got {type(value).__name__}")
    return value


def parse_body(raw: bytes) -> Any:
    """A request body's JSON, or a 400 saying what is wrong with it (not JSON, not UTF-8, nested without end)."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "the request body nests JSON arrays/objects too deeply; send a flat body",
                       code="invalid_json") from None  # fmt: skip


def check_fields(body: Any, allowed: set[str]) -> dict:
    if not isinstance(body, dict):
        raise bad(None, f"the request body must be a JSON object, got {type(body).__name__}")
    for name in body:
        if name in UNSUPPORTED:
            raise bad(name, f"'{name}' is not supported by this server", code="unsupported_parameter")
        if name not in allowed:
            raise bad(name, f"unknown field '{name}'", code="unknown_parameter")
    return body


def sampling(body: dict, max_tokens_limit: int, chat: bool, defaults: GenerationConfig = GREEDY) -> Sampling:
    """The sampling fields of a chat or completion body; a field not given takes the model's default (`defaults`:
    its generation_config.json, as vLLM does), max_tokens included when the model names one."""
    s = Sampling()
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    s.max_tokens = _integer(body, name, 1, None, None)
    if s.max_tokens is not None and s.max_tokens > max_tokens_limit:
        raise bad(name, f"'{name}' is {s.max_tokens}; this server allows at most {max_tokens_limit}")
    if s.max_tokens is None and defaults.max_new_tokens:
        s.max_tokens = min(defaults.max_new_tokens, max_tokens_limit)
    s.temperature = _number(body, "temperature", 0.0, 2.0, defaults.temperature)
    s.top_p = _number(body, "top_p", 0.0, 1.0, defaults.top_p, lo_open=True)
    top_k = _integer(body, "top_k", -1, None, defaults.top_k)
    s.top_k = top_k if top_k and top_k > 0 else None  # -1 and 0 mean no top-k (vLLM's convention)
    s.min_p = _number(body, "min_p", 0.0, 1.0, defaults.min_p)
    s.repetition_penalty = _number(body, "repetition_penalty", 0.0, 10.0, defaults.repetition_penalty, lo_open=True)
    s.presence_penalty = _number(body, "presence_penalty", -2.0, 2.0, 0.0)
    s.frequency_penalty = _number(body, "frequency_penalty", -2.0, 2.0, 0.0)
    s.seed = _integer(body, "seed", -(2**63), 2**63 - 1, None)
    s.n = _integer(body, "n", 1, MAX_N, 1)
    s.stream = _boolean(body, "stream", False)
    s.stop = _stops(body.get("stop"))
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad("stream_options", "'stream_options' must be an object with only 'include_usage'")
        if not s.stream:
            raise bad("stream_options", "'stream_options' goes with 'stream': true")
        s.include_usage = _boolean(options, "include_usage", False)
    if chat:
        if _boolean(body, "logprobs", False):
            s.logprobs = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, 0)
        elif body.get("top_logprobs") is not None:
            raise bad("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    else:
        s.logprobs = _integer(body, "logprobs", 0, MAX_TOP_LOGPROBS - 1, None)
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise bad("user", "'user' must be a string")
    return s


def _stops(value) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", "'stop' must be a string or a list of strings")
    if len(stops) > MAX_STOPS:
        raise bad("stop", f"'stop' holds at most {MAX_STOPS} strings, got {len(stops)}")
    if any(not s for s in stops):
        raise bad("stop", "'stop' strings must not be empty")
    return [unicode(s, "stop") for s in stops]


def messages(body: dict) -> list[dict[str, str]]:
    """The conversation, as {"role", "content": str} dicts for the chat template."""
    value = body.get("messages")
    if value is None:
        raise bad("messages", "'messages' is required")
    if not isinstance(value, list) or not value:
        raise bad("messages", "'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, f"{where} must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}")
        if set(m) - {"role", "content", "name"}:
            extra = sorted(set(m) - {"role", "content", "name"})[0]
            raise bad(f"{where}.{extra}", f"{where}.{extra} is not supported by this server")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m.get("content"), where)})
    return out


def unicode(text: str, param: str) -> str:
    """JSON may carry lone surrogates (\\ud800), which are not text: refused here, not deep in the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise bad(param, f"{param} holds a lone surrogate (an invalid \\u escape): send valid Unicode") from None
    return text


def _content(content, where: str) -> str:
    if isinstance(content, str):
        return unicode(content, f"{where}.content")
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}.content[{j}]", f"{where}.content[{j}]: only text parts are supported")
            texts.append(unicode(part["text"], f"{where}.content[{j}]"))
        return "".join(texts)
    raise bad(f"{where}.content", f"{where}.content must be a string or a list of text parts")


def prompts(body: dict, vocab: int) -> list[str | list[int]]:
    """The completion prompts: a string, a list of strings, a list of token ids, or a list of such lists."""
    value = body.get("prompt")
    if value is None:
        raise bad("prompt", "'prompt' is required")
    if isinstance(value, str):
        return [unicode(value, "prompt")]
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            return [unicode(p, "prompt") for p in value]
        if all(_is_ids(p) for p in value):
            return [list(value)]
        if all(isinstance(p, list) and p and all(_is_ids(t) for t in p) for p in value):
            return [list(p) for p in value]
    raise bad("prompt", "'prompt' must be a string, a list of strings, or token ids (a list of integers)")


def _is_ids(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
