"""modernlm as an lm-evaluation-harness model: `ModernLM`, registered with lm-eval as "modernlm".

lm-eval 0.4 finds models only in its own registry (no entry points): a model is known once the module that registers
it is imported. So `python -m modernlm.eval.harness ARGS` (or the `modernlm-lm-eval` console script, or
`modernlm eval harness ARGS`) imports this module, which registers "modernlm", then runs lm-eval's own command line
with the same ARGS:

    python -m modernlm.eval.harness --model modernlm --model_args source=smollm2-135m-instruct --tasks hellaswag

In Python, `import modernlm.eval.harness` before `lm_eval.simple_evaluate(model="modernlm", ...)`.

Model arguments (`--model_args k=v,...`): `source` (any `modernlm.load_model` source; default the embedded model),
`dtype`, `device` (a CUDA device on a machine without one falls back to the CPU, as lm-eval's `hf` model does:
lm-eval's command line asks for cuda:0 by default), `quantize`, `batch_size` (lm-eval's --batch_size),
`max_length` (default: the model's max_seq_len), `max_gen_toks` (default 256), `add_bos_token` (default: the
tokenizer's own setting). Unknown arguments are refused rather than ignored. An argument given in --model_args wins
over the same one from lm-eval's own options (`--model_args batch_size=8` with lm-eval's default `--batch_size 1`).

The three request kinds follow lm-eval's `hf` model, so scores agree with it on the same weights:
- loglikelihood(context, continuation): lm-eval's TemplateLM encodes the pair (trailing context spaces move to the
  continuation; an empty context becomes the prefix token); inputs are cut to the last max_length + 1 tokens, batched
  longest first and right-padded (causal attention makes padding after a row's tokens harmless);
- loglikelihood_rolling(text): lm-eval's disjoint rolling windows of max_length tokens after the prefix token
  (BOS, else EOS), each scored as a loglikelihood request;
- generate_until(context, gen_kwargs): prompts left-truncated to max_length - max_gen_toks, generated in batches of
  equal gen_kwargs by `modernlm.generate` (greedy unless do_sample), cut at the first stop string.
"""

from __future__ import annotations

import logging
import sys

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")


class HarnessArgumentError(ValueError):
    """A model argument or generation setting this adapter cannot honour; the message names it and the fix."""


