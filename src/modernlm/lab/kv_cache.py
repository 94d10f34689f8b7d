"""KV-cache size under MHA, GQA and MQA (formula against allocated buffers), decode time with and without it, and
whole generations of growing length with the cache against recomputing the sequence for every new token."""

from __future__ import annotations

import time
from functools import partial

import torch

from ..analysis import kv_cache_bytes
from ..config import ModelConfig
from ..generation import generate, generate_naive
from ..layers.kv_cache import KVCache
from ..model import Transformer
from . import Finding, experiment

GiB, MiB = 1024**3, 1024**2


def _sizes(layers: int, heads: int, head_dim: int, tokens: int) -> dict[str, dict[str, int]]:
    """Formula and allocated bytes (float16, batch 1) for MHA, GQA with 8 KV heads, and MQA."""
    out = {}
    for label, kv in (("MHA", heads), ("GQA-8", 8), ("MQA", 1)):
        cfg = ModelConfig(vocab_size=8, d_model=heads * head_dim, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                          max_seq_len=tokens)  # fmt: skip
        formula = 2 * layers * kv * head_dim * tokens * 2  # 2 (K and V) x L x n_kv x d_h x T x 2 bytes
        cache = KVCache(cfg, batch_size=1, max_len=tokens, dtype=torch.float16)  # real buffers (up to 2 GiB)
        allocated = cache.k.untyped_storage().nbytes() + cache.v.untyped_storage().nbytes()
        out[label] = dict(formula=formula, analysis=kv_cache_bytes(cfg, tokens, 1, torch.float16), allocated=allocated)
        del cache
    return out


