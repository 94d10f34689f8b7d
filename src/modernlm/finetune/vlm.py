"""LoRA on a vision-language model's backbone, the drill card's choice (GR00T N1.5 fine-tunes its Eagle 2.5 VLM so):
adapters on the language model's q, k, v and o projections; the vision tower, the projector, the norms and the
embeddings (with a tied head) frozen. `unfreeze` trains any of those fully instead; `trainable_table` says, part by
part, what trains.
"""

from __future__ import annotations

from torch import nn

from .lora import ATTENTION_TARGETS, LoraConfig, LoraError, apply_lora

PARTS = ("vision", "projector", "norms", "embeddings")  # what `unfreeze` may name


def apply_vlm_lora(
    model: nn.Module, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, unfreeze: tuple[str, ...] = ()
) -> nn.Module:
    """LoRA adapters on model.text's attention projections, everything else frozen but the parts named in
    `unfreeze` (vision, projector, norms, embeddings). Returns the model."""
    if getattr(model, "config", None) is None or model.config.family != "vlm":
        raise LoraError("apply_vlm_lora takes a vision-language model (family 'vlm'); use apply_lora for the others")
    unknown = sorted(set(unfreeze) - set(PARTS))
    if unknown:
        raise LoraError(f"unfreeze names {unknown}; choose among {', '.join(PARTS)}")
    config = LoraConfig(r=r, alpha=alpha, dropout=dropout, targets=ATTENTION_TARGETS,
                        train_norms="norms" in unfreeze, train_embeddings="embeddings" in unfreeze)  # fmt: skip
    apply_lora(model.text, config)
    for part in ("vision", "projector"):
        for p in getattr(model, part).parameters():
            p.requires_grad_(part in unfreeze)
    model.lora_config = config
    return model


def _part(name: str) -> str:
    """The row of trainable_table a parameter belongs to."""
    if name.startswith(("vision.", "projector.")):
        return "vision tower" if name.startswith("vision.") else "projector"
    leaf = name.rsplit(".", 2)
    if name.endswith((".lora_A", ".lora_B")):
        return "LoRA adapters (q, k, v, o)"
    if len(leaf) > 1 and "norm" in leaf[-2]:
        return "norms"
    if name.startswith(("text.embed.", "text.lm_head.")):
        return "embeddings and head"
    return "language model weights"


def trainable_table(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{part: (trainable, total)} over the model's parameters, and "total" last."""
    table: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        row = table.setdefault(_part(name), [0, 0])
        row[0] += p.numel() if p.requires_grad else 0
        row[1] += p.numel()
    table["total"] = [sum(t for t, _ in table.values()), sum(n for _, n in table.values())]
    return {part: (t, n) for part, (t, n) in table.items()}


def format_table(table: dict[str, tuple[int, int]]) -> str:
    lines = [f"  {'part':<28} {'trainable':>12} {'of':>12}"]
    lines += [f"  {part:<28} {t:>12,} {n:>12,}" for part, (t, n) in table.items()]
    return "\n".join(lines)
