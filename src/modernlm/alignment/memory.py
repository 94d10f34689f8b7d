"""What PPO's four models cost in memory, per arrangement (`modernlm memory MODEL --ppo TARGETS`).

- "four full models": the actor and the critic trained in full (weights, gradients, optimizer states, activations),
  the reference and the reward model as frozen copies.
- "shared frozen bases + LoRA" (alignment/ppo.py): the policy's base once (the actor's adapters over it; the
  reference is it with the adapters off) and the reward model's once (the critic's adapters over it); gradients and
  optimizer states for the adapters and the value head only.
The actor's and the critic's activations are alive together (one backward through the summed loss). The policy and
the reward model are taken to share the architecture `cfg`. The rollout's KV cache comes before the update, so it
is reported beside the total, not added to it.
"""

from __future__ import annotations

from ..analysis import kv_cache_bytes, training_memory
from ..analysis.params import adapter_parameters, parameter_counts
from ..config import ModelConfig

PARTS = ("weights", "gradients", "optimizer_states", "activations")


def _trained(cfg, batch_size, seq_len, precision, optimizer, device, adapters=None) -> dict[str, int]:
    kw = dict(precision=precision, optimizer=optimizer, device=device, activation_checkpointing=False)
    if adapters is not None:
        kw |= dict(adapters=adapters, trainable_parameters=adapter_parameters(cfg, adapters) + cfg.d_model)
    return training_memory(cfg, batch_size, seq_len, **kw)


def ppo_memory(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    adapters: dict[str, int],
    precision: str = "fp32",
    optimizer: str = "adamw",
    device: str = "cuda",
) -> dict[str, dict[str, int]]:
    """{arrangement: {weights, gradients, optimizer_states, activations, total, rollout_kv_cache}} in bytes."""
    frozen = 4 * parameter_counts(cfg)["total"]  # a float32 copy of one model
    full = _trained(cfg, batch_size, seq_len, precision, optimizer, device)
    lora = _trained(cfg, batch_size, seq_len, precision, optimizer, device, adapters)
    trained_extra = lora["parameters"] - frozen  # the adapters and the value head, in float32
    kv = kv_cache_bytes(cfg, tokens=seq_len, batch_size=batch_size)
    arrangements = {
        "four full models": {
            "weights": 2 * full["parameters"] + 2 * frozen + 2 * full["weight_copies"],
            "gradients": 2 * full["gradients"],
            "optimizer_states": 2 * full["optimizer_states"],
            "activations": 2 * full["activations"],
        },
        "shared frozen bases + LoRA": {
            "weights": 2 * frozen + 2 * trained_extra + 2 * lora["weight_copies"],
            "gradients": 2 * lora["gradients"],
            "optimizer_states": 2 * lora["optimizer_states"],
            "activations": 2 * lora["activations"],
        },
    }
    for parts in arrangements.values():
        parts["total"] = sum(parts[p] for p in PARTS)
        parts["rollout_kv_cache"] = kv
    return arrangements
