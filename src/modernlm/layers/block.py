"""One decoder block, with the norm before each sub-layer (pre) or after its residual sum (post):

pre  (GPT-2, Llama):          x = x + Drop(Attn(Norm(x)));   x = x + Drop(FFN(Norm(x)))
post (Vaswani et al. 2017):   x = Norm(x + Drop(Attn(x)));   x = Norm(x + Drop(FFN(x)))
"""

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
        self.dropout = cfg.resid_dropout
        self.post_norm = cfg.norm_placement == "post"
        self.attn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.ffn = make_ffn(cfg)

    def forward(self, x, rope, mask, kv=None, input_pos=None) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if self.post_norm:
            x = self.attn_norm(x + self._drop(self.attn(x, rope, mask, kv, input_pos)))
            return self.ffn_norm(x + self._drop(self.ffn(x)))
        x = x + self._drop(self.attn(self.attn_norm(x), rope, mask, kv, input_pos))
        return x + self._drop(self.ffn(self.ffn_norm(x)))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x
