"""Position-wise feed-forward networks: gated (SwiGLU, GeGLU) and plain two-layer MLPs (ReLU, GELU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GATED_FFNS, ModelConfig
from .linear import Linear

ACTIVATIONS = {
    "swiglu": F.silu,
    "geglu": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "gelu_erf": F.gelu,  # the exact GELU, x * Phi(x) (BERT, ViT)
    "geglu_erf": F.gelu,  # GeGLU with the exact GELU (ModernBERT)
    "silu": F.silu,  # a plain MLP with SiLU, x * sigmoid(x) (the lab's activation comparison)
}


class GatedFFN(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with act = SiLU (Shazeer 2020)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.act = ACTIVATIONS[cfg.ffn]
        self.gate_proj = Linear(cfg.d_model, cfg.ffn_hidden, bias=cfg.mlp_bias)
        self.up_proj = Linear(cfg.d_model, cfg.ffn_hidden, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.ffn_hidden, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class MLP(nn.Module):
    """down(act(up(x))): the 2017 block's feed-forward."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.act = ACTIVATIONS[cfg.ffn]
        self.up_proj = Linear(cfg.d_model, cfg.ffn_hidden, bias=cfg.mlp_bias)
        self.down_proj = Linear(cfg.ffn_hidden, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        return self.down_proj(self.act(self.up_proj(x)))


def make_ffn(cfg: ModelConfig) -> nn.Module:
    return GatedFFN(cfg) if cfg.ffn in GATED_FFNS else MLP(cfg)
