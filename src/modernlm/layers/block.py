"""One pre-norm decoder block: x = x + Attn(Norm(x)); x = x + FFN(Norm(x))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .attention import Attention
from .ffn import make_ffn
from .norm import make_norm


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dropout = cfg.dropout
        self.attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.ffn = make_ffn(cfg)

    def forward(self, x, rope, mask, kv=None, input_pos=None) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        x = x + self._drop(self.attn(self.attn_norm(x), rope, mask, kv, input_pos))
        return x + self._drop(self.ffn(self.ffn_norm(x)))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x
