"""Training throughput: modernlm's Transformer against transformers' LlamaForCausalLM of the same shape.

Same everything: the shape (SwiGLU hidden size from our ModelConfig), the vocabulary of 65 (characters), the random
token batches, the loss (next-token cross-entropy in float32 on the logits), AdamW with the same parameter groups,
and the precision (fp32, then bfloat16 autocast). The two models take their steps in alternation, so a busy machine
slows both alike; tokens/s comes from the median step time after warm-up steps.

    python benchmarks/train.py                 # both shapes, both precisions (~5 minutes on 2 CPU cores)
    python benchmarks/train.py --shapes small  # the quick one
    python benchmarks/train.py --shapes small --precisions fp32 --compile   # both models under torch.compile

On a GPU (`--device cuda`: bf16 autocast, fused AdamW, SDPA's flash kernel for the causal products), `--nanogpt` adds a
nanoGPT-style GPT (GPT-2's block: LayerNorm, one fused QKV projection, GELU MLP of 4x width, learned positions, tied
head; written here from the architecture) of the same width, depth, heads and sequence, and each row gets its MFU
(analysis.mfu, each model's own training FLOPs) against the GPU's bf16 peak (known GPUs, or --peak-tflops):

    python benchmarks/train.py --device cuda --shapes gpu --precisions bf16 --compile --nanogpt
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


SHAPES = {
    "small": Shape("4 x 128, T 64", 4, 128, 64, 12),
    "big": Shape("6 x 384, T 256", 6, 384, 256, 64),
    "gpu": Shape("12 x 768, T 1024", 12, 768, 1024, 16),  # GPT-2 small's body
}
GPU_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}
# (batch, warm-up steps, timed steps) of each measurement. This CPU (AVX2) has no bfloat16 matrix units: a bf16 step of
# transformers takes ~10x its fp32 one (torch's bf16 GEMM), so bf16 takes fewer steps, and a smaller batch at the big
# shape. (modernlm runs bf16 products as fp32 GEMMs on bf16 values on such CPUs: see layers/linear.py.)
PLAN = {
    ("small", "fp32"): (12, 3, 20),
    ("small", "bf16"): (12, 1, 5),
    ("big", "fp32"): (64, 1, 3),
    ("big", "bf16"): (4, 1, 3),
    ("gpu", "fp32"): (16, 3, 10),
    ("gpu", "bf16"): (16, 3, 20),
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


def gpt_config(config: ModelConfig) -> ModelConfig:
    """The GPT-2-style config of the nanoGPT model at `config`'s shape (for its FLOPs)."""
    from modernlm import preset

    shape = dict(vocab_size=config.vocab_size, d_model=config.d_model, n_layers=config.n_layers)
    return preset(
        "gpt2",
        **shape,
        n_heads=config.n_heads,
        ffn_hidden=4 * config.d_model,
        max_seq_len=config.max_seq_len,
        dropout=0.0,
    )


class NanoBlock(torch.nn.Module):
    """GPT-2's pre-norm block as nanoGPT writes it: one fused QKV linear, causal SDPA, GELU MLP (biases on)."""

    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln_1, self.ln_2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.c_attn, self.c_proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.c_fc, self.mlp_proj = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        B, T, D = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)  # (B, T, D) each
        q, k, v = (t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp_proj(torch.nn.functional.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class NanoGPT(torch.nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.wte = torch.nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = torch.nn.Embedding(config.max_seq_len, config.d_model)
        self.h = torch.nn.ModuleList(NanoBlock(config.d_model, config.n_heads) for _ in range(config.n_layers))
        self.ln_f = torch.nn.LayerNorm(config.d_model)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))  # (B, T, D)
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # tied head


def make_step(model: torch.nn.Module, logits_of, dtype: torch.dtype | None, compile: bool = False):
    """One training step of `model`: forward under autocast, float32 loss, backward, AdamW step."""
    optimizer = build_optimizer(model, lr=3e-4, weight_decay=0.1)
    forward = torch.compile(model) if compile else model
    device = next(model.parameters()).device.type

    def step(x: torch.Tensor, y: torch.Tensor) -> float:  # (B, T) each
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            logits = logits_of(forward, x)  # (B, T, V)
        next_token_loss(logits, y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    return step


def measure(
    shape: Shape,
    dtype: torch.dtype | None,
    batch: int,
    warmup: int,
    steps: int,
    compile: bool = False,
    device: str = "cpu",
    nanogpt: bool = False,
) -> dict[str, float]:
    """Tokens/s of each implementation at `shape`, from the median of `steps` timed steps."""
    torch.manual_seed(0)
    config = our_config(shape)
    ours, theirs = Transformer(config).train().to(device), hf_model(config).train().to(device)
    runners = {
        "modernlm": make_step(ours, lambda m, x: m(x), dtype, compile),
        "transformers": make_step(theirs, lambda m, x: m(input_ids=x).logits, dtype, compile),
    }
    if nanogpt:
        runners["nanogpt"] = make_step(NanoGPT(config).train().to(device), lambda m, x: m(x), dtype, compile)
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + steps):
        tokens = torch.randint(0, VOCAB, (batch, shape.seq_len + 1), generator=gen).to(device)
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
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--nanogpt", action="store_true", help="add a nanoGPT-style GPT of the same shape")
    p.add_argument("--peak-tflops", type=float, default=None, help="the hardware's peak, for MFU (known GPUs: auto)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak is None and args.device == "cuda":
        peak = next((v for k, v in GPU_PEAKS.items() if k in torch.cuda.get_device_name()), None)
    mode = "torch.compile" if args.compile else "eager"
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, vocab {VOCAB}, random tokens, {mode}", flush=True)
    names = ["modernlm", "transformers"] + (["nanogpt"] if args.nanogpt else [])
    print(f"| shape | precision | {' | '.join(f'{n} tok/s' for n in names)} | ratio |" + (" MFU |" if peak else ""))
    print("|---|---|" + "---:|" * (len(names) + 1) + ("---|" if peak else ""))
    for key in args.shapes:
        shape = SHAPES[key]
        for precision in args.precisions:
            dtype = torch.bfloat16 if precision == "bf16" else None
            batch, warmup, steps = PLAN[key, precision]
            warmup = max(warmup, 2) if args.compile else warmup
            why = f" (not {shape.batch}: transformers' bf16 is slow)"
            note = f", B {batch}" + (why if batch != shape.batch else "")
            rate = measure(shape, dtype, batch, warmup, steps, args.compile, args.device, args.nanogpt)
            ratio = rate["modernlm"] / rate["transformers"]
            rates = " | ".join(f"{rate[n]:,.0f}" for n in names)
            row = f"| {shape.name}{note}, {steps} timed steps | {precision} | {rates} | {ratio:.2f}x |"
            if peak:
                row += " " + mfu_cell(rate, our_config(shape), peak, shape.seq_len) + " |"
            print(row, flush=True)
    return 0


def mfu_cell(rate: dict[str, float], config: ModelConfig, peak: float, seq_len: int) -> str:
    """MFU of each implementation, each counted with its own architecture's training FLOPs per token."""
    from modernlm.analysis import mfu

    configs = {"modernlm": config, "transformers": config, "nanogpt": gpt_config(config)}
    return ", ".join(f"{name} {mfu(r, configs[name], peak, seq_len):.1%}" for name, r in rate.items())


if __name__ == "__main__":
    sys.exit(main())
