"""Types of configuration values, checked in one place wherever values enter: JSON files, Hugging Face configs, CLI
overrides (`--model-override KEY=VALUE`) and Python keyword arguments.

Every config class here is a dataclass of plain values; its annotations are the schema. `check_fields` checks each
value against its annotation (a bool is not an int, an int is a float, a list is a tuple of the right length) and
`parse_override` turns the text of a `KEY=VALUE` flag into a value of the field's type, so `tie_embeddings=maybe`,
`norm_eps=abc` or `extra=5` are refused with the field, the value and what the field takes.

This module sits on the lowest floor: it imports nothing of modernlm and no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Union


class FieldError(ValueError):
    """A value of the wrong type or an unknown field; the message names the source, the field and the fix."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def describe(tp: Any) -> str:
    """A type annotation in words, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        parts = [describe(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is Any:
        return "any value"
    if origin is list:
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is tuple:
        return f"a list of {len(args)} numbers" if args else "a list"
    if origin is dict:
        return "an object (a JSON {...})"
    return getattr(tp, "__name__", str(tp))


def conform(tp: Any, value: Any) -> tuple[bool, Any]:
    """(value fits `tp`, the value in the field's own form): lists become tuples for tuple fields."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True, value
    if origin in (Union, types.UnionType):
        for arg in args:
            ok, out = conform(arg, value)
            if ok:
                return True, out
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    if origin is dict or tp is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value), value
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [conform(args[0], v) if args else (True, v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)) or (args and len(value) != len(args)):
            return False, value
        items = [conform(a, v) for a, v in zip(args, value, strict=True)] if args else [(True, v) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    return isinstance(value, tp), value


def check_fields(obj: Any, where: str = "") -> None:
    """Raise FieldError for the first field of the dataclass `obj` whose value does not fit its annotation, and put
    conformed values (tuples for tuple fields) back."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        ok, conformed = conform(hints[f.name], value)
        if not ok:
            raise FieldError(
                f"{_prefix(where)}{f.name} must be {describe(hints[f.name])}, got {value!r} "
                f"({type(value).__name__}); fix the value of {f.name}"
            )
        if conformed is not value:
            object.__setattr__(obj, f.name, conformed)


def check_mapping(cls: type, data: Any, where: str = "") -> dict[str, Any]:
    """`data` as keyword arguments of the dataclass `cls`: an object whose keys are all fields of `cls`."""
    if not isinstance(data, dict):
        raise FieldError(
            f'{_prefix(where)}a {cls.__name__} must be a JSON object ({{"field": value, ...}}), got '
            f"{type(data).__name__}"
        )
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in known]
    if unknown:
        hints = [f"{k!r} (did you mean {close!r}?)" if (close := _closest(k, known)) else repr(k) for k in unknown]
        raise FieldError(
            f"{_prefix(where)}unknown {cls.__name__} field(s) {', '.join(hints)}; valid fields: {', '.join(known)}"
        )
    return dict(data)


def parse_override(cls: type, item: str, where: str = "--model-override") -> tuple[str, Any]:
    """`KEY=VALUE` text as (field, typed value) of the dataclass `cls`. VALUE is read as JSON (`4`, `true`, `1e-6`,
    `{"rope_type": "linear", "factor": 2}`) and, for string fields, as the bare text (`norm=layernorm`)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise FieldError(f"{where} takes KEY=VALUE, got {item!r}")
    check_mapping(cls, {key: None}, where)
    tp = _hints(cls)[key]
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        value = text
    ok, value = conform(tp, value)
    if not ok:
        ok, value = conform(tp, text)  # a string field whose text looks like JSON ("1", "null")
    if not ok:
        raise FieldError(f"{where} {key}={text!r}: {key} must be {describe(tp)}; e.g. {key}={_example(tp)}")
    return key, value


def _example(tp: Any) -> str:
    words = describe(tp)
    for start, example in (("true", "true"), ("an integer", "4"), ("a number", "1e-5"), ("a string", "text")):
        if words.startswith(start):
            return example
    return "<JSON value>"


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _closest(name: str, known: list[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return match[0] if match else None
