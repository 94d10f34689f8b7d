"""Training throughput: modernlm's Transformer against transformers' LlamaForCausalLM of the same shape.

Same everything: the shape (SwiGLU hidden size from our ModelConfig), the vocabulary of 65 (characters), the random
token batches, the loss (next-token cross-entropy in float32 on the logits), AdamW with the same parameter groups,
and the precision (fp32, then bfloat16 autocast). The two models take their steps in alternation, so a busy machine
slows both alike; tokens/s comes from the median step time after warm-up steps.

    python benchmarks/train.py                 # both shapes, both precisions (~5 minutes on 2 CPU cores)
    python benchmarks/train.py --shapes small  # the quick one
    python benchmarks/train.py --shapes small --precisions fp32 --compile   # both models under torch.compile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from modernlm import ModelConfig, Transformer
from modernlm.training.optim import build_optimizer
from modernlm.training.trainer import next_token_loss

VOCAB = 65


@dataclass
class Shape:
    name: str
    n_layers: int
    d_model: int
    seq_len: int
    batch: int


SHAPES = {"small": Shape("4 x 128, T 64", 4, 128, 64, 12), "big": Shape("6 x 384, T 256", 6, 384, 256, 64)}
# (batch, warm-up steps, timed steps) of each measurement. This CPU (AVX2) has no bfloat16 matrix units: a bf16 step of
# transformers takes ~10x its fp32 one (torch's bf16 GEMM), so bf16 takes fewer steps, and a smaller batch at the big
# shape. (modernlm runs bf16 products as fp32 GEMMs on bf16 values on such CPUs: see layers/linear.py.)
PLAN = {
    ("small", "fp32"): (12, 3, 20),
    ("small", "bf16"): (12, 1, 5),
    ("big", "fp32"): (64, 1, 3),
    ("big", "bf16"): (4, 1, 3),
}


def our_config(shape: Shape) -> ModelConfig:
    return ModelConfig(
        vocab_size=VOCAB,
        d_model=shape.d_model,
        n_layers=shape.n_layers,
        n_heads=shape.d_model // 64,
        max_seq_len=shape.seq_len,
        tie_embeddings=False,
    )


def hf_model(config: ModelConfig) -> torch.nn.Module:
    """transformers' Llama with our config's shape (same SwiGLU width, heads, RoPE theta, norm eps)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.ffn_hidden,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(hf_config)


def make_step(model: torch.nn.Module, logits_of, dtype: torch.dtype | None, compile: bool = False):
    """One training step of `model`: forward under autocast, float32 loss, backward, AdamW step."""
    optimizer = build_optimizer(model, lr=3e-4, weight_decay=0.1)
    forward = torch.compile(model) if compile else model

    def step(x: torch.Tensor, y: torch.Tensor) -> float:  # (B, T) each
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = logits_of(forward, x)  # (B, T, V)
        next_token_loss(logits, y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    return step


def measure(
    shape: Shape, dtype: torch.dtype | None, batch: int, warmup: int, steps: int, compile: bool = False
) -> dict[str, float]:
    """Tokens/s of each implementation at `shape`, from the median of `steps` timed steps."""
    torch.manual_seed(0)
    config = our_config(shape)
    ours, theirs = Transformer(config).train(), hf_model(config).train()
    runners = {
        "modernlm": make_step(ours, lambda m, x: m(x), dtype, compile),
        "transformers": make_step(theirs, lambda m, x: m(input_ids=x).logits, dtype, compile),
    }
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + steps):
        tokens = torch.randint(0, VOCAB, (batch, shape.seq_len + 1), generator=gen)
        for name, step in runners.items():
            elapsed = step(tokens[:, :-1], tokens[:, 1:])
            if i >= warmup:
                times[name].append(elapsed)
    return {name: batch * shape.seq_len / statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile both models (warm-up steps compile)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "torch.compile" if args.compile else "eager"
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, vocab {VOCAB}, random tokens, {mode}", flush=True)
    print("| shape | precision | modernlm tok/s | transformers tok/s | ratio |")
    print("|---|---|---:|---:|---:|")
    for key in args.shapes:
        shape = SHAPES[key]
        for precision in args.precisions:
            dtype = torch.bfloat16 if precision == "bf16" else None
            batch, warmup, steps = PLAN[key, precision]
            warmup = max(warmup, 2) if args.compile else warmup
            why = f" (not {shape.batch}: transformers' bf16 is slow)"
            note = f", B {batch}" + (why if batch != shape.batch else "")
            rate = measure(shape, dtype, batch, warmup, steps, args.compile)
            ratio = rate["modernlm"] / rate["transformers"]
            ours, theirs = f"{rate['modernlm']:,.0f}", f"{rate['transformers']:,.0f}"
            row = f"| {shape.name}{note}, {steps} timed steps | {precision} | {ours} | {theirs} | {ratio:.2f}x |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
