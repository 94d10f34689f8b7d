"""Accuracy beside speed for each way of keeping SmolLM2-135M-Instruct's weights, one run, side by side.

Variants: fp32 and bf16 (the GGUF dequantized: the only weights SmolLM2 ships here, so fp32 has the Q4_1 file's
rounding already, and int8/int4 re-round it), int8 (per channel), int4 g32 and int4 g128 (quantized from fp32;
where 128 does not divide a width, as SmolLM2's 576, the largest group that does, and the table says so), and the
GGUF as shipped (Q4_1 blocks and a Q8_0 head kept as they are); a "+native" suffix (int4-g32+native, gguf+native)
decodes with modernlm's own opt-in kernels (quant/native.py) instead of torch's fused ones. For each:
  perplexity on the held-out English text (modernlm/eval/heldout.txt); greedy agreement with fp32 over 64 new
  tokens on 20 chat prompts (tokens equal to fp32's, and the share of prompts identical throughout); decode
  tokens/s at batch 1 and 8 and prefill tokens/s for a 512-token prompt; peak RSS; model bytes; the share of the
  bandwidth floor (model bytes read per token over the streaming-read bandwidth measured in this run).
Speed runs are interleaved: each round runs every variant once, in a fresh subprocess, and the table keeps each
figure's median over rounds. Optional sections:
  --busy          decode at batch 1 beside a CPU-bound job: torch's default threads and OpenMP spin against
                  modernlm's policy (modernlm/threads.py)
  --compile       decode with the one-token step compiled (generation/compiled.py)
  --speculative   plain greedy against prompt-lookup and self-speculative int4 drafts on chat prompts (fp32 target):
                  tokens/s and whether the output is identical
  --kernels       one SmolLM2 FFN matrix (1536 x 576) and the head (49152 x 576) at 1..32 rows: the fused kernels with
                  bf16 and with float32 activations against dequantize + GEMM and the float32 GEMM (quant/kernels.py
                  chose bf16 activations from such a measurement; on another CPU it may differ)

    python benchmarks/quantize.py                            # the table (about 15 minutes on 2 idle cores)
    python benchmarks/quantize.py --busy --compile --speculative --json quant.json
    python benchmarks/quantize.py --quick                     # tiny settings: checks that it runs, figures mean nothing
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ["fp32", "bf16", "int8", "int4-g32", "int4-g128", "gguf"]
QUESTIONS = [
    "What is gravity?",
    "Give me three tips for sleeping better.",
    "Explain what a noun is.",
    "Why do leaves change colour in autumn?",
    "Write a haiku about the sea.",
    "How do I boil an egg?",
    "What is the capital of France, and what is it known for?",
    "Explain photosynthesis to a child.",
    "What are the planets of the solar system?",
    "How does a bicycle stay upright?",
    "Suggest a name for a small bakery.",
    "What is the difference between weather and climate?",
    "Summarise the story of Cinderella in two sentences.",
    "How many legs does a spider have?",
    "What should I pack for a weekend hike?",
    "Why is exercise good for you?",
    "Translate 'good morning' into Spanish and French.",
    "What is a prime number?",
    "Describe a rainbow.",
    "How do vaccines work?",
]
SETTINGS = {
    "full": dict(new_tokens=64, prompts=20, prompt_len=512, decode_tokens=64, rounds=3, ppl_tokens=None, window=512),
    "quick": dict(new_tokens=6, prompts=3, prompt_len=32, decode_tokens=4, rounds=1, ppl_tokens=120, window=64),
}


# ---- workers (each in its own process) ----------------------------------------------------------------------------
def load_variant(name: str):
    """The model of a variant and its label. A "+native" suffix (e.g. gguf+native) decodes with modernlm's own
    kernels (quant/native.py, opt-in) instead of torch's fused ones, for the two side by side."""
    import torch

    import modernlm

    if name.endswith("+native"):
        os.environ["MODERNLM_QUANT_KERNEL"] = "native"
        model, label = load_variant(name.removesuffix("+native"))
        return model, f"{label}, modernlm's kernels"
    if name in ("fp32", "bf16"):
        return modernlm.load_model(dtype=torch.float32 if name == "fp32" else torch.bfloat16), name
    if name == "gguf":
        return modernlm.load_model(quantize="gguf"), name
    model = modernlm.load_model()
    kind, _, group = name.partition("-g")
    group = int(group) if group else "default"
    label = name
    if group != "default":
        widths = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)}
        fits = max(g for g in (32, 64, 128) if g <= group and all(w % g == 0 for w in widths))
        if fits != group:
            label = f"{kind}-g{fits} (g{group} does not divide {sorted(w for w in widths if w % group)[0]})"
        group = fits
    return modernlm.quantize(model, kind, group_size=group), label


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _decode_rate(model, prompts, batch: int, n: int) -> float:
    """New tokens per second after the first: batch x (n - 1) over T(n) - T(1) (prefill cancels), medians of 3."""
    from modernlm.generation import generate

    run = lambda k: generate(model, prompts[:batch], k, temperature=0.0)  # noqa: E731
    run(2)
    return batch * (n - 1) / max(_median_time(lambda: run(n), 3) - _median_time(lambda: run(1), 3), 1e-9)


