"""The serving engine: continuous batching over one static KV cache, on a background thread.

The cache has `max_batch` rows; each running sequence owns one row and writes its keys and values at its own positions
(the model takes per-row positions, `input_pos` of shape (B, T)). The loop, one step at a time:
  1. drop cancelled and timed-out sequences; admit waiting requests into free rows (copying the prefix-cache blocks of
     the prompt into the row); prefill the next chunk of each prompt not yet in its row (at most `prefill_chunk`
     tokens, one forward per prompt, so a long prompt delays the others' next token by one chunk, not by all of it),
     and after a prompt's last chunk choose its first token;
  2. one forward for all running sequences, each feeding its last token at its own position (a (B, 1) batch over
     the rows in use and the positions written so far), and choose each one's next token with its own settings
     (a row still prefilling feeds a placeholder where its next chunk will write, and its logits are not read);
  3. sequences that end (EOS, a stop string, max_tokens, the context, the time limit) leave; the last row moves into
     the freed one, so the running sequences always fill rows 0..n-1.
A request joins and leaves at these token boundaries. Its tokens equal what `modernlm.generate` gives it alone: rows
never see each other (the mask hides other rows' slots by construction: attention is per row), and sampling uses the
request's own settings, penalties and seeded generator.

Events reach the caller through a callback (called on the engine thread; it must not block) or a queue.
Shapes: B running rows, S cache positions in the step's window, V vocabulary.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..checkpoints.limits import check_memory, kv_bytes
from ..generation.inputs import make_generator
from ..generation.sampling import SamplingParams, next_token
from ..generation.stops import IncrementalDecoder
from ..layers.kv_cache import new_cache
from .metrics import Metrics
from .prefix_cache import PrefixCache

log = logging.getLogger("modernlm")


class QueueFull(RuntimeError):
    """The engine's waiting queue is full: try again later (HTTP 429)."""


@dataclass
class Request:
    """One sequence to generate. `prompt`: token ids; `stop`: strings that end the text (not included in it)."""

    prompt: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    eos: frozenset[int] = frozenset()
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's log-prob and the k most likely
    time_limit: float | None = None  # seconds from admission; None: the engine's

    def sampling(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_k, self.top_p, self.min_p, self.repetition_penalty)


@dataclass
class Event:
    """`kind` "token": one new token (its text delta may be empty: held back for a stop string or an incomplete
    character); "done": the end, with the finish reason and the counts; "error": the engine failed this request."""

    kind: str
    text: str = ""
    token: int | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: str | None = None  # "stop", "length", "cancelled", "time_limit"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class Handle:
    """The caller's side of a submitted request: `cancel()` it, read its events (`events()`), or `result()`."""

    def __init__(self, request: Request, on_event: Callable[[Event], None] | None) -> None:
        self.request = request
        self.cancelled = False
        self.submitted = time.monotonic()
        self._queue: queue.Queue[Event] | None = None if on_event else queue.Queue()
        self._on_event = on_event or self._queue.put

    def cancel(self) -> None:
        self.cancelled = True

    def emit(self, event: Event) -> None:
        self._on_event(event)

    def events(self, timeout: float | None = None):
        """Yield events until the last one ("done" or "error"); only without an `on_event` callback."""
        while True:
            event = self._queue.get(timeout=timeout)
            yield event
            if event.kind != "token":
                return

    def result(self, timeout: float | None = None) -> tuple[list[int], str, Event]:
        """(token ids, text, the final event), waiting for the end."""
        ids, text, last = [], [], None
        for last in self.events(timeout):
            if last.kind == "token":
                ids.append(last.token)
                text.append(last.text)
        return ids, "".join(text), last


class _Sequence:
    """A running request: its row, tokens, sampling state and text."""

    def __init__(self, handle: Handle, row: int, vocab: int, device, tokenizer) -> None:
        r = handle.request
        self.handle, self.request, self.row = handle, r, row
        self.params = r.sampling()
        self.tokens = list(r.prompt)  # prompt + generated; keys and values of all but the last are in the row
        self.generated: list[int] = []
        self.generator = make_generator(r.seed, device)
        self.counts = None
        if r.presence_penalty or r.frequency_penalty or self.params.uses_penalty:
            self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)  # (V,) of generated tokens
        self.seen = None
        if self.params.uses_penalty:
            self.seen = torch.zeros(1, vocab, dtype=torch.bool, device=device)
            self.seen[0, torch.tensor(r.prompt, device=device)] = True
        self.decoder = IncrementalDecoder(tokenizer)
        self.text, self.emitted = "", 0
        self.cached_tokens = 0
        self.filled = 0  # prompt positions whose keys and values are in the row (the prefill goes in chunks)
        self.started = handle.submitted  # latencies count the time in the queue
        self.deadline = None

    @property
    def prefilling(self) -> bool:
        return self.filled < len(self.request.prompt)

    @property
    def position(self) -> int:  # where the last token's key and value go
        return len(self.tokens) - 1


