"""Full fine-tuning against LoRA on the embedded SmolLM2-135M-Instruct: trainable parameters, optimizer state and the
peak memory of a real training step (float32, AdamW), next to `modernlm.analysis.training_memory`'s prediction.

Measured with `modernlm.analysis.measure.LiveBytes`, which counts the bytes of every tensor torch's ops create and
still hold (RSS would add the allocator's caching and fragmentation): the peak over one training step (forward,
backward, AdamW step) of the second step, plus the optimizer state that the first step created, beyond the model's
weights; and what is alive after the forward and the loss (the activations, the float32 logits included).
Predicted: `training_memory`'s step_peak beyond the weights: optimizer states + the larger of (activations + the
loss's first gradients) and (all gradients); for LoRA the activations of a frozen model with adapters on the targets.

    python benchmarks/finetune_memory.py [--batch-size 4] [--seq-len 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASES = {
    "full": None,
    "lora-attn-r8": dict(r=8, targets=("q_proj", "k_proj", "v_proj", "o_proj")),
    "lora-all-r8": dict(r=8, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
}


def worker(case: str, batch: int, seq: int) -> dict:
    import torch
    import torch.nn.functional as F

    import modernlm
    from modernlm.analysis.measure import LiveBytes, storages_of
    from modernlm.analysis.memory import training_memory
    from modernlm.finetune.lora import LoraConfig, apply_lora, trainable_parameters

    torch.manual_seed(0)
    model = modernlm.load_model()
    if CASES[case] is not None:
        apply_lora(model, LoraConfig(**CASES[case]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq + 1))

    def step(live=None) -> int | None:
        logits = model(ids[:, :-1])  # (B, T, V), held through the backward as a training loop does
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
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
    trainable, total = trainable_parameters(model)
    lora = CASES[case]
    adapters = None if lora is None else dict.fromkeys(lora["targets"], lora["r"])
    trained = None if lora is None else trainable
    predicted = training_memory(
        model.config, batch, seq, "fp32", "adamw", device="cpu", trainable_parameters=trained, adapters=adapters
    )
    step_predicted = predicted["step_peak"] - predicted["parameters"]  # the weights (adapters too) are not counted
    return dict(case=case, trainable=trainable, total=total, optimizer_state_bytes=states,
                predicted_optimizer_state_bytes=predicted["optimizer_states"], step_peak_bytes=peak,
                predicted_step_bytes=step_predicted, activation_bytes=activations,
                predicted_activation_bytes=predicted["activations"])  # fmt: skip


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
    print(f"SmolLM2-135M, float32, AdamW, batch {args.batch_size} x {args.seq_len} tokens")
    print(f"{'case':14} {'trainable':>12} {'share':>7} {'opt. state MB':>14} {'(predicted)':>12} "
          f"{'activations MB':>15} {'(predicted)':>12} {'step peak MB':>13} {'(predicted)':>12}")  # fmt: skip
    for r in rows:
        print(f"{r['case']:14} {r['trainable']:12,} {r['trainable'] / r['total']:7.2%} "
              f"{r['optimizer_state_bytes'] / mb:14.1f} {r['predicted_optimizer_state_bytes'] / mb:12.1f} "
              f"{r['activation_bytes'] / mb:15.0f} {r['predicted_activation_bytes'] / mb:12.0f} "
              f"{r['step_peak_bytes'] / mb:13.0f} {r['predicted_step_bytes'] / mb:12.0f}")  # fmt: skip
    full = rows[0]
    for r in rows[1:]:
        print(f"{r['case']}: step memory {r['step_peak_bytes'] / full['step_peak_bytes']:.0%} of full fine-tuning, "
              f"optimizer state {r['optimizer_state_bytes'] / full['optimizer_state_bytes']:.2%}")  # fmt: skip


if __name__ == "__main__":
    main()