def worker_accuracy(name: str, s: dict) -> dict:
    import modernlm
    from modernlm.eval import text_perplexity
    from modernlm.generation import generate

    tokenizer = modernlm.load_tokenizer()
    model, label = load_variant(name)
    # the one definition, `modernlm eval perplexity`'s (full: its window 512 and stride 256, the whole text)
    ppl = text_perplexity(model, tokenizer, window=s["window"], stride=s["window"] // 2, max_tokens=s["ppl_tokens"])
    chats = [
        tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}]))
        for q in QUESTIONS[: s["prompts"]]
    ]
    # one at a time: no EOS, all tokens forced
    greedy = [generate(model, c, s["new_tokens"], temperature=0.0)[0] for c in chats]
    return {"label": label, "perplexity": ppl.perplexity, "ppl_tokens": ppl.tokens, "greedy": greedy}


def worker_speed(name: str, s: dict, compiled: bool = False) -> dict:
    import torch

    from modernlm.generation import generate
    from modernlm.quant import model_bytes

    model, label = load_variant(name)
    if compiled:
        from modernlm.generation.compiled import compile_decode

        compile_decode(model)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, model.config.vocab_size - 100, (s["prompt_len"],), generator=g).tolist()
    short = torch.randint(100, model.config.vocab_size - 100, (8, 16), generator=g).tolist()
    generate(model, prompt, 1, temperature=0.0)  # warm-up
    return {
        "label": label,
        "prefill_tok_s": s["prompt_len"] / _median_time(lambda: generate(model, prompt, 1, temperature=0.0), 3),
        "decode1_tok_s": _decode_rate(model, short, 1, s["decode_tokens"]),
        "decode8_tok_s": _decode_rate(model, short, 8, s["decode_tokens"]),
        "model_bytes": model_bytes(model),
        "threads": torch.get_num_threads(),
        "compiled_ok": not getattr(model.__dict__.get("_decode_step"), "failed", True) if compiled else None,
    }