def _int(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < 1 or (isinstance(value, float) and value != number):
        raise HarnessArgumentError(f"{name} must be a positive integer, got {value!r}")
    return number


def _bool(name: str, value) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise HarnessArgumentError(f"{name} must be true or false, got {value!r}")


def _device(device):
    """lm-eval's command line asks for cuda:0 unless told otherwise; like its `hf` model, a machine without CUDA
    runs on the CPU instead (with a warning)."""
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("device %s asked for, but there is no CUDA GPU: running on the CPU", device)
        return "cpu"
    return device


@register_model("modernlm")
class ModernLM(TemplateLM):
    """A modernlm decoder behind lm-eval's LM interface (see the module docstring)."""

    def __init__(
        self,
        source=None,
        dtype=None,
        device=None,
        quantize=None,
        batch_size=1,
        max_batch_size=None,  # lm-eval passes it with batch_size="auto", which is refused below
        max_length=None,
        max_gen_toks=256,
        add_bos_token=None,
        model=None,
        tokenizer=None,
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            raise HarnessArgumentError(
                f"unknown model argument(s) {sorted(unknown)}; the modernlm model takes source, dtype, device, "
                "quantize, batch_size, max_length, max_gen_toks, add_bos_token"
            )
        if str(batch_size).startswith("auto"):
            raise HarnessArgumentError("batch_size 'auto' is not supported by the modernlm model; give a number")
        from ..loading import load_model, load_tokenizer

        device = _device(device)
        self.model = model if model is not None else load_model(source, dtype=dtype, device=device, quantize=quantize)
        if getattr(self.model.config, "family", "decoder") != "decoder":
            raise HarnessArgumentError(f"lm-eval needs a decoder; {source} is a {self.model.config.family}")
        self.model.eval()
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(source)
        self.source = str(source or getattr(self.model, "source", "modernlm"))
        self.batch_size = _int("batch_size", batch_size)
        self._max_length = _int("max_length", max_length or self.model.config.max_seq_len)
        self._max_gen_toks = _int("max_gen_toks", max_gen_toks)
        bos = _bool("add_bos_token", add_bos_token)
        self.add_bos_token = bool(getattr(self.tokenizer, "add_bos_token", False)) if bos is None else bos
        if self.add_bos_token and self.tokenizer.bos_token_id is None:
            raise HarnessArgumentError(f"add_bos_token is set, but the tokenizer of {self.source} has no BOS token")
        self._device = next(self.model.parameters()).device

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> ModernLM:
        """`--model_args k=v,...` merged with what lm-eval's command line adds (batch_size, device, ...): an argument
        named in --model_args wins, where lm-eval's base class would pass it twice and fail."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> ModernLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    # ---- what lm-eval asks of a TemplateLM -------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return self.source.replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template if chat_template is True else chat_template or None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids; BOS first when `add_special_tokens` (None: the tokenizer's own add_bos_token, unless the text
        already starts with the BOS token's text), as a Hugging Face tokenizer does for the `hf` model."""
        ids = self.tokenizer.encode(string)
        bos = self.tokenizer.bos_token_id
        add = self.add_bos_token if add_special_tokens is None else add_special_tokens
        if add and add_special_tokens is None and bos is not None and ids[:1] == [bos]:
            add = False  # the text carries its BOS already
        return [bos, *ids] if add and bos is not None else ids

    # ---- scoring ----------------------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of the continuation's log-probabilities, whether greedy decoding gives it) per
        (strings, context ids, continuation ids) request."""
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        return score_pairs(self.model, pairs, self.max_length, self.batch_size, self.eot_token_id)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each text's log-likelihood: the windows of every text scored together in batches, summed per text."""
        owners, pairs = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(string),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for window in windows:
                owners.append(i)
                pairs.append(make_disjoint_window(window))
        scores = score_pairs(self.model, pairs, self.max_length, self.batch_size, self.eot_token_id)
        out = [0.0] * len(requests)
        for i, (logprob, _) in zip(owners, scores, strict=True):
            out[i] += logprob
        for req, total in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return out

    # ---- generation -------------------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        args = [req.args for req in requests]
        out: list[str | None] = [None] * len(args)
        groups: dict[str, list[int]] = {}
        for i, (_, gen_kwargs) in enumerate(args):
            groups.setdefault(repr(sorted(gen_kwargs.items())), []).append(i)
        for indices in groups.values():
            indices.sort(key=lambda i: -len(self.tok_encode(args[i][0])))  # longest first: less padding
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                texts = self._generate([args[i][0] for i in batch], args[batch[0]][1])
                for i, text in zip(batch, texts, strict=True):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", args[i], text)
        return out

    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        from ..generation.generate import generate

        if not isinstance(gen_kwargs, dict):
            raise HarnessArgumentError(f"generation settings must be a dict, got {type(gen_kwargs).__name__}")
        kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        eos_text = self.tokenizer.decode([self.eot_token_id])
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
        max_gen_toks, do_sample = kwargs.pop("max_gen_toks"), kwargs.pop("do_sample", False)
        unknown = sorted(set(kwargs) - set(SAMPLING_KEYS))
        if unknown:
            raise HarnessArgumentError(
                f"generation setting(s) {unknown} are not supported by the modernlm model; it takes until, "
                f"max_gen_toks, do_sample and {', '.join(SAMPLING_KEYS)}"
            )
        if not do_sample:
            kwargs = {"temperature": 0.0, **{k: v for k, v in kwargs.items() if k == "seed"}}  # greedy: no filters
        elif not kwargs.get("temperature"):
            kwargs["temperature"] = 1.0  # transformers' default when sampling
        room = self.max_length - max_gen_toks
        if room < 1:
            raise HarnessArgumentError(
                f"max_gen_toks={max_gen_toks} leaves no room for a prompt in max_length={self.max_length}"
            )
        prompts = [self.tok_encode(c)[-room:] for c in contexts]
        with torch.inference_mode():
            new = generate(
                self.model,
                prompts,
                max_gen_toks,
                eos_token_id=self.eot_token_id,
                stop_strings=[s for s in until if s] or None,
                tokenizer=self.tokenizer,
                **kwargs,
            )
        texts = [self.tokenizer.decode([t for t in ids if t != self.eot_token_id], True) for ids in new]
        return [postprocess_generated_text(t, until, None) for t in texts]


def score_pairs(
    model, pairs: list[tuple[list[int], list[int]]], max_length: int, batch_size: int, pad_id: int
) -> list[tuple[float, bool]]:
    """Log-probability of each continuation after its context, and whether it is the greedy choice at every token.

    Each row is the last max_length + 1 tokens of context + continuation, less its last token (the input); rows run
    longest first in batches, right-padded with `pad_id`."""
    for ctx, cont in pairs:
        if not cont or len(cont) > max_length:
            raise HarnessArgumentError(
                f"a continuation of {len(cont)} tokens cannot be scored with max_length={max_length}; it needs 1 to "
                f"{max_length} tokens"
            )
        if not ctx:
            raise HarnessArgumentError("a loglikelihood request needs at least one context token (BOS or EOS)")
    rows = [(ctx + cont)[-(max_length + 1) :][:-1] for ctx, cont in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -len(rows[i]))
    out: list[tuple[float, bool] | None] = [None] * len(pairs)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            T = len(rows[batch[0]])
            ids = torch.full((len(batch), T), pad_id, dtype=torch.long)  # (B, T)
            for b, i in enumerate(batch):
                ids[b, : len(rows[i])] = torch.tensor(rows[i])
            logprobs = model(ids.to(next(model.parameters()).device)).float().log_softmax(-1)  # (B, T, V)
            for b, i in enumerate(batch):
                n, cont = len(rows[i]), torch.tensor(pairs[i][1], device=logprobs.device)
                lp = logprobs[b, n - len(cont) : n]  # (C, V): the positions that predict the continuation
                picked = lp.gather(-1, cont[:, None]).squeeze(-1)  # (C,)
                out[i] = (float(picked.sum()), bool((lp.argmax(-1) == cont).all()))
    return out


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the "modernlm" model registered (this module's import did that)."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
