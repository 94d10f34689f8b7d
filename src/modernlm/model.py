"""The decoder-only transformer: embedding (+ absolute positions) -> N blocks -> final norm (pre-norm only) -> LM head
(tied to the embedding or not). Every variant of the 2017 and 2024 blocks is a `ModelConfig` value read here or in
layers/; there is no second model class."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .layers.attention import recording
from .layers.block import Block
from .layers.kv_cache import KVCache, RollingKVCache
from .layers.linear import Linear, linear
from .layers.norm import make_norm
from .layers.positions import absolute_positions, make_positions
from .layers.rope import inverse_frequencies, rope_cos_sin
from .layers.rope_scaling import is_length_dependent


@dataclasses.dataclass
class ModelOutput:
    """What a member returns when asked for more than its logits (transformers' names and layout).

    attentions: with `output_attentions=True`, one tensor of probabilities per layer, (B, H, T, S): S = T, or the
    cache's slots with a KV cache (zero where a slot is hidden: empty, or past the query); a rolling cache's windowed
    layers: its W slots, then the T new keys.
    hidden_states: with `output_hidden_states=True`, layers + 1 tensors of (B, T, D): the embeddings, then each block's
    output; the last one after the final norm (transformers' `last_hidden_state`), except ViT's (transformers' too)."""

    logits: torch.Tensor  # (B, T, V) for a decoder; what the member's forward returns otherwise
    attentions: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def collected(logs: list[list[torch.Tensor]] | None) -> tuple[torch.Tensor, ...] | None:
    """`recording`'s logs as transformers' tuple: each layer's one call's probabilities (B, H, T, S)."""
    return None if logs is None else tuple(log[-1] for log in logs)


def recording_if(asked: bool, attentions: list[nn.Module]) -> contextlib.AbstractContextManager:
    """`recording(attentions)` if the caller asked for attentions; else nothing changes (SDPA, nothing kept)."""
    return recording(attentions) if asked else contextlib.nullcontext()


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.validate()
        self.source = None  # the path load_model read it from (save_model copies its tokenizer)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        # the position kind's module (layers/positions.py's registry); RoPE is applied here, beside the KV cache
        rope = config.positions == "rope"
        self.pos_embed = None if rope else make_positions(config, bidirectional=not config.causal)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        # Post-norm blocks end in a norm already; the final norm belongs to the pre-norm stack (GPT-2's ln_f).
        pre = config.norm_placement == "pre"
        self.norm = make_norm(config.norm, config.d_model, config.norm_eps) if pre else nn.Identity()
        self.lm_head = None if config.tie_embeddings else Linear(config.d_model, config.vocab_size, bias=False)
        self.register_buffer("inv_freq", torch.empty(config.head_dim // 2), persistent=False)
        # local_rope_theta: sliding-window layers rotate with their own base and no scaling (Gemma 3)
        self.register_buffer("local_inv_freq", torch.empty(config.head_dim // 2), persistent=False)
        self.attention_factor = 1.0
        self.windows = sorted({config.layer_window(i) for i in range(config.n_layers)})  # 0: full attention
        self.reset_rope()
        if not self.embed.weight.is_meta:
            self.init_weights()

    # ---- construction -------------------------------------------------------------------------------------------
    def reset_rope(self) -> None:
        """(Re)compute the non-persistent buffers (RoPE frequencies, a position module's, e.g. ALiBi's slopes) from the
        config; call after materialising a meta-device model."""
        inv_freq, self.attention_factor = inverse_frequencies(
            self.config.head_dim, self.config.rope_theta, self.config.rope_scaling
        )
        device = None if self.inv_freq.is_meta else self.inv_freq.device
        self.inv_freq = inv_freq.to(device)
        local = self.config.local_rope_theta or self.config.rope_theta
        self.local_inv_freq = inverse_frequencies(self.config.head_dim, local, None)[0].to(device)
        if self.pos_embed is not None:
            self.pos_embed.reset(device)

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> Transformer:
        """Build on the meta device and take the tensors as they are (no copy, no random init)."""
        with torch.device("meta"):
            model = cls(config)
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        floats = {name for name, t in model.state_dict().items() if t.is_floating_point()}
        wrong = [
            f"{name} is {tuple(t.shape)}, the config needs {expected[name]}"
            for name, t in state_dict.items()
            if name in expected and tuple(t.shape) != expected[name]
        ] + [f"{name} holds {t.dtype}, not floats" for name, t in state_dict.items() if name in floats and not (
            t.is_floating_point())]  # fmt: skip
        if wrong:
            raise ValueError(
                f"checkpoint does not fit its config ({'; '.join(wrong[:4])}{'; ...' * (len(wrong) > 4)}): the weights "
                "and the config come from different models (e.g. another vocabulary size); use the config that came "
                "with the weights"
            )
        missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not fit the {config.n_layers}-layer config: "
                f"missing {missing[:8]}{'...' * (len(missing) > 8)}, "
                f"unexpected {unexpected[:8]}{'...' * (len(unexpected) > 8)}"
            )
        model.reset_rope()
        return model.eval()

    def init_weights(self) -> None:
        """N(0, init_std) for matrices, zero biases, residual-output projections scaled by 1/sqrt(2L) (GPT-2)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.o_proj, block.ffn.down_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layers))

    # ---- forward ------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) token ids
        *,
        input_pos: torch.Tensor | None = None,  # (T,) positions of these tokens (default 0..T-1), or (B, T) per row
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,  # (B, S) 1 = real token, 0 = padding; S = T or the cache length
        last_only: bool = False,  # logits for the last position only (generation)
        embeds: torch.Tensor | None = None,  # (B, T, D) in place of token_embeddings(input_ids) (a VLM's merged text)
        output_attentions: bool = False,  # also each layer's attention probabilities (the explicit softmax path)
        output_hidden_states: bool = False,  # also the embeddings and each block's output
    ) -> torch.Tensor | ModelOutput:  # (B, T, V) float32 logits, or (B, 1, V) with last_only; a ModelOutput if asked
        B, T = self._check_inputs(input_ids, input_pos, cache, attention_mask)
        if input_pos is None:
            input_pos = torch.arange(T, device=input_ids.device)
        x = self._embed(input_ids, input_pos, attention_mask, embeds)  # (B, T, D)
        states = [x] if output_hidden_states else None
        with recording_if(output_attentions, [block.attn for block in self.blocks]) as probs:
            x = self._blocks(x, input_pos, cache, attention_mask, states)  # (B, T, D)
        logits = self.unembed(x[:, -1:] if last_only else x)  # (B, T or 1, V)
        if not (output_attentions or output_hidden_states):
            return logits
        if states is not None:  # transformers' last hidden state is the final norm's output
            states[-1] = self.norm(x)
        return ModelOutput(logits, attentions=collected(probs), hidden_states=None if states is None else tuple(states))

    def _blocks(self, x, input_pos, cache, attention_mask, states=None) -> torch.Tensor:  # (B, T, D) -> (B, T, D)
        """The stack over x, writing the cache if one is given; each block's output appended to `states` if a list."""
        T = x.shape[1]
        rolling = isinstance(cache, RollingKVCache)
        if rolling:
            self._check_rolling(cache, input_pos)
        inputs = self._layer_inputs(input_pos, cache, attention_mask, x.dtype)  # window -> (rope, mask, key_pos)
        recompute = self.config.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        recompute = recompute and not self.blocks[0].attn.probs  # a recorded pass is not recomputed
        for i, block in enumerate(self.blocks):
            rope, mask, _ = inputs[self.config.layer_window(i)]
            if recompute:  # keep only each block's input; recompute its insides in the backward pass
                x = checkpoint(block, x, rope, mask, use_reentrant=False)
            else:
                kv = cache.layer(i) if cache is not None else None
                if rolling and cache.rolling[i]:  # the last min(T, W) new keys overwrite their slots
                    kv = (*kv, input_pos[-min(T, cache.window) :] % cache.window)
                x = block(x, rope, mask, kv, input_pos)
            if states is not None:
                states.append(x)
        if rolling:  # the slots now hold the newest positions (read by every layer above, so written last)
            new = input_pos[-min(T, cache.window) :]
            cache.slot_pos.index_copy_(0, new % cache.window, new)
        return x

    def unembed(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, T, V) float32
        """The final norm, then the LM head (its own matrix, the tied embedding, or a quantized embedding's head)."""
        x = self.norm(x)
        if self.lm_head is not None:
            return self._cap(self.lm_head(x).float())  # (B, T, V)
        tied = getattr(self.embed, "project", None)  # a quantized embedding is also the tied head (quant/)
        return self._cap((tied(x) if tied is not None else linear(x, self.embed.weight)).float())  # (B, T, V)

    def _cap(self, logits: torch.Tensor) -> torch.Tensor:
        """Final-logit soft-capping, cap * tanh(logits / cap) (Gemma 2), when the config asks for it."""
        cap = self.config.logit_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, D)
        """Token embeddings, scaled by sqrt(D) if the config asks."""
        x = self.embed(input_ids)  # (B, T, D)
        return x * math.sqrt(self.config.d_model) if self.config.scale_embeddings else x

    def _embed(self, input_ids, input_pos, attention_mask, embeds=None) -> torch.Tensor:
        """Token embeddings (or `embeds`), plus absolute positions, then embedding dropout."""
        cfg = self.config
        x = self.token_embeddings(input_ids) if embeds is None else embeds  # (B, T, D)
        if self.pos_embed is not None and self.pos_embed.absolute:  # a table: added or concatenated
            x = self.pos_embed.add(x, absolute_positions(input_pos, attention_mask))  # (B, T, D)
        return F.dropout(x, cfg.embed_dropout, self.training) if cfg.embed_dropout else x

    def _layer_inputs(self, input_pos, cache, attention_mask, dtype) -> dict[int, tuple]:
        """For each window size in the stack (0: full attention): the RoPE tables, the mask and the key positions.

        With a cache, queries attend over all S = cache.max_len slots; the mask hides the slots past each query's
        position (empty or stale). Shapes stay fixed from step to step, so a compiled decode step never recompiles.
        A rolling cache's windowed layers attend over their W slots and the T new keys."""
        cfg, out = self.config, {}
        rope = self._rope(input_pos) if cfg.positions == "rope" else None  # (inv_freq, factor, cos, sin)
        local = None
        if rope is not None and cfg.local_rope_theta is not None:  # windowed layers: their own base, no scaling
            local = (None, 1.0, *rope_cos_sin(input_pos, self.local_inv_freq, 1.0, torch.float32))
        for window in self.windows:
            rolling = isinstance(cache, RollingKVCache) and window > 0
            if rolling:
                key_pos = torch.cat((cache.slot_pos, input_pos))  # (W + T,)
            else:
                key_pos = torch.arange(cache.max_len, device=input_pos.device) if cache is not None else input_pos
            padding = attention_mask
            if rolling and attention_mask is not None:
                padding = attention_mask[:, key_pos.clamp(min=0)]  # (B, W + T)
            mask = self._mask(input_pos, cache is not None, padding, len(key_pos), window, key_pos)
            if self.pos_embed is not None:  # ALiBi, T5: a bias over slot distances (= token distances), padding masked
                mask = self.pos_embed.bias_mask(input_pos, key_pos, mask, dtype)  # (B or 1, H, T, S), or as it was
            tables = None
            if rope is not None:
                inv_freq, factor, cos, sin = local if window and local is not None else rope
                tables = (cos.to(dtype), sin.to(dtype))
                # keys cached unrotated (a length-dependent scaling; local layers have none: inv_freq None)
                if inv_freq is not None and cache is not None and is_length_dependent(cfg.rope_scaling):
                    key_tables = rope_cos_sin(key_pos.clamp(min=0), inv_freq, factor, dtype)  # (S, Dh) or (B, S, Dh)
                    tables = (*tables, *key_tables)
            out[window] = (tables, mask, key_pos)
        return out

    def _rope(self, input_pos: torch.Tensor):
        """(inv_freq, factor, cos, sin) for the queries at input_pos: the frequencies of the config's scaling, at the
        current length (the last position + 1, per row) if they depend on it (dynamic NTK, LongRoPE)."""
        cfg = self.config
        inv_freq, factor = self.inv_freq, self.attention_factor
        if is_length_dependent(cfg.rope_scaling):
            length = input_pos.amax(-1) + 1  # () or (B,)
            inv_freq, factor = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, length)
            inv_freq = inv_freq if length.dim() == 0 else inv_freq[:, None]  # (Dh/2,) or (B, 1, Dh/2)
        cos, sin = rope_cos_sin(input_pos, inv_freq, factor, torch.float32)  # (T, Dh) or (B, T, Dh)
        return inv_freq, factor, cos, sin

    def _check_rolling(self, cache: RollingKVCache, input_pos: torch.Tensor) -> None:
        if input_pos.dim() != 1:
            raise ValueError("a rolling KV cache takes positions shared by the rows, (T,); use KVCache for (B, T)")
        if not torch.compiler.is_compiling() and int(input_pos[0]) != cache.next_pos:
            raise ValueError(
                f"a rolling KV cache only appends: it holds positions up to {cache.next_pos - 1}, but this step starts "
                f"at {int(input_pos[0])}; continue at {cache.next_pos}, or use KVCache to rewind"
            )

    def _mask(self, input_pos, cached: bool, attention_mask, S: int, window: int = 0, key_pos=None):
        """bool (B or 1, 1, T, S): key j (at key_pos[j]; -1: an empty slot) is visible to query t if it is a real
        token written so far and, in a causal model, pos(j) <= pos(t) (and pos(j) > pos(t) - window with a sliding
        window); None: plain causal attention over T (SDPA's is_causal). Positions (T,) are shared by the rows; (B, T)
        gives each row its own (a serving batch of sequences at different lengths).

        A query always sees itself, so a padding query never has an empty row (its output is never read)."""
        if self.config.causal and not cached and attention_mask is None and input_pos.dim() == 1 and not window:
            return None
        query_pos = input_pos if input_pos.dim() == 2 else input_pos[None]  # (B or 1, T)
        if key_pos is None:  # slot j holds position j
            key_pos = torch.arange(S, device=input_pos.device) if cached else query_pos
        key_pos = key_pos if key_pos.dim() == 2 else key_pos[None]  # (B or 1, S)
        if self.config.causal:
            visible = (key_pos[:, None, :] <= query_pos[:, :, None]) & (key_pos[:, None, :] >= 0)  # (B or 1, T, S)
            if window:
                visible = visible & (key_pos[:, None, :] > query_pos[:, :, None] - window)
        else:  # every slot written so far (all of them without a cache)
            last = query_pos.amax(-1)[:, None, None]  # (B or 1, 1, 1)
            visible = (key_pos[:, None, :] <= last).expand(-1, query_pos.shape[1], -1)  # (B or 1, T, S)
        if attention_mask is not None:
            is_self = key_pos[:, None, :] == query_pos[:, :, None]  # (B or 1, T, S)
            visible = visible & (attention_mask.bool()[:, None, :] | is_self)  # (B, T, S)
        return visible[:, None]  # (B or 1, 1, T, S)

    def _check_inputs(self, input_ids, input_pos, cache, attention_mask) -> tuple[int, int]:
        if (
            not isinstance(input_ids, torch.Tensor)
            or input_ids.dim() != 2
            or input_ids.dtype not in (torch.long, torch.int)
        ):
            got = (
                f"{input_ids.dtype} tensor of shape {tuple(input_ids.shape)}"
                if isinstance(input_ids, torch.Tensor)
                else type(input_ids).__name__
            )
            raise ValueError(f"input_ids must be an integer tensor of shape (batch, time), got {got}")
        B, T = input_ids.shape
        if T == 0:
            raise ValueError("input_ids is empty: give at least one token")
        if not torch.compiler.is_compiling():  # value checks read tensors; the compiled decode step skips them
            limit = cache.max_len if cache is not None else self.config.max_seq_len
            last = int(input_pos.max()) + 1 if input_pos is not None else T
            if last > limit:
                what = f"the KV cache length {limit}" if cache is not None else f"the model's max_seq_len {limit}"
                raise ValueError(f"sequence of {last} positions exceeds {what}; shorten the input or raise the limit")
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= self.config.vocab_size:
                bad = hi if hi >= self.config.vocab_size else lo
                raise ValueError(f"token id {bad} is out of range for a vocabulary of {self.config.vocab_size}")
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"batch of {B} does not match the KV cache's batch size {cache.batch_size}")
        if attention_mask is not None:
            S = cache.max_len if cache is not None else T
            if tuple(attention_mask.shape) != (B, S):
                raise ValueError(f"attention_mask must have shape (batch, {S}), got {tuple(attention_mask.shape)}")
        return B, T

    # ---- helpers ------------------------------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
