"""Full fine-tuning against LoRA and QLoRA on the embedded SmolLM2-135M-Instruct: trainable parameters, optimizer
state, the model's own weights and the peak memory of a real training step (AdamW; float32, or bf16 autocast as
`--precision bf16` trains), next to `modernlm.analysis.training_memory`'s prediction.

Measured with `modernlm.analysis.measure.LiveBytes`, which counts the bytes of every tensor torch's ops create and
still hold (RSS would add the allocator's caching and fragmentation): the peak over one training step (forward,
backward, AdamW step) of the second step, plus the optimizer state that the first step created, beyond the model's
weights; and what is alive after the forward and the loss (the activations, the float32 logits included).
Predicted: `training_memory`'s step_peak beyond the weights: optimizer states + the larger of (activations + the
loss's first gradients) and (all gradients); for LoRA the activations of a frozen model with adapters on the targets.
QLoRA (`finetune --quantize int8|int4`): the base quantized as `modernlm.quantize` stores it; its weights are the bytes
of the model's parameters and buffers (codes, scales, the float norms), measured, beside `quantized_weight_bytes`.

    python benchmarks/finetune_memory.py [--batch-size 4] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL = (*ATTN, "gate_proj", "up_proj", "down_proj")
CASES = {  # name: (LoRA adapters or None for full fine-tuning, QLoRA base or None, precision)
    "full": (None, None, "fp32"),
    "lora-attn-r8": (dict(r=8, targets=ATTN), None, "fp32"),
    "lora-all-r8": (dict(r=8, targets=ALL), None, "fp32"),
    "lora-all-r8-bf16": (dict(r=8, targets=ALL), None, "bf16"),
    "qlora-int8-all-r8": (dict(r=8, targets=ALL), "int8", "fp32"),
    "qlora-int4-all-r8": (dict(r=8, targets=ALL), "int4", "fp32"),
}


def worker(case: str, batch: int, seq: int) -> dict:
    import torch
    import torch.nn.functional as F

    import modernlm
    from modernlm.analysis.measure import LiveBytes, storages_of
    from modernlm.analysis.memory import training_memory
    from modernlm.analysis.params import parameter_counts
    from modernlm.finetune.lora import LoraConfig, apply_lora, trainable_parameters

    lora, quantize, precision = CASES[case]
    torch.manual_seed(0)
    model = modernlm.load_model(quantize=quantize)
    if lora is not None:
        apply_lora(model, LoraConfig(**lora))
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq + 1))

    def step(live=None) -> int | None:
        with autocast:
            logits = model(ids[:, :-1])  # (B, T, V), held through the backward as a training loop does
            loss = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        kept = live.now if live is not None else None
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return kept

    step()  # the first step creates AdamW's state; the second is the steady state, measured
    states = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.dim())
    with LiveBytes(storages_of(model)) as live:
        activations = step(live)
    peak = live.peak + states  # the state existed before the measured step, so the tracker did not see it
    trainable = trainable_parameters(model)[0]
    total = parameter_counts(model.config)["total"] + (0 if lora is None else trainable)  # a quantized base's too
    weights = sum(t.untyped_storage().nbytes() for t in {*model.parameters(), *model.buffers()})
    adapters = None if lora is None else dict.fromkeys(lora["targets"], lora["r"])
    trained = None if lora is None else trainable
    predicted = training_memory(
        model.config, batch, seq, precision, "adamw", device="cpu", trainable_parameters=trained,
        adapters=adapters, quantize=quantize,
    )  # fmt: skip
    step_predicted = predicted["step_peak"] - predicted["parameters"]  # the weights (adapters too) are not counted
    return dict(case=case, trainable=trainable, total=total, optimizer_state_bytes=states,
                weight_bytes=weights, predicted_weight_bytes=predicted["parameters"],
                predicted_optimizer_state_bytes=predicted["optimizer_states"], step_peak_bytes=peak,
                predicted_step_bytes=step_predicted, activation_bytes=activations,
                # under autocast the bf16 weight copies are made in the forward and kept for the backward
                predicted_activation_bytes=predicted["activations"] + (predicted["weight_copies"] if precision ==
                                                                        "bf16" else 0))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--worker", choices=list(CASES), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch_size, args.seq_len)))
        return
    rows = []
    for case in CASES:
        cmd = [sys.executable, __file__, "--worker", case, "--batch-size", str(args.batch_size),
               "--seq-len", str(args.seq_len)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{case} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    mb = 1e6
    print(f"SmolLM2-135M, AdamW, batch {args.batch_size} x {args.seq_len} tokens")
    print(f"{'case':18} {'trainable':>11} {'share':>6} {'opt. state MB':>14} {'(pred.)':>8} {'weights MB':>11} "
          f"{'(pred.)':>8} {'activations MB':>15} {'(pred.)':>8} {'step peak MB':>13} {'(pred.)':>8} "
          f"{'weights+peak MB':>16}")  # fmt: skip
    for r in rows:
        print(f"{r['case']:18} {r['trainable']:11,} {r['trainable'] / r['total']:6.2%} "
              f"{r['optimizer_state_bytes'] / mb:14.1f} {r['predicted_optimizer_state_bytes'] / mb:8.1f} "
              f"{r['weight_bytes'] / mb:11.0f} {r['predicted_weight_bytes'] / mb:8.0f} "
              f"{r['activation_bytes'] / mb:15.0f} {r['predicted_activation_bytes'] / mb:8.0f} "
              f"{r['step_peak_bytes'] / mb:13.0f} {r['predicted_step_bytes'] / mb:8.0f} "
              f"{(r['weight_bytes'] + r['step_peak_bytes']) / mb:16.0f}")  # fmt: skip
    full = rows[0]
    whole = full["weight_bytes"] + full["step_peak_bytes"]
    for r in rows[1:]:
        share = (r["weight_bytes"] + r["step_peak_bytes"]) / whole
        state = r["optimizer_state_bytes"] / full["optimizer_state_bytes"]
        print(f"{r['case']}: weights + step memory {share:.0%} of full fine-tuning's, optimizer state {state:.2%}")


if __name__ == "__main__":
    main()
