"""The engine's counters, written in the Prometheus text exposition format (version 0.0.4) for `GET /metrics`.

Counters only grow; gauges are the state now; histograms count observations at or below each bucket's upper bound
(cumulative, with `+Inf`), beside their sum and count. Tokens/s is the generated tokens of the last `window` seconds.
The engine thread writes, the server's thread reads: each value is a plain int or float (atomic to read in CPython).
"""

from __future__ import annotations

import bisect
import time
from collections import deque

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, n in zip([*map(str, self.buckets), "+Inf"], self.counts, strict=True):
            total += n
            out.append(f'{name}_bucket{{le="{bound}"}} {total}')
        return [*out, f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]


class Metrics:
    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.requests: dict[str, int] = {}  # finished requests by finish reason
        self.rejected = 0  # refused with 429 (queue full)
        self.prompt_tokens = 0  # prefilled (computed) prompt tokens
        self.reused_tokens = 0  # prompt tokens taken from the prefix cache
        self.generated_tokens = 0
        self.saved_prefill_s = 0.0  # reused tokens x the measured prefill time per token
        self.active = 0
        self.queued = 0
        self.ttft = Histogram()
        self.latency = Histogram()
        self._recent: deque[tuple[float, int]] = deque()

    # ---- written by the engine ----------------------------------------------------------------------------------
    def prefilled(self, computed: int, reused: int, saved_s: float) -> None:
        self.prompt_tokens += computed
        self.reused_tokens += reused
        self.saved_prefill_s += saved_s

    def generated(self, n: int, first: bool, since: float) -> None:
        now = time.monotonic()
        self.generated_tokens += n
        self._recent.append((now, n))
        while self._recent[0][0] < now - self.window:  # bounded: only the last window is kept
            self._recent.popleft()
        if first:
            self.ttft.observe(now - since)

    def finished(self, reason: str, seconds: float) -> None:
        self.requests[reason] = self.requests.get(reason, 0) + 1
        self.latency.observe(seconds)

    def set_load(self, active: int, queued: int) -> None:
        self.active, self.queued = active, queued

    # ---- read by the server -------------------------------------------------------------------------------------
    def tokens_per_s(self) -> float:
        cutoff = time.monotonic() - self.window
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        return sum(n for _, n in list(self._recent)) / self.window

    def hit_rate(self) -> float:
        total = self.prompt_tokens + self.reused_tokens
        return self.reused_tokens / total if total else 0.0

    def prometheus(self, prefix_blocks: int = 0) -> str:
        m = "modernlm"
        lines = [
            f"# HELP {m}_requests_total Finished requests by finish reason.",
            f"# TYPE {m}_requests_total counter",
            *(f'{m}_requests_total{{finish_reason="{r}"}} {n}' for r, n in sorted(self.requests.items())),
        ]
        for name, kind, value, text in [
            ("requests_rejected_total", "counter", self.rejected, "Requests refused because the queue was full."),
            ("prompt_tokens_total", "counter", self.prompt_tokens, "Prompt tokens prefilled (computed)."),
            ("prefix_cache_hit_tokens_total", "counter", self.reused_tokens, "Prompt tokens reused from the cache."),
            ("prefix_cache_hit_rate", "gauge", round(self.hit_rate(), 6), "Reused / all prompt tokens so far."),
            ("prefix_cache_saved_prefill_seconds_total", "counter", round(self.saved_prefill_s, 6),
             "Prefill time the reused tokens would have cost, at the measured prefill rate."),
            ("prefix_cache_blocks", "gauge", prefix_blocks, "Blocks held by the prefix cache."),
            ("generation_tokens_total", "counter", self.generated_tokens, "Tokens generated."),
            ("generation_tokens_per_second", "gauge", round(self.tokens_per_s(), 3),
             f"Tokens generated per second over the last {self.window:g} s."),
            ("active_sequences", "gauge", self.active, "Sequences in the running batch."),
            ("queue_length", "gauge", self.queued, "Requests waiting for a batch row."),
        ]:  # fmt: skip
            lines += [f"# HELP {m}_{name} {text}", f"# TYPE {m}_{name} {kind}", f"{m}_{name} {value}"]
        for name, hist, text in [
            ("time_to_first_token_seconds", self.ttft, "From submission (queue included) to the first token."),
            ("request_latency_seconds", self.latency, "From submission (queue included) to the end."),
        ]:
            lines += [f"# HELP {m}_{name} {text}", f"# TYPE {m}_{name} histogram", *hist.lines(f"{m}_{name}")]
        return "\n".join(lines) + "\n"
