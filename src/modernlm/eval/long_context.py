"""Long context: stretch a RoPE model past its training length with a scaling, then measure what it keeps.

- `apply_scaling(model, kind, factor)`: the same weights, RoPE rescaled from the model's length L to factor x L.
- `position_perplexity`: the next-token loss at each position of windows of long held-out text, averaged over the
  windows and bucketed by position: a model that keeps working past L has flat buckets there.
- `passkey`: a number hidden at depths 0-100% of filler text of each length; found if the model, asked for it at the
  end, predicts every token of it (greedy decoding would write it). Accuracy by depth and length; a model that cannot
  see the key scores about 0 (guessing five digits).

Both run as a chunked prefill into a KV cache (a rolling one for a sliding-window model), so the activations of one
chunk, not of the whole context, are alive at a time; `check_memory` says before starting if the longest context's
KV cache and one chunk's activations do not fit in the memory available. Length-dependent scalings (dynamic NTK,
LongRoPE) take the frequencies of the length reached at the end of each chunk.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..analysis.kv_cache import kv_cache_bytes
from ..config import ModelConfig
from ..layers.kv_cache import new_cache, stored_dtype

# The keys each kind gets from --scaling KIND --factor F (beyond rope_type, factor and the original length).
SCALING_DEFAULTS = {
    "linear": {},
    "ntk": {},
    "dynamic": {},
    "ntk_by_parts": {},
    "yarn": {},
    "llama3": {"low_freq_factor": 1.0, "high_freq_factor": 4.0},
}


class LongContextError(ValueError):
    """Input the long-context evaluation cannot use; the message says why and what to give instead."""


def apply_scaling(model, kind: str, factor: float):
    """Rescale the model's RoPE in place for `factor` x its length L (max_seq_len becomes ceil(factor x L)); return
    it. kind 'none' keeps the positions as they are and only lifts the length limit (extrapolation as trained)."""
    cfg = model.config
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor >= 1:
        raise LongContextError(f"--factor must be >= 1 (the new length over the trained one), got {factor!r}")
    if kind == "none":
        if cfg.positions == "learned" and factor > 1:
            raise LongContextError(
                f"a learned position table ends at {cfg.max_seq_len} positions: it cannot be evaluated past them"
            )
        data = {**cfg.to_dict(), "max_seq_len": math.ceil(cfg.max_seq_len * factor)}
        model.config = ModelConfig.from_dict(data, f"--factor {factor}").validate()
        return model
    if kind not in SCALING_DEFAULTS:
        other = "LongRoPE's per-frequency factors are searched for a model; load a checkpoint that has them"
        raise LongContextError(
            f"unknown scaling {kind!r}; choose none or one of {', '.join(SCALING_DEFAULTS)}"
            + (f" ({other})" if kind == "longrope" else "")
            + (" (default is the model unscaled: none)" if kind == "default" else "")
        )
    if getattr(cfg, "family", "decoder") != "decoder" or cfg.positions != "rope":
        raise LongContextError(
            f"--scaling {kind} rescales RoPE frequencies, but this model's positions are {cfg.positions!r}; evaluate "
            "it with --scaling none (its positions extrapolate, or not, as they are)"
        )
    if cfg.rope_scaling is not None:
        raise LongContextError(
            f"this model already has rope_scaling {cfg.rope_scaling}; a second scaling would stack on it: use "
            "--scaling none to evaluate it as it is"
        )
    if not factor > 1:
        raise LongContextError(f"--scaling {kind} needs --factor > 1 (1 is the model unscaled), got {factor!r}")
    scaling = scaling_for(kind, factor, cfg.max_seq_len)
    data = {**cfg.to_dict(), "rope_scaling": scaling, "max_seq_len": math.ceil(cfg.max_seq_len * factor)}
    model.config = ModelConfig.from_dict(data, f"--scaling {kind} --factor {factor}").validate()
    model.reset_rope()
    return model


def scaling_for(kind: str, factor: float, original: int) -> dict:
    """The rope_scaling dict of `kind` stretching a model trained at `original` tokens by `factor`."""
    scaling = {"rope_type": kind, "factor": float(factor), **SCALING_DEFAULTS[kind]}
    if kind not in ("linear", "ntk"):
        scaling["original_max_position_embeddings"] = original
    return scaling


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def check_memory(model, length: int, chunk: int, what: str) -> dict:
    """Refuse before starting when the KV cache of `length` tokens plus one chunk's scores and logits exceed the memory
    available; return the estimate."""
    cfg = model.config
    param = next(model.parameters())
    kv = kv_cache_bytes(cfg, length, 1, stored_dtype(model), rolling=bool(cfg.sliding_window))
    scores = 4 * cfg.n_heads * chunk * length  # float32 scores of one chunk against every key
    logits = 4 * chunk * cfg.vocab_size * 2  # logits and their log-softmax
    need = kv + scores + logits
    have = available_bytes(param.device)
    if need > have:
        raise LongContextError(
            f"{what} at {length} tokens needs about {need / 2**30:.1f} GiB (KV cache {kv / 2**30:.1f} GiB, one "
            f"chunk of {chunk}: {(scores + logits) / 2**30:.1f} GiB) but {have / 2**30:.1f} GiB is available; lower "
            "the length or --chunk"
        )
    return {"kv_cache_bytes": kv, "chunk_bytes": scores + logits, "available_bytes": have}


@torch.inference_mode()
def chunked_logprobs(model, ids: list[int], targets: list[int], chunk: int) -> torch.Tensor:
    """(T,) log-probability of targets[t] after ids[: t + 1], prefilled `chunk` tokens at a time into a KV cache."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)  # (1, T)
    y = torch.tensor(targets, device=device)  # (T,)
    cache = new_cache(model, 1, len(ids))
    out = []
    for start in range(0, len(ids), chunk):
        end = min(start + chunk, len(ids))
        pos = torch.arange(start, end, device=device)
        logits = model(x[:, start:end], input_pos=pos, cache=cache)[0]  # (C, V)
        out.append(F.log_softmax(logits.float(), -1).gather(1, y[start:end, None])[:, 0])  # (C,)
    return torch.cat(out)


