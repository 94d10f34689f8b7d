"""`modernlm serve` against llama.cpp's server (llama-cpp-python[server]) on the same GGUF file and threads.

Two measurements, each server in its own process on 127.0.0.1, driven by raw streaming HTTP (server-sent events):
  1. concurrency: C = 1, 4, 8, 16 clients, each sending R streaming chat requests back to back (distinct prompts,
     temperature 0.8, max_tokens fixed, no stop at EOS where the server allows it); total throughput = completion
     tokens of all requests / wall time; time to first token (TTFT) = request sent -> first content chunk, median
     and p90 over the requests.
  2. prefix cache: requests sharing a long system prompt (~600 tokens) with different short questions, one at a time;
     TTFT with modernlm's prefix cache on (hits after the first) against the same server started with it off.
Goals from issue 14: total throughput at 8 clients >= 2x llama.cpp's server; TTFT with prefix hits >= 5x faster.

    python benchmarks/serve.py                      # everything, on an idle machine (~10-15 minutes)
    python benchmarks/serve.py --quick              # a correctness pass: tiny counts, no timing worth reading
    python benchmarks/serve.py --out bench.json     # also write the numbers (atomically, through modernlm.files)
    python benchmarks/serve.py --install-llama-cpp  # pip install 'llama-cpp-python[server]' (a llama.cpp build) first

llama.cpp's side runs only where `import llama_cpp.server` works (pip install 'llama-cpp-python[server]', which
builds llama.cpp); otherwise it is reported as skipped and only modernlm's numbers are shown.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx

SYSTEM = (
    "You are a careful assistant. Answer in plain words, cite no sources, keep to the question, and say so when you "
    "do not know. "
) * 20
QUESTIONS = [
    "Why is the sky blue?", "What is a prime number?", "Name three rivers in Europe.", "How do bees make honey?",
    "What does a compiler do?", "Why do leaves change colour?", "What is the speed of sound?", "Explain a rainbow.",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(argv: list[str], port: int, name: str, startup: float = 300.0):
    """A server process; yields its base URL once /v1/models answers; stops it afterwards."""
    import tempfile

    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a server that logs much (llama.cpp) would fill and block it
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{name} exited at start: {log.read()[-2000:]}")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start within {startup:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def modernlm_argv(
    model: str, port: int, threads: int, prefix: bool, max_batch: int, dtype: str, quantize: str | None = None
) -> list[str]:
    code = (
        f"import torch, sys; torch.set_num_threads({threads}); from modernlm.cli.__main__ import main; sys.exit(main())"
    )
    argv = [sys.executable, "-c", code, "serve", "--model", model, "--port", str(port), "--max-batch", str(max_batch),
            "--context", "1024", "--dtype", dtype]  # fmt: skip
    argv += ["--quantize", quantize] if quantize else []
    return argv + ([] if prefix else ["--prefix-cache-blocks", "0"])


def llama_cpp_argv(model: str, port: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "llama_cpp.server", "--model", model, "--port", str(port), "--host", "127.0.0.1",
            "--n_threads", str(threads), "--n_ctx", "2048",
            "--interrupt_requests", "False"]  # by default a new request cuts the running stream short  # fmt: skip


def stream_chat(url: str, model_id: str, messages: list[dict], max_tokens: int, temperature: float) -> dict:
    """One streaming chat request: {"ttft": s, "tokens": completion tokens, "seconds": total, "status": int}."""
    body = {"model": model_id, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    t0 = time.perf_counter()
    ttft, pieces, usage = None, 0, None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            return {"status": r.status_code, "ttft": None, "tokens": 0, "seconds": time.perf_counter() - t0}
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    pieces += 1
    tokens = usage["completion_tokens"] if usage else pieces  # llama.cpp's server may not send usage in streams
    return {"status": 200, "ttft": ttft, "tokens": tokens, "seconds": time.perf_counter() - t0}


def concurrency(url: str, model_id: str, clients: int, per_client: int, max_tokens: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(per_client):
            question = QUESTIONS[(c + r) % len(QUESTIONS)] + f" (client {c}, request {r})"
            out = stream_chat(url, model_id, [{"role": "user", "content": question}], max_tokens, 0.8)
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    return {
        "clients": clients,
        "requests": len(results),
        "errors": sum(r["status"] != 200 for r in results),
        "tokens": sum(r["tokens"] for r in results),
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "ttft_median_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p90_s": ttfts[max(0, math.ceil(0.9 * len(ttfts)) - 1)] if ttfts else None,  # nearest rank
    }


def prefix_effect(url: str, model_id: str, requests: int, max_tokens: int) -> dict:
    ttfts = []
    for i in range(requests):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        out = stream_chat(url, model_id, messages, max_tokens, 0.0)
        ttfts.append(out["ttft"])
    later = [t for t in ttfts[1:] if t is not None]
    return {"first_ttft_s": ttfts[0], "later_ttft_median_s": statistics.median(later) if later else None}


def run_engine(name: str, argv: list[str], port: int, model_id: str, args) -> dict:
    out = {"name": name, "concurrency": []}
    with server(argv, port, name) as url:
        stream_chat(url, model_id, [{"role": "user", "content": "Hi"}], 4, 0.0)  # warm-up
        for c in args.clients:
            row = concurrency(url, model_id, c, args.per_client, args.max_tokens)
            out["concurrency"].append(row)
            ttft = f"TTFT median {_s(row['ttft_median_s'])}, p90 {_s(row['ttft_p90_s'])}"
            print(f"  {name:10s} {c:3d} clients: {row['tokens_per_s']:8.1f} tokens/s, {ttft}, errors {row['errors']}")
    return out


def _s(value) -> str:
    return "-" if value is None else f"{value:.3f} s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a GGUF file (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for each server")
    p.add_argument("--clients", default="1,4,8,16", help="concurrent clients, comma-separated")
    p.add_argument("--per-client", type=int, default=4, help="requests each client sends")
    p.add_argument("--max-tokens", type=int, default=128, help="max_tokens of each request")
    p.add_argument("--prefix-requests", type=int, default=8, help="requests in the prefix-cache workload")
    p.add_argument("--quick", action="store_true", help="tiny counts: checks that everything runs, nothing more")
    p.add_argument("--quantize", default=None, help="modernlm's weights: int8, int4 or gguf (keep the file's blocks)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="modernlm's weight dtype")
    p.add_argument("--install-llama-cpp", action="store_true",
                   help="pip install 'llama-cpp-python[server]' first (builds llama.cpp: minutes)")  # fmt: skip
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args()
    if args.quick:
        args.clients, args.per_client, args.max_tokens, args.prefix_requests = "1,2", 1, 8, 2
    args.clients = [int(c) for c in args.clients.split(",")]
    if args.model is None:
        from modernlm.checkpoints.sources import embedded_path

        args.model = str(embedded_path("smollm2-135m-instruct"))
    model_id = os.path.basename(args.model)
    max_batch = max(max(args.clients), 1)
    report = {"model": model_id, "threads": args.threads, "quick": args.quick, "engines": []}
    print(f"model {model_id}, {args.threads} threads, clients {args.clients}, {args.per_client} requests each, "
          f"max_tokens {args.max_tokens}{' (quick: correctness only)' if args.quick else ''}")  # fmt: skip
    port = free_port()
    report["engines"].append(
        run_engine(
            "modernlm",
            modernlm_argv(args.model, port, args.threads, True, max_batch, args.dtype, args.quantize),
            port,
            model_id,
            args,
        )
    )
    if args.install_llama_cpp and importlib.util.find_spec("llama_cpp") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "llama-cpp-python[server]"], check=True)
        importlib.invalidate_caches()
    if importlib.util.find_spec("llama_cpp") is not None:
        port = free_port()
        report["engines"].append(run_engine("llama.cpp", llama_cpp_argv(args.model, port, args.threads), port,
                                            args.model, args))  # fmt: skip
    else:
        print("  llama.cpp: skipped (llama-cpp-python is not installed: pip install 'llama-cpp-python[server]')")
        report["llama_cpp"] = "not installed"
    print("prefix cache: a shared system prompt, one request at a time")
    for prefix in (False, True):
        port = free_port()
        with server(
            modernlm_argv(args.model, port, args.threads, prefix, max_batch, args.dtype, args.quantize),
            port,
            "modernlm",
        ) as url:
            row = prefix_effect(url, model_id, args.prefix_requests, 16)
        report[f"prefix_cache_{'on' if prefix else 'off'}"] = row
        print(f"  prefix cache {'on ' if prefix else 'off'}: first TTFT {_s(row['first_ttft_s'])}, later requests' "
              f"median {_s(row['later_ttft_median_s'])}")  # fmt: skip
    on, off = report["prefix_cache_on"], report["prefix_cache_off"]
    if on["later_ttft_median_s"] and off["later_ttft_median_s"]:
        print(f"  TTFT speed-up from prefix hits: {off['later_ttft_median_s'] / on['later_ttft_median_s']:.1f}x")
    failed = any(row["errors"] for e in report["engines"] for row in e["concurrency"])
    if args.out:
        from modernlm.files import write_json

        write_json(args.out, report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
