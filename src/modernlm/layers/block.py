"""One block, with the norm before each sub-layer (pre) or after its residual sum (post):

pre  (GPT-2, Llama, ViT, T5): x = x + Drop(Attn(Norm(x)));   x = x + Drop(FFN(Norm(x)))
post (Vaswani et al. 2017, BERT): x = Norm(x + Drop(Attn(x)));   x = Norm(x + Drop(FFN(x)))
sandwich (pre, and a norm on each output; Gemma 2, 3): x = x + Drop(Norm'(Attn(Norm(x))));   the same for the FFN
parallel (Falcon, GPT-J): x = x + Drop(Attn(Norm(x))) + Drop(FFN(Norm(x))), one norm read by both

Attention is bidirectional or causal by the mask it is given, so the same block serves encoders and decoders.
`CrossBlock`, the decoder block of an encoder-decoder, adds cross-attention between the two (pre-norm, T5):
x = x + Drop(SelfAttn(Norm(x)));   x = x + Drop(CrossAttn(Norm(x), memory));   x = x + Drop(FFN(Norm(x)))
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
        self.parallel = cfg.parallel_block
        self.ffn_norm = None if self.parallel else make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.ffn = make_ffn(cfg)
        if cfg.sandwich_norm:  # a norm on each sub-layer's output (Gemma's post_attention / post_feedforward norms)
            self.attn_post_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
            self.ffn_post_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.sandwich = cfg.sandwich_norm

    def forward(self, x, rope, mask, kv=None, input_pos=None) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        if self.parallel:
            h = self.attn_norm(x)
            return x + self._drop(self.attn(h, rope, mask, kv, input_pos)) + self._drop(self.ffn(h))
        if self.sandwich:
            x = x + self._drop(self.attn_post_norm(self.attn(self.attn_norm(x), rope, mask, kv, input_pos)))
            return x + self._drop(self.ffn_post_norm(self.ffn(self.ffn_norm(x))))
        if self.post_norm:
            x = self.attn_norm(x + self._drop(self.attn(x, rope, mask, kv, input_pos)))
            return self.ffn_norm(x + self._drop(self.ffn(x)))
        x = x + self._drop(self.attn(self.attn_norm(x), rope, mask, kv, input_pos))
        return x + self._drop(self.ffn(self.ffn_norm(x)))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x


class CrossBlock(Block):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.cross_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.cross_attn = Attention(cfg)

    def forward(self, x, rope, mask, kv=None, input_pos=None, memory=None, memory_mask=None) -> torch.Tensor:
        """memory: the encoder's keys and values for this block, (B, K, S, Dh) x2; memory_mask: bool (B, 1, 1, S)."""
        x = x + self._drop(self.attn(self.attn_norm(x), rope, mask, kv, input_pos))
        x = x + self._drop(self.cross_attn(self.cross_norm(x), None, memory_mask, memory=memory))
        return x + self._drop(self.ffn(self.ffn_norm(x)))