@dataclass
class PositionLoss:
    length: int
    bucket: int  # tokens per bucket
    windows: int
    nll: list[float]  # mean NLL (nats) of each bucket of positions
    perplexity: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.perplexity = [math.exp(x) for x in self.nll]


def position_perplexity(model, ids: list[int], length: int, buckets: int = 16, windows: int = 1, chunk: int = 512):
    """Mean next-token loss by position over `windows` evenly spaced windows of `length` + 1 tokens of `ids`."""
    if len(ids) < length + 1:
        raise LongContextError(
            f"the text has {len(ids)} tokens, fewer than the {length + 1} a window of {length} needs; give a longer "
            "--text or lower the length"
        )
    check_memory(model, length, chunk, "perplexity")
    starts = [round(i * (len(ids) - length - 1) / max(windows - 1, 1)) for i in range(windows)]
    total = torch.zeros(length, dtype=torch.float64)
    for s in starts:
        total -= chunked_logprobs(model, ids[s : s + length], ids[s + 1 : s + length + 1], chunk).double().cpu()
    per_position = total / windows  # (T,)
    size = math.ceil(length / buckets)
    nll = [float(per_position[i : i + size].mean()) for i in range(0, length, size)]
    return PositionLoss(length, size, windows, nll)


# ---- passkey -----------------------------------------------------------------------------------------------------
INTRO = "A pass key is hidden in this text. Find it and remember it.\n"
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"


