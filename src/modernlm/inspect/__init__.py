"""See inside a model: activations by name (`run_with_cache`, `hooks`), interventions (`ablate_heads`, `patch`), and
what one reads off them (`logit_lens`, entropies, induction scores, head ablation); `report` and `figures` make what
`modernlm inspect` writes. The attention probabilities themselves come from the members' `output_attentions=True`."""

from __future__ import annotations

from .hooks import ActivationCache, HookNameError, block_names, default_names, hooks, resolve, run_with_cache
from .interventions import ablate_heads, patch
from .measures import (
    entropy,
    head_ablation,
    head_entropies,
    induction_scores,
    logit_lens,
    next_token_loss,
    pattern_distances,
    prev_token_scores,
    repeated_tokens,
    residual_stream,
)

__all__ = [
    "ActivationCache",
    "HookNameError",
    "ablate_heads",
    "block_names",
    "default_names",
    "entropy",
    "head_ablation",
    "head_entropies",
    "hooks",
    "induction_scores",
    "logit_lens",
    "next_token_loss",
    "patch",
    "pattern_distances",
    "prev_token_scores",
    "repeated_tokens",
    "residual_stream",
    "resolve",
    "run_with_cache",
]