def _check_engine_args(**values) -> None:
    """The engine's sizes: positive integers (a context of None: the model's; 0 prefix blocks: no prefix cache), and a
    time limit that is a positive finite number of seconds. ValueError naming the argument."""
    for name, value in values.items():
        if name == "time_limit":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"time_limit must be a positive number of seconds, got {value!r}")
            continue
        if value is None and name == "context":
            continue
        least = 0 if name == "prefix_blocks" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")


class Engine:
    """Continuous batching for one model. `start()` runs the loop on a daemon thread; `submit()` queues a request.

    max_batch: rows of the KV cache (sequences running at once); max_queue: requests waiting beyond them (more is
    QueueFull); context: positions per row (default: the model's max_seq_len); prefix_blocks: blocks of `block`
    tokens kept across requests (0: no prefix cache); prefill_chunk: prompt tokens prefilled per step for one request;
    time_limit: seconds a request may run once admitted."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        context: int | None = None,
        prefix_blocks: int = 256,
        prefill_chunk: int = 512,
        block: int = 16,
        time_limit: float = 600.0,
        kv_cache: str = "auto",
    ) -> None:
        _check_engine_args(max_batch=max_batch, max_queue=max_queue, context=context, prefix_blocks=prefix_blocks,
                           prefill_chunk=prefill_chunk, block=block, time_limit=time_limit)  # fmt: skip
        self.model, self.tokenizer = model.eval(), tokenizer
        limit = model.config.max_seq_len
        self.context = min(context or limit, limit)
        itemsize = next(model.parameters()).element_size()
        check_memory(kv_bytes(model.config, max_batch, self.context, itemsize),
                     f"the KV cache of {max_batch} sequences x {self.context} positions",
                     "lower --max-batch or --context", next(model.parameters()).device)  # fmt: skip
        self.max_batch, self.max_queue, self.time_limit = max_batch, max_queue, time_limit
        self.prefill_chunk = prefill_chunk
        self.vocab = model.config.vocab_size
        self.device = next(model.parameters()).device
        self.cache = new_cache(model, max_batch, self.context, kv_cache, rolling=False)  # rows at their own positions
        self.prefix = PrefixCache(self.cache, prefix_blocks, block) if prefix_blocks else None
        self.metrics = Metrics()
        self.running: list[_Sequence] = []
        self.waiting: deque[Handle] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._prefill_s_per_token = 0.0  # running estimate, for the saved-prefill metric

    # ---- the caller's side --------------------------------------------------------------------------------------
    def start(self) -> Engine:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="modernlm-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, request: Request, on_event: Callable[[Event], None] | None = None) -> Handle:
        """Queue a request (checked here); raises QueueFull when `max_queue` requests already wait."""
        self.check(request)
        handle = Handle(request, on_event)
        with self._wake:
            if len(self.waiting) >= self.max_queue:
                self.metrics.rejected += 1
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are waiting; retry later")
            self.waiting.append(handle)
            self._wake.notify()
        return handle

    def check(self, request: Request) -> None:
        """ValueError naming the problem, for a request that cannot run."""
        request.sampling()
        n = len(request.prompt)
        if n == 0:
            raise ValueError("the prompt is empty: give at least one token")
        if n > self.context:
            raise ValueError(f"the prompt has {n} tokens, more than this server's context of {self.context}")
        if not isinstance(request.max_tokens, int) or request.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {request.max_tokens!r}")
        bad = next((t for t in request.prompt if not 0 <= t < self.vocab), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.vocab})")

    def room(self, prompt_tokens: int) -> int:
        """New tokens that fit after a prompt: the last is chosen from position context - 1."""
        return self.context - prompt_tokens + 1

    def generate(self, prompt: Sequence[int], max_tokens: int, **options) -> tuple[list[int], str, Event]:
        """Run one request to its end (a convenience for tests and scripts)."""
        return self.submit(Request(list(prompt), max_tokens, **options)).result()

    @property
    def active(self) -> int:
        return len(self.running)

    # ---- the loop -----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.waiting and not self.running:
                    self._wake.wait()
                if self._stopping:
                    break
            try:
                self._step()
            except Exception as e:  # a bug: fail the requests in flight, keep serving
                log.exception("serving engine step failed")
                for seq in list(self.running):
                    seq.handle.emit(Event("error", text=f"internal error: {type(e).__name__}"))
                self.running.clear()
        while self.running:  # _finish takes each out of the list
            self._finish(self.running[-1], "cancelled")
        with self._wake:
            waiting, self.waiting = list(self.waiting), deque()
        for handle in waiting:
            handle.emit(Event("done", finish_reason="cancelled", prompt_tokens=len(handle.request.prompt)))

    @torch.inference_mode()
    def _step(self) -> None:
        self._drop_finished_by_caller()
        while len(self.running) < self.max_batch:
            with self._wake:
                if not self.waiting:
                    break
                handle = self.waiting.popleft()
            if handle.cancelled:
                handle.emit(Event("done", finish_reason="cancelled", prompt_tokens=len(handle.request.prompt)))
                continue
            try:
                self._admit(handle)
            except Exception as e:  # a bug; this request fails, the others go on
                log.exception("serving engine: admitting a request failed")
                handle.emit(Event("error", text=f"internal error: {type(e).__name__}"))
        for seq in [s for s in self.running if s.prefilling]:
            try:
                self._prefill(seq)
            except Exception as e:  # a bug; this request fails, the others go on
                log.exception("serving engine: a prefill failed")
                if seq in self.running:
                    self._leave(seq)
                seq.handle.emit(Event("error", text=f"internal error: {type(e).__name__}"))
        self.metrics.set_load(len(self.running), len(self.waiting))
        if self.running:
            self._decode()

    def _drop_finished_by_caller(self) -> None:
        now = time.monotonic()
        for seq in list(self.running):
            if seq.handle.cancelled:
                self._finish(seq, "cancelled")
            elif seq.deadline is not None and now > seq.deadline:
                self._finish(seq, "time_limit")

    def _admit(self, handle: Handle) -> None:
        """Give a request a row, with the prefix cache's blocks of its prompt; the rest is prefilled in chunks."""
        seq = _Sequence(handle, len(self.running), self.vocab, self.device, self.tokenizer)
        limit = seq.request.time_limit if seq.request.time_limit is not None else self.time_limit
        seq.deadline = time.monotonic() + limit
        prompt = seq.request.prompt
        if self.prefix is not None:  # at least the last prompt token is prefilled: its logits choose the first token
            seq.filled = self.prefix.load(self.prefix.lookup(prompt, len(prompt) - 1), self.cache, seq.row)
        seq.cached_tokens = seq.filled
        self.metrics.prefilled(0, seq.filled, seq.filled * self._prefill_s_per_token)
        self.running.append(seq)

    def _prefill(self, seq: _Sequence) -> None:
        """The next chunk of the prompt (at most `prefill_chunk` tokens); after the last one, the first new token."""
        prompt = seq.request.prompt
        start, end = seq.filled, min(len(prompt), seq.filled + self.prefill_chunk)
        t0 = time.perf_counter()
        ids = torch.tensor([prompt[start:end]], device=self.device)  # (1, T)
        pos = torch.arange(start, end, device=self.device)  # (T,)
        view = self.cache.narrow(seq.row, 1, _bucket(end, self.context))
        logits = self.model(ids, input_pos=pos, cache=view, last_only=True)[:, -1]  # (1, V)
        self._note_prefill(end - start, time.perf_counter() - t0)
        seq.filled = end
        if not seq.prefilling:
            if self.prefix is not None:
                self.prefix.store(prompt, self.cache, seq.row)
            self._advance(seq, logits[0])

    def _decode(self) -> None:
        """One forward for every row; a row still prefilling feeds a placeholder at the position its next chunk
        overwrites (so the rows stay one contiguous batch), and its logits are not used."""
        rows = list(self.running)
        if all(s.prefilling for s in rows):
            return
        ids = torch.tensor([[0 if s.prefilling else s.tokens[-1]] for s in rows], device=self.device)  # (B, 1)
        pos = torch.tensor([[s.filled if s.prefilling else s.position] for s in rows], device=self.device)  # (B, 1)
        width = _bucket(int(pos.max()) + 1, self.context)
        view = self.cache.narrow(0, len(rows), width)
        logits = self.model(ids, input_pos=pos, cache=view, last_only=True)[:, -1]  # (B, V)
        for seq, row in zip(rows, logits, strict=True):
            if not seq.prefilling:
                self._advance(seq, row)

    # ---- one token of one sequence ------------------------------------------------------------------------------
    def _advance(self, seq: _Sequence, logits: torch.Tensor) -> None:  # logits (V,)
        token, logprob, top = self._choose(seq, logits)
        seq.tokens.append(token)
        seq.generated.append(token)
        self.metrics.generated(1, first=len(seq.generated) == 1, since=seq.started)
        delta, stopped = "", False
        if token in seq.request.eos:  # the EOS token itself is not text
            reason = "stop"
        else:
            seq.text += seq.decoder.push(token)
            delta, stopped = self._release(seq, final=False)
            reason = "stop" if stopped else None
        if reason is None and len(seq.generated) >= seq.request.max_tokens:
            reason = "length"
        if reason is None and seq.position >= self.context:  # the next key would not fit
            reason = "length"
        if reason is not None and not stopped:  # the end: what was held back, incomplete characters too
            seq.text += seq.decoder.flush()
            more, stopped = self._release(seq, final=True)
            delta, reason = delta + more, "stop" if stopped else reason
        seq.handle.emit(Event("token", text=delta, token=token, logprob=logprob, top_logprobs=top))
        if reason is not None:
            self._finish(seq, reason)

    def _choose(self, seq: _Sequence, logits: torch.Tensor) -> tuple[int, float | None, list[tuple[int, float]]]:
        r = seq.request
        scores = logits[None]  # (1, V)
        if seq.counts is not None and (r.presence_penalty or r.frequency_penalty):  # OpenAI's definition
            scores = scores - r.frequency_penalty * seq.counts - r.presence_penalty * (seq.counts > 0).float()
        token = int(next_token(scores, seq.params, seq.seen, seq.generator)[0])
        if seq.counts is not None:
            seq.counts[token] += 1
        if seq.seen is not None:
            seq.seen[0, token] = True
        if r.logprobs is None:
            return token, None, []
        lp = logits.float().log_softmax(-1)  # (V,): the model's own distribution
        top = []
        if r.logprobs > 0:
            values, indices = lp.topk(min(r.logprobs, self.vocab))
            top = list(zip(indices.tolist(), values.tolist(), strict=True))
        return token, float(lp[token]), top

    def _release(self, seq: _Sequence, final: bool) -> tuple[str, bool]:
        """The text that can be shown now, and whether a stop string ended it: text that may be the start of a stop
        string is held back until it is known not to be one."""
        stops = seq.request.stop
        start = seq.emitted
        for s in stops:
            at = seq.text.find(s, max(0, start - len(s) + 1))
            if at >= 0:
                seq.text = seq.text[:at]
                break
        else:
            end = len(seq.text) if final else len(seq.text) - _held(seq.text, stops)
            seq.emitted = max(start, end)
            return seq.text[start : seq.emitted], False
        seq.emitted = max(start, len(seq.text))
        return seq.text[start : seq.emitted], True

    def _finish(self, seq: _Sequence, reason: str) -> None:
        if self.prefix is not None and reason != "cancelled":  # the turn's own tokens serve the next turn
            written = seq.request.prompt[: seq.filled] if seq.prefilling else seq.tokens[:-1]
            self.prefix.store(written, self.cache, seq.row)
        self._leave(seq)
        self.metrics.finished(reason, time.monotonic() - seq.started)
        seq.handle.emit(
            Event(
                "done",
                finish_reason=reason,
                prompt_tokens=len(seq.request.prompt),
                completion_tokens=len(seq.generated),
                cached_tokens=seq.cached_tokens,
            )
        )

    def _leave(self, seq: _Sequence) -> None:
        """Take a sequence out of the batch; the last row fills the hole, so running sequences stay in rows 0..n-1."""
        last = self.running.pop()
        if last is not seq:
            # positions up to its last token's: this step's forward may have written that one already
            n = min(last.position + 1, self.context)
            self.cache.copy_row(seq.row, last.row, n)
            last.row = seq.row
            self.running[seq.row] = last

    def _note_prefill(self, computed: int, seconds: float) -> None:
        rate = seconds / computed
        old = self._prefill_s_per_token
        self._prefill_s_per_token = rate if old == 0 else 0.9 * old + 0.1 * rate
        self.metrics.prefilled(computed, 0, 0.0)


def _held(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    held = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), held, -1):
            if text.endswith(s[:n]):
                held = n
                break
    return held


def _bucket(n: int, limit: int, step: int = 64) -> int:
    """Positions attended: n rounded up to a multiple of `step` (fewer distinct shapes), at most `limit`."""
    return min(limit, -(-n // step) * step)