def passkey_prompt(tokenizer, length: int, depth: float, key: str) -> tuple[list[int], list[int]]:
    """(prompt ids of about `length` tokens with the needle at `depth` of the filler, the key's ids)."""
    enc = tokenizer.encode
    intro, needle, question = enc(INTRO), enc(NEEDLE.format(key=key)), enc(QUESTION)
    answer = enc(" " + key)
    filler_unit = enc(FILLER)
    room = length - len(intro) - len(needle) - len(question) - len(answer)
    if room < 0:
        raise LongContextError(f"a passkey prompt needs at least {length - room} tokens, got a length of {length}")
    filler = (filler_unit * (room // len(filler_unit) + 1))[:room]
    cut = round(depth * room)
    return intro + filler[:cut] + needle + filler[cut:] + question, answer


def passkey_found(model, tokenizer, length: int, depth: float, key: str, chunk: int) -> bool:
    """Whether greedy decoding after the question writes the key: each of its tokens is the argmax given the prompt
    and the key's tokens before it (one forward pass over prompt + key)."""
    prompt, answer = passkey_prompt(tokenizer, length, depth, key)
    ids = prompt + answer
    device = next(model.parameters()).device
    cache = new_cache(model, 1, len(ids))
    x = torch.tensor([ids], device=device)  # (1, T)
    predicted = []
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, chunk):
            end = min(start + chunk, len(ids) - 1)
            logits = model(x[:, start:end], input_pos=torch.arange(start, end, device=device), cache=cache)
            predicted.append(logits[0].argmax(-1))
    predicted = torch.cat(predicted)[len(prompt) - 1 :].tolist()  # predictions of the key's tokens
    return predicted == answer


@dataclass
class Passkey:
    lengths: list[int]
    depths: list[float]
    trials: int
    accuracy: list[list[float]]  # [length][depth]
    chance: float = 1 / 90000  # a uniform guess among the 5-digit keys


def passkey(model, tokenizer, lengths: list[int], depths: list[float], trials: int = 2, chunk: int = 512, seed=0):
    """Accuracy of passkey retrieval at each (length, depth), over `trials` random 5-digit keys."""
    bad = [d for d in depths if not 0 <= d <= 1]
    if bad:
        raise LongContextError(f"depths are fractions of the context in [0, 1], got {bad}")
    too_long = [n for n in lengths if n > model.config.max_seq_len]
    if too_long:
        raise LongContextError(
            f"passkey lengths {too_long} exceed the model's context {model.config.max_seq_len}; lower them or "
            "stretch it with --scaling KIND --factor F"
        )
    passkey_prompt(tokenizer, min(lengths), 0.0, "12345")  # refuses a length too short for the prompt
    check_memory(model, max(lengths), chunk, "passkey")
    rng = random.Random(seed)
    accuracy = []
    for n in lengths:
        row = []
        for d in depths:
            keys = [str(rng.randrange(10000, 100000)) for _ in range(trials)]
            row.append(sum(passkey_found(model, tokenizer, n, d, k, chunk) for k in keys) / trials)
        accuracy.append(row)
    return Passkey(list(lengths), list(depths), trials, accuracy)


def kv_cache_report(model, lengths: list[int]) -> list[dict]:
    """At each length: the KV-cache bytes of the cache this evaluation allocates, beside the formula's
    2 x layers x kv heads x head dim x tokens x bytes (the window, not the length, on windowed layers), and the
    formula without the window (what a cache of every position would take)."""
    dtype = stored_dtype(model)
    rows = []
    for n in lengths:
        cache = new_cache(model, 1, n)
        rolling = bool(model.config.sliding_window)
        formula = kv_cache_bytes(model.config, n, 1, dtype, rolling=rolling)
        full = kv_cache_bytes(model.config, n, 1, dtype)
        rows.append(dict(length=n, measured=cache.nbytes(), formula=formula, without_window=full))
        del cache
    return rows


def long_text(path: str | Path | None = None) -> str:
    """A long held-out text: the file given, or the Python standard library's source after the part the lab trains on
    (its first 1.5 MB), a few hundred thousand characters."""
    if path is not None:
        from ..text import read_strict

        return read_strict(Path(path))
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    skipped, parts, total = 0, [], 0
    for file in sorted(root.glob("*.py")):
        data = file.read_text(encoding="utf-8", errors="replace")
        if skipped < 1_500_000:
            skipped += len(data.encode())
            continue
        parts.append(data)
        total += len(data)
        if total > 600_000:
            break
    return "".join(parts)


KINDS = ("none", *SCALING_DEFAULTS)  # what --scaling takes (SCALING_DEFAULTS' kinds are config.ROPE_SCALINGS')