def _decode_times(quick: bool) -> dict[str, list[float]]:
    """ms per new token at growing lengths: the cached step against recomputing the whole sequence."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, d_model=128, n_layers=4, n_heads=4, max_seq_len=1024, ffn_multiple_of=64)
    model = Transformer(cfg).eval()
    lengths = [32, 128, 256] if quick else [64, 128, 256, 512, 1024]
    cached, full = [], []
    with torch.inference_mode():
        for T in lengths:
            ids = torch.randint(0, 512, (1, T))
            cache = KVCache.for_model(model, 1, T)
            model(ids[:, :-1], input_pos=torch.arange(T - 1), cache=cache, last_only=True)
            last = torch.tensor([T - 1])
            cached.append(_ms(partial(model, ids[:, -1:], input_pos=last, cache=cache, last_only=True)))
            full.append(_ms(partial(model, ids, last_only=True)))
    return dict(lengths=lengths, cached_ms=cached, recompute_ms=full)


def _generation(quick: bool) -> dict[str, list]:
    """Whole greedy generations of N new tokens after a 16-token prompt: `generate` (prefill once, then one token
    per step through the cache) against `generate_naive` (the whole sequence recomputed for every token), the same
    tokens from both, their times, and the tokens each pushes through the model (closed form)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=512, d_model=128, n_layers=4, n_heads=4, max_seq_len=1100, ffn_multiple_of=64)
    model = Transformer(cfg).eval()
    prompt = torch.randint(0, 512, (16,)).tolist()
    P, news = len(prompt), [8, 24] if quick else [32, 128, 256, 512, 1024]
    out = dict(new_tokens=news, cached_s=[], recompute_s=[], same_tokens=[], cached_tokens=[], recompute_tokens=[])
    with torch.inference_mode():
        for N in news:
            t = time.perf_counter()
            cached = generate(model, [prompt], N, temperature=0.0)[0]
            out["cached_s"].append(time.perf_counter() - t)
            t = time.perf_counter()
            naive = generate_naive(model, [prompt], N)[0]
            out["recompute_s"].append(time.perf_counter() - t)
            out["same_tokens"].append(cached == naive)
            out["cached_tokens"].append(P + N - 1)  # the prompt once, then each new token but the last
            out["recompute_tokens"].append(N * P + N * (N - 1) // 2)  # the whole sequence so far, N times
    return out


def _ms(fn, repeat: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[repeat // 2]


@experiment(
    "kv-cache",
    "GQA/MQA shrink the KV cache by n_heads/n_kv_heads (7B-shaped at 4K fp16: MHA 2 GiB, GQA-8 512 MiB, MQA 64 MiB), "
    "and the cache makes each decode step cost O(1) forward tokens instead of recomputing O(T), so its speed-up over "
    "recomputing grows 'dramatically' with the generation length",
    "study cards on GQA and the KV cache (2·L·n_kv·d_h·T·bytes)",
)
def kv_cache(quick: bool) -> Finding:
    big = _sizes(32, 32, 128, 4096)
    small = _sizes(12, 12, 64, 2048)
    times = _decode_times(quick)
    gen = _generation(quick)
    speedups = [r / c for r, c in zip(gen["recompute_s"], gen["cached_s"], strict=True)]
    agree = all(s["formula"] == s["analysis"] == s["allocated"] for d in (big, small) for s in d.values())
    ratios = [r / c for r, c in zip(times["recompute_ms"], times["cached_ms"], strict=True)]
    expected = {"MHA": 2 * GiB, "GQA-8": 512 * MiB, "MQA": 64 * MiB}
    sizes_ok = agree and all(big[k]["formula"] == v for k, v in expected.items())
    grows = speedups[-1] > speedups[0] and all(gen["same_tokens"])
    verdict = "confirmed" if sizes_ok and ratios[-1] > ratios[0] > 1 and grows else "refuted"
    summary = _summary(big, small, times, gen, agree, grows)
    plot = partial(_plot, big=big, times=times, gen=gen, speedups=speedups)
    return Finding(verdict, summary, dict(seven_b=big, twelve_layer=small, decode=times, generation=gen), plot)


def _summary(big: dict, small: dict, times: dict, gen: dict, agree: bool, grows: bool) -> str:
    """The finding's paragraph: the cache sizes, the decode step's times, the whole generations' times."""
    return (
        f"7B-shaped (32 layers, 32 heads, head dim 128) at 4096 tokens in fp16: MHA {big['MHA']['formula'] / GiB:.2f} "
        f"GiB, GQA-8 {big['GQA-8']['formula'] / MiB:.0f} MiB, MQA {big['MQA']['formula'] / MiB:.0f} MiB; 12 layers, "
        f"head dim 64, 2048 tokens: MHA {small['MHA']['formula'] / MiB:.1f} MiB, GQA-8 "
        f"{small['GQA-8']['formula'] / MiB:.1f} MiB, MQA {small['MQA']['formula'] / MiB:.2f} MiB. The formula, "
        f"modernlm.analysis and the bytes of the allocated cache agree {'exactly' if agree else 'NOT'}. Decode step "
        f"with the cache vs recomputing the sequence, on a 4-layer 128-wide model: "
        + ", ".join(
            f"T={t}: {c:.2f} vs {r:.2f} ms ({r / c:.1f}x)"
            for t, c, r in zip(times["lengths"], times["cached_ms"], times["recompute_ms"], strict=True)
        )  # fmt: skip
        + ". The cached step stays nearly flat while recomputation grows with T. Whole greedy generations after a "
        "16-token prompt, cached vs recomputing the sequence for every token (the same tokens: "
        + ("yes" if all(gen["same_tokens"]) else "NO")
        + "): "
        + ", ".join(
            f"{n} tokens: {c:.2f} vs {r:.2f} s ({r / c:.1f}x; {rt / ct:.0f}x the tokens through the model)"
            for n, c, r, ct, rt in zip(
                gen["new_tokens"],
                gen["cached_s"],
                gen["recompute_s"],
                gen["cached_tokens"],
                gen["recompute_tokens"],
                strict=True,
            )  # fmt: skip
        )
        + f": the speed-up {'grows' if grows else 'does NOT grow'} with the length; the work saved grows linearly "
        "(about N/2 + P times the tokens for N new tokens after P)."
    )


def _plot(fig, *, big: dict, times: dict, gen: dict, speedups: list[float]) -> None:
    """Cache sizes (7B-shaped), ms per decode step against T, and the generations' speed-up against their length."""
    ax1, ax2, ax3 = fig.subplots(1, 3)
    labels = list(big)
    ax1.bar(labels, [big[k]["formula"] / MiB for k in labels])
    ax1.set_ylabel("MiB (7B-shaped, 4K tokens, fp16)")
    ax1.set_yscale("log")
    ax2.plot(times["lengths"], times["cached_ms"], "o-", label="KV cache (one token)")
    ax2.plot(times["lengths"], times["recompute_ms"], "s-", label="recompute all T tokens")
    ax2.set_xlabel("sequence length T")
    ax2.set_ylabel("ms per new token")
    ax2.legend()
    ax3.plot(gen["new_tokens"], speedups, "o-", label="measured")
    ax3.plot(gen["new_tokens"], [r / c for r, c in zip(gen["recompute_tokens"], gen["cached_tokens"], strict=True)],
             "--", label="tokens through the model")  # fmt: skip
    ax3.set_xscale("log", base=2)
    ax3.set_yscale("log")
    ax3.set_xlabel("new tokens generated")
    ax3.set_ylabel("recompute time / cached time")
    ax3.legend()