def worker_llamacpp(s: dict) -> dict:
    """llama.cpp (llama-cpp-python, built for this machine) on the same GGUF file, threads and token counts as
    worker_speed's batch-1 figures: greedy decode after a 16-token prompt, and a prompt_len-token prefill."""
    import torch
    from llama_cpp import Llama

    from modernlm.checkpoints.sources import embedded_path

    threads = torch.get_num_threads()
    llm = Llama(
        model_path=str(embedded_path("smollm2-135m-instruct")),
        n_ctx=max(1024, s["prompt_len"] + 64),
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    g = torch.Generator().manual_seed(0)
    vocab = llm.n_vocab()
    prompt = torch.randint(100, vocab - 100, (s["prompt_len"],), generator=g).tolist()
    short = torch.randint(100, vocab - 100, (16,), generator=g).tolist()

    def decode(k: int) -> None:
        llm.reset()
        for i, _ in enumerate(llm.generate(short, temp=0.0, reset=True)):
            if i + 1 >= k:
                break

    def prefill() -> None:
        llm.reset()
        llm.eval(prompt)

    decode(2)
    prefill()
    rate = (s["decode_tokens"] - 1) / max(
        _median_time(lambda: decode(s["decode_tokens"]), 3) - _median_time(lambda: decode(1), 3), 1e-9
    )
    return {
        "label": "llama.cpp (same GGUF)",
        "prefill_tok_s": s["prompt_len"] / _median_time(prefill, 3),
        "decode1_tok_s": rate,
        "threads": threads,
        "version": __import__("llama_cpp").__version__,
    }


def worker_busy(name: str, s: dict, policy: str) -> dict:
    import torch

    from modernlm.threads import apply_threads

    if policy == "modernlm":
        apply_threads()
    model, label = load_variant(name)
    g = torch.Generator().manual_seed(0)
    short = torch.randint(100, model.config.vocab_size - 100, (1, 16), generator=g).tolist()
    return {"decode1_tok_s": _decode_rate(model, short, 1, s["decode_tokens"]), "threads": torch.get_num_threads()}


def worker_kernels(s: dict) -> dict:
    import torch
    import torch.nn.functional as F

    from modernlm.quant import Int4Weight, Int8Weight, plain

    g = torch.Generator().manual_seed(0)
    floats = {
        "ffn 1536x576": torch.randn(1536, 576, generator=g),
        "head 49152x576": torch.randn(49152, 576, generator=g),
    }
    out = {}
    for shape, w in floats.items():
        weights = {"int4 g32": Int4Weight.quantize(w, 32), "int8": Int8Weight.quantize(w), "int8 g32": None}
        if shape.startswith("head"):
            weights["int8 g32"] = Int8Weight.quantize(w, 32)  # GGUF's Q8_0 head
        for rows in (1, 2, 4, 8, 16, 32) if not s["ppl_tokens"] else (1, 8):
            x = torch.randn(rows, 576, generator=g)
            row = {"fp32 GEMM": _median_time(lambda: F.linear(x, w), 5)}  # noqa: B023
            for name, q in weights.items():
                if q is None:
                    continue
                for act in ("bfloat16", "float32"):
                    os.environ["MODERNLM_QUANT_ACT"] = act
                    row[f"{name} fused {act}"] = _median_time(lambda: q.matmul(x), 5)  # noqa: B023
                os.environ.pop("MODERNLM_QUANT_ACT")
                with plain():
                    row[f"{name} dequantize+GEMM"] = _median_time(lambda: q.matmul(x), 5)  # noqa: B023
            out[f"{shape} rows={rows}"] = {k: v * 1e3 for k, v in row.items()}
    return out


def worker_speculative(s: dict) -> dict:
    import modernlm
    from modernlm.generation import generate
    from modernlm.generation.speculative import SpecStats, speculative_generate

    tokenizer = modernlm.load_tokenizer()
    model = modernlm.load_model()
    chats = [
        tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}]))
        for q in QUESTIONS[: max(2, s["prompts"] // 4)]
    ]
    n = s["new_tokens"]
    generate(model, chats[0], 2, temperature=0.0)  # warm-up, so the first timed draft does not pay for it
    speculative_generate(model, chats[0], 2, draft="int4")
    out = {}
    for draft in (None, "ngram", "int4"):
        t, tokens, stats = time.perf_counter(), [], SpecStats()
        for c in chats:
            if draft is None:
                tokens.append(generate(model, c, n, temperature=0.0)[0])
            else:
                tokens.append(speculative_generate(model, c, n, draft=draft, stats=stats))
        out[draft or "plain"] = {
            "tok_s": sum(map(len, tokens)) / (time.perf_counter() - t),
            "tokens": tokens,
            "acceptance": stats.acceptance,
        }
    for draft in ("ngram", "int4"):
        out[draft]["identical"] = out[draft].pop("tokens") == out["plain"]["tokens"]
    out["plain"].pop("tokens")
    return out


# ---- the driver ---------------------------------------------------------------------------------------------------
def run_worker(args: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", *args]
    environ = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    done = subprocess.run(cmd, capture_output=True, text=True, env=environ)
    if done.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bandwidth_gb_s(quick: bool) -> float:
    import torch

    x = torch.ones((16 if quick else 256) * 1024 * 1024)  # 64 MiB or 1 GiB of float32
    x.sum()
    return x.numel() * 4 / _median_time(x.sum, 5) / 1e9


def busy_job() -> subprocess.Popen:
    """A CPU-bound neighbour: one Python process spinning on arithmetic."""
    return subprocess.Popen([sys.executable, "-c", "x = 0\nwhile True:\n    x = (x * 1103515245 + 12345) % 2**31"])


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> tuple[float, float]:
    """(share of tokens equal to the reference's at the same place, share of prompts identical throughout)."""
    same = sum(a == b for t, r in zip(tokens, reference, strict=True) for a, b in zip(t, r, strict=False))
    total = sum(len(r) for r in reference)
    return same / total, sum(t == r for t, r in zip(tokens, reference, strict=True)) / len(reference)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--quick", action="store_true", help="tiny settings, to check the script runs")
    p.add_argument("--busy", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--speculative", action="store_true")
    p.add_argument("--kernels", action="store_true")
    p.add_argument("--llamacpp", action="store_true", help="llama.cpp on the same GGUF, interleaved with the variants")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    s = SETTINGS["quick" if args.quick else "full"]
    if args.worker:
        job, *rest = args.worker
        if job == "accuracy":
            out = worker_accuracy(rest[0], s)
        elif job == "speed":
            out = worker_speed(rest[0], s, compiled=rest[1:] == ["compiled"])
        elif job == "busy":
            out = worker_busy(rest[0], s, rest[1])
        elif job == "kernels":
            out = worker_kernels(s)
        elif job == "llamacpp":
            out = worker_llamacpp(s)
        else:
            out = worker_speculative(s)
        out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
        print(json.dumps(out))
        return
    variants = args.variants.split(",")
    quick = ["--quick"] if args.quick else []
    results = {v: {"accuracy": run_worker(["accuracy", v, *quick])} for v in variants}
    bandwidth = [bandwidth_gb_s(args.quick)]
    speed = {v: [] for v in variants}
    llamacpp = []  # llama.cpp on the same file, when llama-cpp-python is installed (pip install -e ".[llama]")
    has_llamacpp = args.llamacpp and __import__("importlib.util").util.find_spec("llama_cpp") is not None
    for _ in range(s["rounds"]):  # interleaved: each round runs every variant once
        for v in variants:
            speed[v].append(run_worker(["speed", v, *quick]))
        if has_llamacpp:
            llamacpp.append(run_worker(["llamacpp", *quick]))
        bandwidth.append(bandwidth_gb_s(args.quick))
    for v in variants:
        runs = speed[v]
        results[v]["speed"] = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k.endswith(("_s", "_gb"))}
        results[v]["speed"] |= {k: runs[0][k] for k in ("model_bytes", "threads", "label")}
    extra = {}
    if llamacpp:
        extra["llama.cpp"] = {k: statistics.median(r[k] for r in llamacpp) for k in ("prefill_tok_s", "decode1_tok_s")}
        extra["llama.cpp"] |= {k: llamacpp[0][k] for k in ("threads", "version")}
    elif args.llamacpp:
        extra["llama.cpp"] = "skipped: llama-cpp-python is not installed (pip install -e '.[llama]')"
    if args.compile:
        extra["compiled"] = {v: run_worker(["speed", v, "compiled", *quick]) for v in ("fp32", "gguf") if v in variants}
    if args.busy:
        job = busy_job()
        try:
            extra["busy"] = {
                policy: run_worker(["busy", "gguf", policy, *quick], env)
                for policy, env in (
                    ("torch default", {"GOMP_SPINCOUNT": "300000"}),  # libgomp's own default spin, torch's threads
                    ("modernlm", {}),
                )
            }
        finally:
            job.kill()
    if args.speculative:
        extra["speculative"] = run_worker(["speculative", *quick])
        extra["speculative"].pop("peak_rss_gb", None)
    if args.kernels:
        extra["kernels"] = run_worker(["kernels", *quick])
        extra["kernels"].pop("peak_rss_gb", None)
    report(results, statistics.median(bandwidth), extra, s)
    if args.json:
        from modernlm.files import write_json

        write_json(args.json, {"results": results, "bandwidth_gb_s": bandwidth, "extra": extra, "settings": s})


def report(results: dict, bandwidth: float, extra: dict, s: dict) -> None:
    ref = results.get("fp32", next(iter(results.values())))["accuracy"]
    print(
        f"\nSmolLM2-135M-Instruct; bandwidth {bandwidth:.1f} GB/s; perplexity over {ref['ppl_tokens']} held-out "
        f"tokens; greedy agreement with fp32 over {s['new_tokens']} tokens x {len(ref['greedy'])} prompts"
    )
    head = (
        f"{'variant':38} {'ppl':>7} {'agree':>6} {'same':>5} {'b=1 tok/s':>9} {'floor':>6} {'b=8 tok/s':>9} "
        f"{'prefill':>8} {'RSS GB':>7} {'MB':>6}"
    )
    print(head + "\n" + "-" * len(head))
    for r in results.values():
        a, sp = r["accuracy"], r["speed"]
        tok, same = agreement(a["greedy"], ref["greedy"])
        floor = bandwidth * 1e9 / sp["model_bytes"]  # tokens/s if each token read every weight byte once
        print(
            f"{a['label'][:38]:38} {a['perplexity']:7.3f} {tok:6.1%} {same:5.0%} {sp['decode1_tok_s']:9.1f} "
            f"{sp['decode1_tok_s'] / floor:6.0%} {sp['decode8_tok_s']:9.1f} {sp['prefill_tok_s']:8.0f} "
            f"{sp['peak_rss_gb']:7.2f} {sp['model_bytes'] / 1e6:6.0f}"
        )
    ll = extra.get("llama.cpp")
    if isinstance(ll, dict):
        label = f"llama.cpp {ll['version']}, same GGUF"
        print(f"{label:38} {'':7} {'':6} {'':5} {ll['decode1_tok_s']:9.1f} {'':6} {'':>9} "
              f"{ll['prefill_tok_s']:8.0f}   ({ll['threads']} threads, as modernlm)")  # fmt: skip
        for v in ("gguf", "int4-g32", "int8", "fp32"):
            if v in results:
                sp = results[v]["speed"]
                print(f"  {v} / llama.cpp: decode b=1 {sp['decode1_tok_s'] / ll['decode1_tok_s']:.2f}x, "
                      f"prefill {sp['prefill_tok_s'] / ll['prefill_tok_s']:.2f}x")  # fmt: skip
    elif ll:
        print(f"llama.cpp: {ll}")
    for v, c in extra.get("compiled", {}).items():
        print(f"compiled decode step, {v}: b=1 {c['decode1_tok_s']:.1f} tok/s, b=8 {c['decode8_tok_s']:.1f} "
              f"(compiled: {c['compiled_ok']})")  # fmt: skip
    for policy, b in extra.get("busy", {}).items():
        print(f"beside a CPU-bound job, gguf b=1, {policy}: {b['decode1_tok_s']:.1f} tok/s with {b['threads']} threads")
    for name, k in extra.get("kernels", {}).items():
        print(f"kernels, {name} (ms): " + ", ".join(f"{way} {ms:.3f}" for way, ms in k.items()))
    spec = extra.get("speculative")
    if spec:
        for draft, r in spec.items():
            same = "" if draft == "plain" else f", identical output: {r['identical']}, accepted {r['acceptance']:.0%}"
            print(f"speculative {draft:6}: {r['tok_s']:.1f} tok/s ({r['tok_s'] / spec['plain']['tok_s']:.2f}x){same}")


if __name__ == "__main__":
    main()
