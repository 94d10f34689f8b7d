"""The encoder-only member (BERT, all-MiniLM): token (+ token-type) embeddings plus positions -> N bidirectional blocks
-> a head. The blocks, norms, FFNs and positions are layers/'s; only the embedding sum and the heads live here.

Heads (`ModelConfig.head`): "mlm" -> masked-LM logits (B, T, V) (BERT's transform: dense, activation, norm, then the
tied embedding and a bias); "none" -> the final hidden states (B, T, D); "classify" -> (B, C) from the [CLS] state
(through BERT's pooler, dense + tanh, if the config has one) or the mean over real tokens.

Positions follow BERT: token t has position t whatever the padding, so padding belongs on the right; padded keys are
masked, so a real token's output never depends on padding (tests check it).

Shapes: B batch, T tokens, D width, V vocabulary, C classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers.block import Block
from .layers.ffn import ACTIVATIONS
from .layers.linear import Linear, linear
from .layers.norm import make_norm
from .layers.positions import make_positions
from .model import ModelOutput, Transformer, collected, recording_if


class MLMHead(nn.Module):
    """BERT's prediction head: norm(act(dense(x))) @ E^T + b, E the token embedding when tied."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.act = ACTIVATIONS[cfg.ffn]
        self.dense = Linear(cfg.d_model, cfg.d_model, bias=cfg.mlp_bias)
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)
        self.decoder = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, V)
        x = self.norm(self.act(self.dense(x)))
        return linear(x, embedding if self.decoder is None else self.decoder.weight) + self.bias


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = cfg = config.validate()
        if cfg.family != "encoder":
            raise ValueError(f"Encoder needs a config of family 'encoder', got {cfg.family!r}")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.type_embed = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.positions = make_positions(cfg, bidirectional=True)
        self.embed_norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.embed_norm else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        if cfg.skip_first_attn_norm:  # the embedding norm already normalises layer 0's input
            self.blocks[0].attn_norm = nn.Identity()
        self.norm = make_norm(cfg.norm, cfg.d_model, cfg.norm_eps) if cfg.norm_placement == "pre" else nn.Identity()
        self.pooler = Linear(cfg.d_model, cfg.d_model, bias=True) if cfg.pooler else None
        self.mlm = MLMHead(cfg) if cfg.head == "mlm" else None
        self.classifier = Linear(cfg.d_model, cfg.n_classes, bias=True) if cfg.head == "classify" else None
        if not self.embed.weight.is_meta:
            init_weights(self, cfg.init_std)

    from_state_dict = classmethod(Transformer.from_state_dict.__func__)

    def reset_rope(self) -> None:  # no non-persistent buffers to recompute (the loader's hook)
        pass

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 = real token, 0 = padding (on the right)
        token_type_ids: torch.Tensor | None = None,  # (B, T) segment of each token; default all 0
        *,
        output_attentions: bool = False,  # also each layer's attention probabilities (B, H, T, T)
        output_hidden_states: bool = False,  # also the embeddings and each block's output (B, T, D)
    ) -> torch.Tensor | ModelOutput:  # (B, T, V) mlm, (B, T, D) none, (B, C) classify; float32; a ModelOutput if asked
        states = [] if output_hidden_states else None
        with recording_if(output_attentions, [block.attn for block in self.blocks]) as probs:
            x = self.hidden_states(input_ids, attention_mask, token_type_ids, states)  # (B, T, D)
        logits = self._head(x, attention_mask)
        if not (output_attentions or output_hidden_states):
            return logits
        return ModelOutput(logits, attentions=collected(probs), hidden_states=None if states is None else tuple(states))

    def _head(self, x: torch.Tensor, attention_mask) -> torch.Tensor:  # (B, T, D) -> the head's output, float32
        if self.mlm is not None:
            return self.mlm(x, self.embed.weight).float()  # (B, T, V)
        if self.classifier is not None:
            return self.classifier(self.pool(x, attention_mask)).float()  # (B, C)
        return x.float()

    def hidden_states(self, input_ids, attention_mask=None, token_type_ids=None, states=None) -> torch.Tensor:
        """The final hidden states (B, T, D); `states`, a list, receives the embeddings and each block's output (the
        last one after the final norm)."""
        cfg = self.config
        B, T = check_token_ids(input_ids, cfg.vocab_size, cfg.max_seq_len, attention_mask)
        pos = torch.arange(T, device=input_ids.device)  # (T,)
        x = self.embed(input_ids)  # (B, T, D)
        if self.type_embed is not None:
            x = x + self.type_embed(check_token_types(token_type_ids, input_ids, cfg.type_vocab_size))
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given, but this model has no token-type embeddings (type_vocab_size=0)")
        x = self.positions.add(x, pos)  # (B, T, D)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = F.dropout(x, cfg.embed_dropout, self.training) if cfg.embed_dropout else x
        visible = padding_mask(attention_mask, T, x.device)  # (B or 1, 1, T, T)
        kinds = (False, True) if cfg.local_window else (False,)  # global, and local layers if any
        ropes = {local: self.positions.rope(pos, x.dtype, local) for local in kinds}  # (T, Dh) x2 or None
        masks = {local: self.positions.bias_mask(pos, pos, window(visible, pos, cfg.local_window if local else 0),
                                                 x.dtype) for local in kinds}  # fmt: skip
        keep = states.append if states is not None else lambda _: None  # (B, T, D) each, only if asked
        keep(x)
        for i, block in enumerate(self.blocks):
            local = self.is_local(i)
            x = block(x, ropes[local], masks[local])
            keep(x)
        x = self.norm(x)
        if states is not None:  # transformers' last hidden state is the final norm's output
            states[-1] = x
        return x

    def is_local(self, layer: int) -> bool:
        """Whether a layer attends within the local window (ModernBERT: all but every `global_every`-th)."""
        return bool(self.config.local_window) and layer % self.config.global_every != 0

    def pool(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:  # (B, T, D) -> (B, D)
        """The classify head's input: the [CLS] state through the pooler (if any), or the mean over real tokens."""
        if self.config.pooling == "mean":
            return mean_pool(x, attention_mask)
        x = x[:, 0]  # (B, D)
        return torch.tanh(self.pooler(x)) if self.pooler is not None else x

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def mean_pool(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:  # (B, T, D) -> (B, D)
    """The mean of the real tokens' states (sentence-transformers' mean pooling)."""
    if attention_mask is None:
        return x.mean(1)
    weights = attention_mask.to(x.dtype)[:, :, None]  # (B, T, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def window(visible: torch.Tensor, pos: torch.Tensor, size: int) -> torch.Tensor:
    """Keep only keys within size // 2 positions of each query (size 0: all of them)."""
    if not size:
        return visible
    near = (pos[None, :] - pos[:, None]).abs() <= size // 2  # (T, T)
    return visible & near  # (B or 1, 1, T, T)


def padding_mask(attention_mask: torch.Tensor | None, T: int, device) -> torch.Tensor:
    """bool (B or 1, 1, T, T): every query sees every real key (and itself, so a padding query's row is never empty)."""
    if attention_mask is None:
        return torch.ones(1, 1, T, T, dtype=torch.bool, device=device)
    is_self = torch.eye(T, dtype=torch.bool, device=device)  # (T, T)
    return attention_mask.bool()[:, None, None, :] | is_self  # (B, 1, T, T)


def check_token_ids(input_ids, vocab_size: int, max_len: int | None, attention_mask=None, name="input_ids"):
    """(B, T) of an integer tensor in range, or ValueError naming what is wrong."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        got = f"shape {tuple(input_ids.shape)}, {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) else None
        raise ValueError(f"{name} must be an integer tensor of shape (batch, time), got {got or type(input_ids)}")
    B, T = input_ids.shape
    if T == 0:
        raise ValueError(f"{name} is empty: give at least one token")
    if max_len is not None and T > max_len:
        raise ValueError(f"{name} has {T} tokens, more than the model's {max_len} positions; truncate the input")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"token id {hi if hi >= vocab_size else lo} in {name} is out of range for a vocabulary of {vocab_size}"
        )
    if attention_mask is not None and tuple(attention_mask.shape) != (B, T):
        raise ValueError(f"attention_mask must have the shape of {name} {(B, T)}, got {tuple(attention_mask.shape)}")
    return B, T


def check_token_types(token_type_ids, input_ids: torch.Tensor, type_vocab_size: int) -> torch.Tensor:
    if token_type_ids is None:
        return torch.zeros_like(input_ids)
    if tuple(token_type_ids.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(token_type_ids.shape)}"
        )
    lo, hi = int(token_type_ids.min()), int(token_type_ids.max())
    if lo < 0 or hi >= type_vocab_size:
        raise ValueError(
            f"token type id {hi if hi >= type_vocab_size else lo} is out of range: this model has {type_vocab_size} "
            f"token types, so ids must be in 0..{type_vocab_size - 1} (0 for the first segment, 1 for the second)"
        )
    return token_type_ids


def init_weights(model: nn.Module, std: float) -> None:
    """N(0, std) for matrices, embeddings and extra parameters (class token), zero biases, norms at identity (BERT)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    for p in model.parameters(recurse=False):
        nn.init.normal_(p, mean=0.0, std=std) if p.dim() > 1 else nn.init.zeros_(p)
