"""The encoder-decoder member (T5): a shared token embedding, an encoder stack of bidirectional blocks, and a decoder
stack whose blocks (`CrossBlock`) add cross-attention to the encoder's output, then the LM head.

    memory = EncNorm(Blocks(Embed(input_ids)))                       (B, S, D), computed once per input
    logits = Head(DecNorm(CrossBlocks(Embed(decoder_input_ids), memory)) * output_scale)    (B, T, V)

Each stack has its own position module from the registry (T5: a relative bias, bidirectional in the encoder, causal
in the decoder). For generation the encoder runs once, each decoder block's cross-attention keys and values are
projected from it once (`memory_kv`), and the decoder's self-attention writes a static KV cache.

Shapes: B batch, S encoder tokens, T decoder tokens, D width, V vocabulary, K kv heads, Dh head dim.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .encoder import check_token_ids, init_weights, padding_mask
from .layers.block import Block, CrossBlock
from .layers.kv_cache import KVCache
from .layers.linear import Linear, linear
from .layers.norm import make_norm
from .layers.positions import make_positions
from .model import Transformer, collected, recording_if

Memory = list[tuple[torch.Tensor, torch.Tensor]]  # per decoder block: cross-attention k, v (B, K, S, Dh)


@dataclasses.dataclass
class Seq2SeqOutput:
    """What `Seq2Seq` returns when asked for more than its logits (transformers' Seq2SeqLMOutput names): attentions
    one (B, H, queries, keys) tensor of probabilities per layer, the cross-attentions' keys the encoder's tokens;
    hidden states the embeddings and each block's output per stack (the last one after the stack's final norm)."""

    logits: torch.Tensor  # (B, T, V)
    encoder_last_hidden_state: torch.Tensor  # (B, S, D)
    encoder_attentions: tuple[torch.Tensor, ...] | None = None  # (B, H, S, S) each
    decoder_attentions: tuple[torch.Tensor, ...] | None = None  # (B, H, T, T) each
    cross_attentions: tuple[torch.Tensor, ...] | None = None  # (B, H, T, S) each
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None  # (B, S, D) each
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None  # (B, T, D) each


class Seq2Seq(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = cfg = config.validate()
        if cfg.family != "seq2seq":
            raise ValueError(f"Seq2Seq needs a config of family 'seq2seq', got {cfg.family!r}")
        norm = lambda: make_norm(cfg.norm, cfg.d_model, cfg.norm_eps)  # noqa: E731
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.enc_positions = make_positions(cfg, bidirectional=True)
        self.encoder = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.enc_norm = norm()
        self.dec_positions = make_positions(cfg, bidirectional=False)
        self.decoder = nn.ModuleList(CrossBlock(cfg) for _ in range(cfg.n_decoder_layers))
        self.dec_norm = norm()
        self.lm_head = None if cfg.tie_embeddings else Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if not self.embed.weight.is_meta:
            init_weights(self, cfg.init_std)

    from_state_dict = classmethod(Transformer.from_state_dict.__func__)

    def reset_rope(self) -> None:  # no non-persistent buffers (the loader's hook)
        pass

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, S) encoder tokens
        decoder_input_ids: torch.Tensor,  # (B, T) decoder tokens (the targets shifted right, after the start token)
        attention_mask: torch.Tensor | None = None,  # (B, S) 1 = real encoder token, 0 = padding
        *,
        output_attentions: bool = False,  # also each layer's self- and cross-attention probabilities
        output_hidden_states: bool = False,  # also both stacks' embeddings and block outputs
    ) -> torch.Tensor | Seq2SeqOutput:  # (B, T, V) float32 logits; a Seq2SeqOutput if asked for more
        enc_states, dec_states = ([], []) if output_hidden_states else (None, None)
        with recording_if(output_attentions, [block.attn for block in self.encoder]) as enc_probs:
            encoded = self.encode(input_ids, attention_mask, enc_states)  # (B, S, D)
        memory = self.memory_kv(encoded)
        with (
            recording_if(output_attentions, [block.attn for block in self.decoder]) as dec_probs,
            recording_if(output_attentions, [block.cross_attn for block in self.decoder]) as cross_probs,
        ):
            logits = self.decode(decoder_input_ids, memory, attention_mask, states=dec_states)  # (B, T, V)
        if not (output_attentions or output_hidden_states):
            return logits
        as_tuple = lambda states: None if states is None else tuple(states)  # noqa: E731
        return Seq2SeqOutput(
            logits,
            encoder_last_hidden_state=encoded,
            encoder_attentions=collected(enc_probs),
            decoder_attentions=collected(dec_probs),
            cross_attentions=collected(cross_probs),
            encoder_hidden_states=as_tuple(enc_states),
            decoder_hidden_states=as_tuple(dec_states),
        )

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, states=None) -> torch.Tensor:
        """The encoder's final hidden states (B, S, D); `states`, a list, receives the embeddings and each block's
        output (the last one after the final norm)."""
        cfg = self.config
        B, S = check_token_ids(input_ids, cfg.vocab_size, None, attention_mask)
        pos = torch.arange(S, device=input_ids.device)  # (S,)
        x = self.enc_positions.add(self.embed(input_ids), pos)  # (B, S, D)
        x = F.dropout(x, cfg.embed_dropout, self.training) if cfg.embed_dropout else x
        mask = self.enc_positions.bias_mask(pos, pos, padding_mask(attention_mask, S, x.device), x.dtype)
        keep = states.append if states is not None else lambda _: None  # (B, S, D) each, only if asked
        keep(x)
        for block in self.encoder:
            x = block(x, None, mask)
            keep(x)
        x = self.enc_norm(x)
        if states is not None:  # transformers' last hidden state is the final norm's output
            states[-1] = x
        return x

    def memory_kv(self, encoded: torch.Tensor) -> Memory:
        """Each decoder block's cross-attention keys and values of the encoder output (B, S, D), computed once."""
        return [block.cross_attn.project_memory(encoded) for block in self.decoder]

    def decode(
        self,
        decoder_input_ids: torch.Tensor,  # (B, T)
        memory: Memory,
        attention_mask: torch.Tensor | None = None,  # (B, S) the encoder's padding
        *,
        input_pos: torch.Tensor | None = None,  # (T,) positions of these decoder tokens; default 0..T-1
        cache: KVCache | None = None,  # the decoder's self-attention cache (see new_cache)
        last_only: bool = False,
        states: list[torch.Tensor] | None = None,  # receives the embeddings and each block's output, (B, T, D)
    ) -> torch.Tensor:  # (B, T, V) float32, or (B, 1, V) with last_only
        cfg = self.config
        B, T = check_token_ids(decoder_input_ids, cfg.vocab_size, None, name="decoder_input_ids")
        if input_pos is None:
            input_pos = torch.arange(T, device=decoder_input_ids.device)
        x = self.dec_positions.add(self.embed(decoder_input_ids), input_pos)  # (B, T, D)
        x = F.dropout(x, cfg.embed_dropout, self.training) if cfg.embed_dropout else x
        # Causal self-attention: with a cache, keys are the S' cache slots and slot j holds position j.
        key_pos = torch.arange(cache.max_len, device=x.device) if cache is not None else input_pos  # (S',)
        causal = (key_pos[None, :] <= input_pos[:, None])[None, None]  # (1, 1, T, S')
        mask = self.dec_positions.bias_mask(input_pos, key_pos, causal, x.dtype)
        memory_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        keep = states.append if states is not None else lambda _: None  # only if asked
        keep(x)
        for i, block in enumerate(self.decoder):
            kv = cache.layer(i) if cache is not None else None
            x = block(x, None, mask, kv, input_pos, memory=memory[i], memory_mask=memory_mask)
            keep(x)
        if states is not None:  # transformers' last hidden state is the final norm's output
            states[-1] = self.dec_norm(x)
        if last_only:
            x = x[:, -1:]  # (B, 1, D)
        x = self.dec_norm(x)
        if cfg.output_scale != 1.0:
            x = x * cfg.output_scale
        return linear(x, self.embed.weight if self.lm_head is None else self.lm_head.weight).float()  # (B, T, V)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """A static self-attention cache for the decoder stack."""
        param = self.embed.weight
        layers = dataclasses.replace(self.config, n_layers=self.config.n_decoder_layers, max_seq_len=max_len)
        return KVCache(layers, batch_size, max_len, param.dtype, param.device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int = 0) -> torch.Tensor:  # (B, T) -> (B, T)
    """Teacher forcing's decoder inputs: the start token, then the targets but the last (ignored labels -> pad)."""
    shifted = torch.full_like(labels, start_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_id)


def seq2seq_loss(model: Seq2Seq, input_ids, labels, attention_mask=None) -> torch.Tensor:
    """Teacher-forced cross-entropy: the decoder reads the targets shifted right and predicts each next one; label
    -100 (padding) is left out of the mean."""
    if labels is None:
        raise ValueError("a seq2seq example needs a target: give labels (the target token ids, padding as -100)")
    decoder_input_ids = shift_right(labels, model.config.decoder_start_token_id)
    logits = model(input_ids, decoder_input_ids, attention_mask)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
