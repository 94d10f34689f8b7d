"""The one-token decode step, compiled (DESIGN rule 5: compile the one-token step only).

A decode step of a small model spends much of its time in Python and dispatch (hundreds of modules and ops per
token). `compile_decode(model)` makes the loop in generate.py call `torch.compile`d code for steps of one token
(inductor fuses the small ops around the matmuls and leaves the quantized kernels as calls); prefill stays eager,
its length varies. Shapes are fixed from step to step (the cache is static and masked), so the step compiles once
per cache size. Where compiling fails (no C++ compiler, an op inductor cannot take) the step runs eagerly from then
on and a notice says so once; the output is the same either way (tests compare them).
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger("modernlm")


class CompiledStep:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.failed = False
        self._compiled = None
        self.seen: set[tuple] = set()  # the (rows, cache length, masked) shapes compiled for

    def _forward(self, ids, input_pos, cache, attention_mask):
        return self.model(ids, input_pos=input_pos, cache=cache, attention_mask=attention_mask, last_only=True)

    def __call__(self, ids, *, input_pos, cache, attention_mask=None, last_only=True) -> torch.Tensor:
        if self.failed or ids.shape[1] != 1 or not last_only:
            return self.model(ids, input_pos=input_pos, cache=cache, attention_mask=attention_mask, last_only=last_only)
        if self._compiled is None:
            self._compiled = torch.compile(self._forward, dynamic=False)
        shape = (ids.shape[0], getattr(cache, "max_len", None), attention_mask is not None)
        first = shape not in self.seen
        if first:  # torch.compile works silently for seconds: say so, once per shape it compiles for
            log.info("compiling the one-token decode step for %d row(s) x %s positions (once; seconds)...",
                     shape[0], shape[1])  # fmt: skip
            self.seen.add(shape)
        t0 = time.perf_counter()
        try:
            out = self._compiled(ids, input_pos, cache, attention_mask)
            if first:
                log.info("compiled the decode step in %.1f s", time.perf_counter() - t0)
            return out
        except Exception as e:  # a compiler problem, not the input's: the eager step computes the same thing
            self.failed = True
            log.info("could not compile the decode step (%s: %s); decoding eagerly", type(e).__name__, str(e)[:200])
            return self.model(ids, input_pos=input_pos, cache=cache, attention_mask=attention_mask, last_only=True)


def compile_decode(model: torch.nn.Module) -> torch.nn.Module:
    """Have generate() run the model's one-token steps compiled; returns the model."""
    model.__dict__["_decode_step"] = CompiledStep(model)
    return model


def decode_step(model: torch.nn.Module):
    """What generate() calls for a one-token step: the compiled step if compile_decode(model) ran, else the model."""
    return model.__dict__.get("_decode_step", model)
