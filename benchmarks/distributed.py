"""Data-parallel throughput: tokens/s of DDP and FSDP on 1, 2 (...) processes at one global batch, the scaling
efficiency against one process, and MFU (analysis.mfu) where the peak FLOP/s is known.

Each process count runs in its own group of processes, started here the way torchrun starts them, on the library's
own path (modernlm.distributed's wrap, the trainer's loss and AdamW, the global batch split into rows per process).
On CPU the cores are shared out: each of N processes gets cores / N torch threads, so scaling compares the same
machine used as 1 x cores or N x cores / N; efficiency = tok/s(N) / tok/s(1) (1.0: no loss to communication).
On GPUs each process takes one GPU (up to the number of GPUs), bf16 autocast, fused AdamW, optionally compiled, and
efficiency = tok/s(N) / (N * tok/s(1)) (weak in hardware: N GPUs for the same global batch).

    python benchmarks/distributed.py                                   # CPU: ddp and fsdp on 1 and 2 processes
    python benchmarks/distributed.py --device cuda --world-sizes 1 2 4 8 --precision bf16 --compile
    python benchmarks/distributed.py --tiny                            # a seconds-long check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

# bf16 dense peaks (FLOP/s) of common GPUs, by a substring of torch.cuda.get_device_name(); --peak-tflops overrides
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}
SHAPES = {
    "tiny": dict(n_layers=2, d_model=64, n_heads=2, seq_len=32, batch=8, vocab=256),
    "small": dict(n_layers=4, d_model=256, n_heads=4, seq_len=128, batch=16, vocab=4096),
    "gpu": dict(n_layers=12, d_model=768, n_heads=12, seq_len=1024, batch=32, vocab=50304),
}


def model_config(shape: dict):
    from modernlm import ModelConfig

    return ModelConfig(
        vocab_size=shape["vocab"],
        d_model=shape["d_model"],
        n_layers=shape["n_layers"],
        n_heads=shape["n_heads"],
        max_seq_len=shape["seq_len"],
    )


def worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    """One process of a group of `world`: time `args.steps` steps after `args.warmup`, rank 0 writes the result."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if args.device == "cpu":
        torch.set_num_threads(max(args.cores // world, 1))
    import torch.distributed as dist

    from modernlm.distributed.setup import init, teardown
    from modernlm.distributed.wrap import wrap_model
    from modernlm.model import Transformer
    from modernlm.training.optim import build_optimizer
    from modernlm.training.trainer import next_token_loss

    ctx = init(args.device, 300)
    shape = SHAPES[args.shape]
    torch.manual_seed(0)
    model = Transformer(model_config(shape)).to(ctx.device)
    model = wrap_model(model, args.mode, ctx.device, args.precision, cpu_offload=False)
    optimizer = build_optimizer(model, 3e-4, 0.1)
    forward = torch.compile(model) if args.compile else model
    dtype = {"bf16": torch.bfloat16, "fp32": None}[args.precision]
    rows = shape["batch"] // world
    gen = torch.Generator().manual_seed(rank)
    times = []
    for i in range(args.warmup + args.steps):
        tokens = torch.randint(0, shape["vocab"], (rows, shape["seq_len"] + 1), generator=gen).to(ctx.device)
        dist.barrier()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None):
            logits = forward(tokens[:, :-1])  # (B / N, T, V)
        next_token_loss(logits, tokens[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    slowest = torch.tensor([statistics.median(times)], device=ctx.device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a step ends when the slowest process is done
    if ctx.is_main:
        result = dict(world=world, parallel=args.mode, tok_s=shape["batch"] * shape["seq_len"] / float(slowest))
        Path(out).write_text(json.dumps(result))
    teardown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: argparse.Namespace, world: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(worker, args=(world, free_port(), args, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def peak_flops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.device == "cuda" and args.precision == "bf16":
        name = torch.cuda.get_device_name()
        return next((peak for key, peak in GPU_PEAKS.items() if key in name), None)
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--parallel", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--shape", default=None, choices=list(SHAPES), help="default: small on CPU, gpu on CUDA")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU cores shared out among the processes")
    p.add_argument("--peak-tflops", type=float, default=None, help="the hardware's peak, for MFU")
    p.add_argument("--tiny", action="store_true", help="the tiny shape, 2 steps: check that it runs")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    if args.device == "cuda" and max(args.world_sizes) > torch.cuda.device_count():
        raise SystemExit(f"--world-sizes up to {max(args.world_sizes)}: only {torch.cuda.device_count()} GPUs here")
    args.shape = "tiny" if args.tiny else args.shape or ("gpu" if args.device == "cuda" else "small")
    args.steps, args.warmup = (2, 1) if args.tiny else (args.steps, args.warmup)
    shape, peak = SHAPES[args.shape], peak_flops(args)
    print(f"shape {args.shape} {shape}, {args.device}, {args.precision}, compile={args.compile}")
    print(f"{'parallel':<8} {'procs':>5} {'tok/s':>12} {'efficiency':>10} {'MFU':>8}")
    for mode in args.parallel:
        base = None
        for world in args.world_sizes:
            if shape["batch"] % world:
                print(f"{mode:<8} {world:>5}   batch {shape['batch']} does not split over {world}: skipped")
                continue
            args.mode = mode
            tok_s = run(args, world)["tok_s"]
            base = base or (tok_s if world == 1 else None)
            ideal = 1 if args.device == "cpu" else world
            eff = f"{tok_s / (ideal * base):.2f}" if base else "n/a"
            mfu = "n/a"
            if peak:
                from modernlm.analysis import mfu as model_flops_utilisation

                mfu = f"{model_flops_utilisation(tok_s / world, model_config(shape), peak, shape['seq_len']):.1%}"
            print(f"{mode:<8} {world:>5} {tok_s:>12,.0f} {eff:>10} {mfu:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
