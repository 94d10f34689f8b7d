"""A model's own sampling defaults: Hugging Face's `generation_config.json`, read and written.

One set of defaults for every way of generating (the Python `generate` when it is given no sampling arguments,
`modernlm generate`, `chat`, the server's API and its page), each flag or request field overriding its value:
- a directory with `generation_config.json`: its values, read as transformers reads them (`do_sample` false is
  greedy whatever the temperature; when sampling, an absent temperature is 1.0, top_k 50, top_p 1.0);
- a source without one (a GGUF file, a run directory, a directory saved without it): `FALLBACK`, the chat defaults
  (temperature 0.7, top-p 0.9);
- a model built in Python: `GREEDY`, transformers' default GenerationConfig.
`save_model` writes the model's own (GREEDY for a model built in Python), with the tokenizer's BOS/EOS ids.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..files import write_json
from .base import CheckpointError

FILE = "generation_config.json"


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling defaults as `generate` takes them; `temperature == 0` is greedy (transformers' do_sample false)."""

    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None  # None: not known (each verb keeps its own budget)
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    origin: str = "greedy (transformers' default; the model has no generation config)"

    def sampling(self) -> dict:
        """The keyword arguments of `generate` these defaults stand for."""
        keys = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
        return {k: getattr(self, k) for k in keys}

    def eos_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    def describe(self) -> str:
        """One line for `modernlm info` and the logs."""
        if self.temperature == 0:
            what = "greedy"
        else:
            parts = [f"temperature {self.temperature:g}"]
            parts += [f"{k.replace('_', '-')} {v:g}" for k, v in self.sampling().items() if k != "temperature" and v]
            what = "sampling, " + ", ".join(parts)
        if self.repetition_penalty and self.temperature == 0:
            what += f", repetition-penalty {self.repetition_penalty:g}"
        if self.max_new_tokens:
            what += f", max_new_tokens {self.max_new_tokens}"
        return f"{what} ({self.origin})"

    def to_hf(self) -> dict:
        """transformers' fields: do_sample, and the sampling values only when it samples."""
        out: dict = {"do_sample": self.temperature > 0}
        if self.temperature > 0:
            out.update(temperature=self.temperature, top_p=self.top_p or 1.0, top_k=self.top_k or 0)
            if self.min_p:
                out["min_p"] = self.min_p
        if self.repetition_penalty:
            out["repetition_penalty"] = self.repetition_penalty
        for key in ("max_new_tokens", "bos_token_id"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.eos_token_id is not None:
            out["eos_token_id"] = self.eos_token_id if isinstance(self.eos_token_id, int) else list(self.eos_token_id)
        return out


GREEDY = GenerationConfig()
FALLBACK = GenerationConfig(temperature=0.7, top_p=0.9, origin="the fallback: the source has no " + FILE)


def from_hf(hf: dict, where: str) -> GenerationConfig:
    """transformers' reading of a generation_config.json: do_sample false is greedy; when sampling, the absent
    values are transformers' defaults (temperature 1.0, top_k 50, top_p 1.0); top_k 0 and top_p 1 are off."""
    if not isinstance(hf, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(hf).__name__}; fix or delete the file")

    def number(key: str, default, kind=(int, float)):
        value = hf.get(key, default)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) or value < 0):
            raise CheckpointError(f"{where}: {key} must be a number >= 0 or null, got {value!r}; fix or delete it")
        return value

    do_sample = hf.get("do_sample", False)
    if not isinstance(do_sample, bool):
        raise CheckpointError(f"{where}: do_sample must be true or false, got {do_sample!r}; fix or delete it")
    temperature = number("temperature", 1.0) if do_sample else 0.0
    top_p, top_k = number("top_p", 1.0), number("top_k", 50, int)
    penalty, new = number("repetition_penalty", 1.0), number("max_new_tokens", None, int)
    eos = hf.get("eos_token_id")
    if not (eos is None or isinstance(eos, int) or isinstance(eos, list) and all(isinstance(e, int) for e in eos)):
        raise CheckpointError(f"{where}: eos_token_id must be an integer or a list of them, got {eos!r}")
    sampling = bool(temperature)
    return GenerationConfig(
        temperature=float(temperature or 0.0),
        top_p=float(top_p) if sampling and top_p is not None and 0 < top_p < 1 else None,
        top_k=top_k if sampling and top_k else None,
        min_p=float(hf["min_p"]) if sampling and number("min_p", None) else None,
        repetition_penalty=float(penalty) if penalty and penalty != 1.0 else None,
        max_new_tokens=new or None,
        bos_token_id=hf.get("bos_token_id") if isinstance(hf.get("bos_token_id"), int) else None,
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        origin=where,
    )


def read_generation_config(directory: str | Path) -> GenerationConfig | None:
    """The directory's generation_config.json, or None when it has none."""
    path = Path(directory) / FILE
    if not path.is_file():
        return None
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); fix or delete it") from None
    return from_hf(hf, str(path))


def write_generation_config(directory: str | Path, config: GenerationConfig, tokenizer=None) -> Path:
    """generation_config.json in `directory`; BOS/EOS ids the config lacks come from the tokenizer."""
    if tokenizer is not None:
        if config.bos_token_id is None and getattr(tokenizer, "bos_token_id", None) is not None:
            config = replace(config, bos_token_id=tokenizer.bos_token_id)
        if config.eos_token_id is None and getattr(tokenizer, "eos_token_id", None) is not None:
            config = replace(config, eos_token_id=tokenizer.eos_token_id)
    return write_json(Path(directory) / FILE, config.to_hf())


def as_dict(config: GenerationConfig) -> dict:
    """Every field, for JSON (the server's model card)."""
    out = asdict(config)
    if isinstance(out["eos_token_id"], tuple):
        out["eos_token_id"] = list(out["eos_token_id"])
    return out
