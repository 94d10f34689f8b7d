"""modernlm against Hugging Face transformers on the same weights (the embedded SmolLM2-135M-Instruct GGUF), one run.

For each dtype (float32, bfloat16) and each engine, in a fresh subprocess (so peak memory is the engine's own):
  load time; prefill tokens/s for a 512-token prompt (logits of the last position only, for both engines);
  greedy decode tokens/s for 128 new tokens at batch 1 and at batch 8 (all 128 forced, no EOS stop); peak RSS.
Also modernlm's prefix reuse: a second chat-like turn that shares a 480-token prefix, with and without reuse.
Then ratios (modernlm / transformers) and the share of the bandwidth floor: bytes of weights read per decode step
over this machine's streaming-read bandwidth, measured here with a torch float32 sum over 1 GiB.

    python benchmarks/generate.py                 # everything (~8 minutes on 2 cores)
    python benchmarks/generate.py --dtypes float32 --new-tokens 32    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PROMPT_LEN, BATCH = 512, 8


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _decode_rate(run, batch: int, new_tokens: int) -> float:
    """New tokens per second after the first: batch x (n - 1) over T(n) - T(1), medians of 3 (prefill cancels)."""
    run(batch, 2)  # warm-up
    first = _median_time(lambda: run(batch, 1), 3)
    return batch * (new_tokens - 1) / (_median_time(lambda: run(batch, new_tokens), 3) - first)


def _prompts(vocab: int, n: int, length: int, seed: int = 0) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, vocab - 100, (n, length), generator=g).tolist()


def worker_modernlm(dtype: str, new_tokens: int) -> dict:
    import torch

    import modernlm
    from modernlm.checkpoints import gguf_cache
    from modernlm.checkpoints.sources import embedded_path
    from modernlm.generation import Session, generate

    gguf_cache.converted(embedded_path("smollm2-135m-instruct"))  # the one-time conversion is not timed as load
    t = time.perf_counter()
    model = modernlm.load_model(dtype=dtype)
    load_s = time.perf_counter() - t
    prompt = _prompts(model.config.vocab_size, 1, PROMPT_LEN)[0]
    short = _prompts(model.config.vocab_size, BATCH, 16, seed=1)
    generate(model, prompt, 1, temperature=0.0)  # warm-up
    out = {
        "load_s": load_s,
        "prefill_tok_s": PROMPT_LEN / _median_time(lambda: generate(model, prompt, 1, temperature=0.0), 3),
        "decode1_tok_s": _decode_rate(lambda b, n: generate(model, short[:b], n, temperature=0.0), 1, new_tokens),
        "decode8_tok_s": _decode_rate(lambda b, n: generate(model, short[:b], n, temperature=0.0), BATCH, new_tokens),
    }
    # prefix reuse: turn 2 shares the first 480 tokens with turn 1 (a chat history), then 32 new prompt tokens
    turn1, turn2 = prompt[:480], prompt[:480] + _prompts(model.config.vocab_size, 1, 32, seed=2)[0]
    session = Session(model)
    session.generate(turn1, 1, temperature=0.0)
    t = time.perf_counter()
    session.generate(turn2, 1, temperature=0.0)
    out["turn2_reuse_s"] = time.perf_counter() - t
    out["turn2_reused_tokens"] = session.stats.reused_tokens
    session.reset()
    t = time.perf_counter()
    session.generate(turn2, 1, temperature=0.0)
    out["turn2_fresh_s"] = time.perf_counter() - t
    out["weight_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    out["threads"] = torch.get_num_threads()
    return out


def worker_transformers(dtype: str, new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from modernlm.checkpoints.sources import embedded_path

    path = embedded_path("smollm2-135m-instruct")
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=getattr(torch, dtype)).eval()
    load_s = time.perf_counter() - t
    vocab = model.config.vocab_size
    prompt = torch.tensor(_prompts(vocab, 1, PROMPT_LEN))
    short = torch.tensor(_prompts(vocab, BATCH, 16, seed=1))

    def gen(ids: torch.Tensor, n: int) -> None:
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )

    gen(prompt, 1)  # warm-up
    return {
        "load_s": load_s,
        "prefill_tok_s": PROMPT_LEN / _median_time(lambda: gen(prompt, 1), 3),
        "decode1_tok_s": _decode_rate(lambda b, n: gen(short[:b], n), 1, new_tokens),
        "decode8_tok_s": _decode_rate(lambda b, n: gen(short[:b], n), BATCH, new_tokens),
        "threads": torch.get_num_threads(),
    }


def bandwidth_gb_s() -> float:
    import torch

    x = torch.ones(256 * 1024 * 1024)  # 1 GiB of float32
    x.sum()
    return x.numel() * 4 / _median_time(x.sum, 5) / 1e9


def run_worker(engine: str, dtype: str, new_tokens: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, "--dtypes", dtype, "--new-tokens", str(new_tokens)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise RuntimeError(f"{engine} {dtype} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: dict, bandwidth: float, new_tokens: int) -> None:
    print(f"\nSmolLM2-135M-Instruct, {new_tokens} new tokens, prompt {PROMPT_LEN}; bandwidth {bandwidth:.1f} GB/s")
    head = f"{'dtype':9} {'measure':24} {'modernlm':>10} {'transformers':>13} {'ratio':>7}"
    print(head + "\n" + "-" * len(head))
    rows = [
        ("load_s", "load (s)"),
        ("prefill_tok_s", "prefill tok/s"),
        ("decode1_tok_s", "decode b=1 tok/s"),
        ("decode8_tok_s", "decode b=8 tok/s (total)"),
        ("peak_rss_gb", "peak RSS (GB)"),
    ]
    for dtype, pair in results.items():
        ours, theirs = pair["modernlm"], pair["transformers"]
        for key, label in rows:
            print(f"{dtype:9} {label:24} {ours[key]:10.2f} {theirs[key]:13.2f} {ours[key] / theirs[key]:6.2f}x")
        floor = bandwidth * 1e9 / ours["weight_bytes"]
        print(
            f"{dtype:9} {'b=1 floor tok/s':24} {floor:10.1f}   (modernlm at {ours['decode1_tok_s'] / floor:.0%} of it, "
            f"transformers at {theirs['decode1_tok_s'] / floor:.0%})"
        )
        print(
            f"{dtype:9} {'prefix reuse, turn 2':24} {ours['turn2_reuse_s']:9.3f}s  vs {ours['turn2_fresh_s']:.3f}s "
            f"without ({ours['turn2_reused_tokens']} of {PROMPT_LEN} tokens reused)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", choices=["modernlm", "transformers"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        fn = worker_modernlm if args.worker == "modernlm" else worker_transformers
        out = fn(args.dtypes, args.new_tokens)
        out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
        print(json.dumps(out))
        return
    results = {}
    for dtype in args.dtypes.split(","):
        results[dtype] = {e: run_worker(e, dtype, args.new_tokens) for e in ("modernlm", "transformers")}
        print(dtype, json.dumps(results[dtype]), flush=True)
    bandwidth = bandwidth_gb_s()
    report(results, bandwidth, args.new_tokens)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "bandwidth_gb_s": bandwidth, "new_tokens": args.new_tokens}, f, indent=2)


if __name__ == "__main__":
    main()
