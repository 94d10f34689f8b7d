"""ModelConfig: every architectural choice of the decoder as a plain, serialisable field.

The names a value may take (norm kinds, FFN kinds, position kinds, RoPE scalings) are listed here once; the layers
register one class or function per name, and a test checks the two lists agree.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fields import FieldError, check_fields, check_mapping
from .text import read_strict, too_deep

NORMS = ("rmsnorm", "layernorm", "layernorm_nobias", "batchnorm")  # layernorm_nobias: a gain only (ModernBERT)
# batchnorm: statistics over every token of the batch, padding included (the lab's LayerNorm-vs-BatchNorm experiment)
# gelu / geglu: GELU's tanh approximation (GPT-2, T5 v1.1); gelu_erf / geglu_erf: the exact GELU (BERT, ViT, ModernBERT)
FFNS = ("swiglu", "geglu", "gelu", "relu", "gelu_erf", "geglu_erf", "silu")  # silu: a plain SiLU MLP (the lab)
GATED_FFNS = ("swiglu", "geglu", "geglu_erf")
POSITIONS = ("rope", "alibi", "sinusoidal", "learned", "none", "t5_relative", "learned_concat")
ABSOLUTE_POSITIONS = ("sinusoidal", "learned", "learned_concat")  # added to (or concatenated with) the token embedding
MEMBER_POSITIONS = (
    "learned",
    "t5_relative",
    "none",
    "rope",
)  # the kinds the encoder / seq2seq / vit stacks are built with
NORM_PLACEMENTS = ("pre", "post")  # pre: x + f(norm(x)) (GPT-2, Llama); post: norm(x + f(x)) (Vaswani et al. 2017)
# RoPE scalings (layers/rope_scaling.py has one function per kind): HF's rope_type names, and "ntk" (NTK-aware, the
# static base change) and "ntk_by_parts" (YaRN's frequencies without its temperature), which HF has no name for.
ROPE_SCALINGS = ("default", "linear", "ntk", "dynamic", "ntk_by_parts", "yarn", "llama3", "longrope")
# Keys of each scaling besides "rope_type": (required, optional).
_RAMP = ("beta_fast", "beta_slow", "truncate")
ROPE_SCALING_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "linear": (("factor",), ()),
    "ntk": (("factor",), ()),
    "dynamic": (("factor", "original_max_position_embeddings"), ()),
    "ntk_by_parts": (("factor", "original_max_position_embeddings"), _RAMP),
    "yarn": (("factor", "original_max_position_embeddings"), (*_RAMP, "attention_factor", "mscale", "mscale_all_dim")),
    "llama3": (("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"), ()),
    "longrope": (("short_factor", "long_factor", "original_max_position_embeddings", "factor"), ("attention_factor",)),
}
# Kinds whose original length defaults to max_seq_len when a config leaves it out (transformers' standardize rule).
_ORIGINAL_DEFAULTS = ("ntk_by_parts", "yarn", "llama3", "longrope")
LAYER_TYPES = ("full_attention", "sliding_attention")  # per-layer attention of a decoder with a sliding window


DROPOUTS = ("attn_dropout", "resid_dropout", "embed_dropout")

# The members of the family (issue 11) and the heads each may carry. "lm": next-token (decoder) or decoder-side
# (seq2seq) logits; "mlm": masked-LM logits; "none": the final hidden states; "classify": one label per sequence/image.
FAMILIES = ("decoder", "encoder", "seq2seq", "vit", "vlm")
FAMILY_HEADS = {
    "decoder": ("lm",),
    "vlm": ("lm",),  # a decoder whose image tokens are a vision tower's features (vision, pixel_shuffle)
    "encoder": ("mlm", "none", "classify"),
    "seq2seq": ("lm",),
    "vit": ("classify", "none"),
}
POOLINGS = ("cls", "mean")  # what the classify head reads: the first token's state, or the mean over real tokens
# Fields only some members implement: field -> (its default, the families that implement it). A config of any other
# member must leave the field at its default (ModelConfig._check_member_fields); checked in this order.
MEMBER_FIELDS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "type_vocab_size": (0, ("encoder",)),
    "embed_norm": (False, ("encoder",)),
    "pooler": (False, ("encoder",)),
    "output_scale": (1.0, ("seq2seq",)),
    "local_window": (0, ("encoder",)),
    "global_every": (1, ("encoder",)),
    "local_rope_theta": (None, ("encoder", "decoder")),  # decoder: the RoPE base of its sliding-window layers
    "skip_first_attn_norm": (False, ("encoder",)),
    "decoder_start_token_id": (0, ("seq2seq",)),
    "image_size": (224, ("vit",)),
    "patch_size": (16, ("vit",)),
    "n_channels": (3, ("vit",)),
    "pooling": ("cls", ("encoder",)),  # ViT classifies from its class token
    "class_token": (True, ("vit",)),
    "vision": (None, ("vlm",)),
    "image_token_id": (0, ("vlm",)),
    "pixel_shuffle": (1, ("vlm",)),
    # the members' assemblies do not scale embeddings or recompute blocks
    "scale_embeddings": (False, ("decoder",)),
    "activation_checkpointing": (False, ("decoder",)),
    "sliding_window": (0, ("decoder",)),  # encoders have local_window (both ways)
    "layer_types": (None, ("decoder",)),
    "qk_norm": (False, ("decoder",)),
    "sandwich_norm": (False, ("decoder",)),
    "parallel_block": (False, ("decoder",)),
    "attn_softcap": (None, ("decoder",)),
    "logit_softcap": (None, ("decoder",)),
}


class ConfigError(FieldError):
    """A configuration that cannot describe a working model; the message names the field and the fix."""


@dataclass
class ModelConfig:
    """The decoder's architecture. `None` fields are derived in `__post_init__`, so a saved config is fully explicit."""

    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int | None = None  # None: n_heads (MHA); 1: MQA; between: GQA
    head_dim: int | None = None  # None: d_model // n_heads
    ffn: str = "swiglu"
    ffn_hidden: int | None = None  # None: 8/3 * d_model for gated FFNs (4 * d_model otherwise), rounded up
    ffn_multiple_of: int = 256
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_placement: str = "pre"  # "post": no final norm, each sub-layer's sum is normalised
    positions: str = "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None  # HF's rope_scaling spelling; kinds in ROPE_SCALINGS
    sliding_window: int = 0  # >0: a causal layer sees only its last sliding_window keys (itself included; Mistral)
    layer_types: list[str] | None = None  # per layer: full_attention | sliding_attention; None: all sliding if windowed
    qkv_bias: bool = False  # Qwen2 has q/k/v biases
    out_bias: bool = False
    mlp_bias: bool = False
    shared_qk: bool = False  # one projection for queries and keys (Reformer's shared-QK; needs n_kv_heads == n_heads)
    qk_norm: bool = False  # a `norm` over each head's q and k (width head_dim) before RoPE (Qwen3, Gemma 3)
    sandwich_norm: bool = False  # pre-norm plus a norm on each sub-layer's output before the residual add (Gemma 2, 3)
    parallel_block: bool = False  # x + Attn(Norm(x)) + FFN(Norm(x)): both sub-layers off one norm (Falcon, GPT-J)
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap) before the mask (Gemma 2); explicit path
    logit_softcap: float | None = None  # final logits -> cap * tanh(logits / cap) (Gemma 2)
    causal: bool = True  # False: every token sees every other (an encoder's attention; a decoder trained so cheats)
    tie_embeddings: bool = False
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(d_model) (Vaswani et al. 2017, Gemma)
    max_seq_len: int = 2048  # also the size of the learned position table
    dropout: float = 0.0  # the default of the three below
    attn_dropout: float | None = None  # on the attention weights; None: dropout
    resid_dropout: float | None = None  # on each sub-layer's output before the residual add; None: dropout
    embed_dropout: float | None = None  # on the embedding (plus absolute positions); None: dropout
    activation_checkpointing: bool = False  # recompute each block in the backward pass (training mode only)
    init_std: float = 0.02
    # ---- the other members (issue 11); the defaults are the decoder's and change nothing for it ----
    family: str = "decoder"  # decoder | encoder (BERT) | seq2seq (T5) | vit
    head: str | None = None  # None: the family's first head (lm, mlm, lm, classify); see FAMILY_HEADS
    n_classes: int = 0  # classify head: the number of labels
    pooling: str = "cls"  # classify head: cls | mean
    pooler: bool = False  # BERT's pooler: dense + tanh over the [CLS] state (feeds the classify head with cls pooling)
    type_vocab_size: int = 0  # token-type (segment) embeddings added to the tokens (BERT: 2); 0: none
    embed_norm: bool = False  # a norm over the summed embeddings (BERT)
    attn_scale: float | None = None  # the score scale; None: 1/sqrt(head_dim); T5: 1.0 (folded into its init)
    output_scale: float = 1.0  # the final hidden state is multiplied by this before the LM head (T5 tied: D^-0.5)
    n_decoder_layers: int | None = None  # seq2seq: the decoder stack's depth; None: n_layers
    relative_buckets: int = 32  # t5_relative: buckets of the relative-position bias
    relative_max_distance: int = 128  # t5_relative: distances from which buckets stop growing
    decoder_start_token_id: int = 0  # seq2seq: the first decoder input (T5: the pad token)
    local_window: int = 0  # encoder: >0 makes layers local, each token seeing keys within local_window // 2 of it
    global_every: int = 1  # encoder with local_window: layer i attends globally when i % global_every == 0
    local_rope_theta: float | None = None  # encoder: the RoPE base of local layers; decoder: of sliding-window layers
    # (no rope_scaling on them: Gemma 3); None: rope_theta
    skip_first_attn_norm: bool = False  # encoder: layer 0 reads the (already normalised) embedding (ModernBERT)
    image_size: int = 224  # vit: height = width of the input image, in pixels
    patch_size: int = 16  # vit: side of a square patch; must divide image_size
    n_channels: int = 3  # vit: colour channels of the input
    class_token: bool = True  # vit: a learned class token in front of the patches (False: SigLIP, positions per patch)
    vision: dict[str, Any] | None = None  # vlm: the vision tower's config (a ModelConfig dict of family "vit")
    image_token_id: int = 0  # vlm: the token whose embeddings are replaced by image features, one per feature
    pixel_shuffle: int = 1  # vlm: s, each s x s block of patch features concatenated into one token (Idefics3)
    extra: dict[str, Any] = field(default_factory=dict)  # provenance (architecture name, source); never read by layers

    def __post_init__(self) -> None:
        _checked(check_fields, self)  # types first: the derived sizes below compute with these values
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None and self.n_heads:
            self.head_dim = self.d_model // self.n_heads
        if self.ffn_hidden is None:
            self.ffn_hidden = default_ffn_hidden(self.d_model, self.ffn, self.ffn_multiple_of)
        if self.rope_scaling is not None:
            self.rope_scaling = normalize_rope_scaling(self.rope_scaling, self.max_seq_len, self.head_dim)
        for name in DROPOUTS:
            if getattr(self, name) is None:
                setattr(self, name, self.dropout)
        if self.head is None and self.family in FAMILY_HEADS:
            self.head = FAMILY_HEADS[self.family][0]
        if self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers

    # ---- checks -------------------------------------------------------------------------------------------------
    def validate(self) -> ModelConfig:
        """Raise ConfigError naming the first impossible choice; return self so calls chain."""
        _checked(check_fields, self)
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "head_dim",
            "ffn_hidden",
            "max_seq_len",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        _check_choice("norm", self.norm, NORMS)
        _check_choice("ffn", self.ffn, FFNS)
        _check_choice("positions", self.positions, POSITIONS)
        _check_choice("norm_placement", self.norm_placement, NORM_PLACEMENTS)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}: each KV head must serve the "
                f"same number of query heads; pick n_kv_heads among the divisors of {self.n_heads}"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ConfigError(
                f"head_dim={self.head_dim} is odd, but RoPE rotates pairs of dimensions: use an even head_dim"
            )
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be > 0, got {self.rope_theta}")
        for name in ("dropout", *DROPOUTS):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        self._check_combinations()
        self._check_family()
        return self

    def _check_family(self) -> None:
        """The member and its head; fields a member does not implement must keep their defaults (never ignored)."""
        _check_choice("family", self.family, FAMILIES)
        _check_choice(f"head (family {self.family!r})", self.head, FAMILY_HEADS[self.family])
        _check_choice("pooling", self.pooling, POOLINGS)
        self._check_member_values()
        self._check_member_fields()
        self._check_member_build()
        if self.family == "vit":
            self._check_vit()
        if self.family == "vlm":
            self._check_vlm()

    def _check_vlm(self) -> None:
        """The vision tower is a bare ViT config whose patch grid the pixel shuffle divides; the image token exists."""
        if not isinstance(self.vision, dict):
            raise ConfigError("family 'vlm' needs `vision`: the vision tower's config (a dict of family 'vit')")
        vision = ModelConfig.from_dict(self.vision, "vision").validate()
        if vision.family != "vit" or vision.head != "none":
            raise ConfigError(f"vision must be a ViT with head 'none', got family {vision.family!r}, {vision.head!r}")
        side, s = vision.image_size // vision.patch_size, self.pixel_shuffle
        if not isinstance(s, int) or s < 1 or side % s:
            raise ConfigError(
                f"pixel_shuffle={s!r} must be a positive integer dividing the {side} x {side} patch grid of the vision "
                "tower (each s x s block of patches becomes one token)"
            )
        if not 0 <= self.image_token_id < self.vocab_size:
            raise ConfigError(f"image_token_id={self.image_token_id} is not a token of the {self.vocab_size} ids")

    @property
    def image_tokens(self) -> int:
        """vlm: tokens per image, (image_size / patch_size / pixel_shuffle)^2."""
        vision = self.vision or {}
        side = vision.get("image_size", 224) // vision.get("patch_size", 16) // self.pixel_shuffle
        return side * side

    def _check_member_values(self) -> None:
        """The members' own counts and scales, each in its range."""
        for name in ("type_vocab_size", "n_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("local_window", "global_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (name == "global_every"):
                raise ConfigError(f"{name} must be an integer >= {int(name == 'global_every')}, got {value!r}")
        if self.head == "classify" and self.n_classes < 1:
            raise ConfigError("head='classify' needs n_classes >= 1 (the number of labels); set n_classes")
        if self.attn_scale is not None and not self.attn_scale > 0:
            raise ConfigError(f"attn_scale must be > 0 or None (1/sqrt(head_dim)), got {self.attn_scale!r}")

    def _check_member_fields(self) -> None:
        """Fields of other members (MEMBER_FIELDS), of the classify head and of T5's positions keep their defaults."""
        family = "decoder" if self.family == "vlm" else self.family  # a VLM's language model is a decoder
        for name, (default, families) in MEMBER_FIELDS.items():
            if getattr(self, name) != default and family not in families and self.family not in families:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is implemented only for family {' / '.join(families)}, not "
                    f"{self.family!r}; leave it at {default!r}"
                )
        if self.n_classes and self.head != "classify":
            raise ConfigError(f"n_classes={self.n_classes} needs head='classify' (this config's head is {self.head!r})")
        if self.positions != "t5_relative" and (self.relative_buckets, self.relative_max_distance) != (32, 128):
            raise ConfigError("relative_buckets / relative_max_distance set, but positions is not 't5_relative'")

    def _check_member_build(self) -> None:
        """What each member's assembly is built with: norm placement, attention direction, depth, positions."""
        if self.family == "vit" and self.norm_placement != "pre":
            raise ConfigError("family 'vit' is built pre-norm with a final norm; set norm_placement='pre'")
        if self.family in ("encoder", "vit") and self.causal:
            raise ConfigError(f"family {self.family!r} attends both ways: set causal=False")
        if self.family == "seq2seq":
            if not isinstance(self.n_decoder_layers, int) or self.n_decoder_layers < 1:
                raise ConfigError(f"n_decoder_layers must be a positive integer, got {self.n_decoder_layers!r}")
            if self.norm_placement != "pre":
                raise ConfigError("family 'seq2seq' is built pre-norm (T5); set norm_placement='pre'")
        elif self.n_decoder_layers != self.n_layers:
            raise ConfigError(f"n_decoder_layers is for family 'seq2seq' only; {self.family!r} has n_layers")
        if self.family != "decoder" and self.positions not in MEMBER_POSITIONS:
            raise ConfigError(
                f"positions={self.positions!r} is not built for family {self.family!r}; use one of "
                + ", ".join(MEMBER_POSITIONS)
            )
        if self.positions == "t5_relative":
            for name in ("relative_buckets", "relative_max_distance"):
                if not isinstance(getattr(self, name), int) or getattr(self, name) < 2:
                    raise ConfigError(f"{name} must be an integer >= 2, got {getattr(self, name)!r}")

    def _check_vit(self) -> None:
        for name in ("image_size", "patch_size", "n_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"patch_size={self.patch_size} does not divide image_size={self.image_size}: the image must split "
                f"into whole patches; pick a patch_size among the divisors of {self.image_size}"
            )
        if self.positions != "learned":
            raise ConfigError(
                f"family 'vit' uses learned positions (one per patch + class token), got {self.positions!r}"
            )
        rows = self.n_patches + self.class_token
        if self.max_seq_len != rows:
            raise ConfigError(
                f"a ViT's position table has one row per patch{' plus the class token' * self.class_token}: "
                f"max_seq_len must be {rows} for image_size={self.image_size}, patch_size={self.patch_size}, "
                f"got {self.max_seq_len}"
            )

    def _check_combinations(self) -> None:
        """Choices that are valid alone but cannot work together."""
        self._check_window()
        if self.rope_scaling is not None and self.positions != "rope":
            why = {
                "alibi": "ALiBi has no rotary frequencies to rescale (it extrapolates through its linear bias)",
                "learned": "a learned table has no frequencies to rescale; it ends at max_seq_len",
                "learned_concat": "a learned table has no frequencies to rescale; it ends at max_seq_len",
                "sinusoidal": "the sinusoidal table is added to the embedding, not rotated into q and k",
                "none": "there are no positions to scale",
                "t5_relative": "T5's bucketed bias has no frequencies to rescale",
            }[self.positions]
            raise ConfigError(
                f"rope_scaling is set but positions={self.positions!r}: {why}; "
                "drop rope_scaling or use positions='rope' (RoPE scaling needs positions='rope')"
            )
        if self.shared_qk and self.n_kv_heads != self.n_heads:
            raise ConfigError(
                f"shared_qk needs as many key heads as query heads, got n_kv_heads={self.n_kv_heads} and "
                f"n_heads={self.n_heads}: keys are the queries; set n_kv_heads={self.n_heads} or shared_qk=False"
            )
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ConfigError(
                f"d_model={self.d_model} is odd, but the sinusoidal table pairs a sine and a cosine per frequency: "
                "use an even d_model"
            )
        if self.positions == "learned_concat" and self.d_model % 4:
            raise ConfigError(
                f"d_model={self.d_model} is not a multiple of 4, but positions='learned_concat' gives positions the "
                "last quarter of the embedding: use a d_model divisible by 4"
            )
        if self.positions in ("learned", "learned_concat") and self.max_seq_len > 1 << 20:
            raise ConfigError(
                f"positions={self.positions!r} with max_seq_len={self.max_seq_len} would allocate a "
                f"{self.max_seq_len} x {self.d_model} table that no training run fills; lower max_seq_len or use "
                "positions='rope' / 'alibi'"
            )
        if not isinstance(self.activation_checkpointing, bool):
            raise ConfigError(f"activation_checkpointing must be true or false, got {self.activation_checkpointing!r}")
        self._check_block_options()

    def _check_block_options(self) -> None:
        """The decoder block's options of the later models (Qwen3, Gemma 2 / 3, Falcon), each with what it needs."""
        for name in ("attn_softcap", "logit_softcap"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be > 0 or None (no capping), got {value!r}")
        if (self.sandwich_norm or self.parallel_block) and self.norm_placement != "pre":
            what = "sandwich_norm" if self.sandwich_norm else "parallel_block"
            raise ConfigError(f"{what} is a pre-norm block; set norm_placement='pre'")
        if self.sandwich_norm and self.parallel_block:
            raise ConfigError("sandwich_norm and parallel_block cannot both be set: pick one block layout")
        if self.qk_norm and self.shared_qk:
            raise ConfigError("qk_norm normalises queries and keys apart; shared_qk has no keys of their own")
        if self.family == "decoder" and self.local_rope_theta is not None:
            if self.positions != "rope" or not self.sliding_window:
                raise ConfigError(
                    "local_rope_theta is the RoPE base of a decoder's sliding-window layers: it needs positions='rope' "
                    "and sliding_window > 0"
                )
            if not self.local_rope_theta > 0:
                raise ConfigError(f"local_rope_theta must be > 0, got {self.local_rope_theta!r}")

    def _check_window(self) -> None:
        window, types = self.sliding_window, self.layer_types
        if not isinstance(window, int) or isinstance(window, bool) or window < 0:
            raise ConfigError(f"sliding_window must be an integer >= 0 (0: full attention), got {window!r}")
        if window > self.max_seq_len:
            raise ConfigError(
                f"sliding_window={window} is larger than the context max_seq_len={self.max_seq_len}: every key is "
                "inside the window, which is full attention; set sliding_window=0 or a window below max_seq_len"
            )
        if window and not self.causal:
            raise ConfigError("sliding_window is a causal window; a bidirectional stack uses local_window")
        if types is None:
            return
        if len(types) != self.n_layers or any(t not in LAYER_TYPES for t in types):
            raise ConfigError(
                f"layer_types must list one of {', '.join(LAYER_TYPES)} for each of the {self.n_layers} layers, "
                f"got {types!r}"
            )
        if "sliding_attention" in types and not window:
            raise ConfigError("layer_types has sliding_attention layers but sliding_window is 0; set the window")

    def layer_window(self, i: int) -> int:
        """The sliding window of layer i (0: full attention)."""
        if not self.sliding_window or (self.layer_types is not None and self.layer_types[i] != "sliding_attention"):
            return 0
        return self.sliding_window

    # ---- derived sizes ------------------------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def n_patches(self) -> int:  # vit: patches per image
        return (self.image_size // self.patch_size) ** 2

    # ---- JSON ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "") -> ModelConfig:
        """A config from a mapping (a JSON file's object, converted HF fields); `where` names the source in errors."""
        data = _checked(check_mapping, cls, data, where)
        try:
            return cls(**data)
        except FieldError as e:
            raise ConfigError(f"{where}: {e}" if where else str(e)) from None

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            from .files import write_text

            write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> ModelConfig:
        source = Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        if source is not None and not source.is_file():
            raise ConfigError(f"no model config file at {source}")
        text = read_strict(source) if source is not None else str(text_or_path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source or 'config text'} is not valid JSON: {e}") from e
        except RecursionError:
            raise ConfigError(too_deep(source or "the config text")) from None
        return cls.from_dict(data, str(source or ""))


def _checked(check, *args):
    """Run a fields.py check, raising its error as a ConfigError."""
    try:
        return check(*args)
    except ConfigError:
        raise
    except FieldError as e:
        raise ConfigError(str(e)) from None


def default_ffn_hidden(d_model: int, ffn: str, multiple_of: int) -> int:
    """Llama's rule: a gated FFN keeps the parameters of a 4x MLP with 8/3 of the width, rounded up to `multiple_of`."""
    hidden = int(8 * d_model / 3) if ffn in GATED_FFNS else 4 * d_model
    multiple_of = max(int(multiple_of), 1)
    return multiple_of * math.ceil(hidden / multiple_of)


def normalize_rope_scaling(
    scaling: dict[str, Any], max_seq_len: int | None = None, head_dim: int | None = None
) -> dict[str, Any]:
    """Accept HF's spellings ("type" or "rope_type"), check the kind, its keys and their values, fill what
    transformers fills (the original length of yarn / llama3 / longrope from max_seq_len, LongRoPE's factor from the
    two lengths), and return a clean dict. Unknown keys are refused: an ignored key is a silently wrong model."""
    if not isinstance(scaling, dict):
        raise ConfigError(f"rope_scaling must be a dict or None, got {type(scaling).__name__}")
    scaling = dict(scaling)
    spelled = {k: scaling.pop(k) for k in ("rope_type", "type") if k in scaling}
    if len(spelled) == 2 and spelled["rope_type"] != spelled["type"]:
        raise ConfigError(f"rope_scaling gives two kinds, {spelled}: keep one of rope_type / type")
    kind = next(iter(spelled.values()), None) or "default"
    _check_choice("rope_scaling.rope_type", kind, ROPE_SCALINGS)
    if scaling.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(
            f"rope_scaling partial_rotary_factor={scaling['partial_rotary_factor']} (RoPE on part of each head) is "
            "not implemented; only whole-head RoPE (1.0) is"
        )
    scaling.pop("partial_rotary_factor", None)
    required, optional = ROPE_SCALING_KEYS[kind]
    if kind in _ORIGINAL_DEFAULTS and max_seq_len is not None:
        scaling.setdefault("original_max_position_embeddings", max_seq_len)
    old = scaling.get("original_max_position_embeddings")
    if kind == "longrope" and scaling.get("factor") is None and max_seq_len and isinstance(old, int) and old > 0:
        scaling["factor"] = max_seq_len / old
    missing = [k for k in required if scaling.get(k) is None]
    if missing:
        raise ConfigError(
            f"rope_scaling of type {kind!r} needs the key(s) {missing}"
            + (" (the length the model was trained at; max_seq_len is the length to reach)" * (kind == "dynamic"))
        )
    unknown = sorted(set(scaling) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join([*required, *optional]) or "none besides rope_type"
        raise ConfigError(f"rope_scaling of type {kind!r} does not take {unknown}; its keys: {allowed}")
    _check_scaling_values(kind, scaling, head_dim)
    return {"rope_type": kind, **scaling}


def _check_scaling_values(kind: str, s: dict[str, Any], head_dim: int | None) -> None:
    def number(name: str) -> float:
        value = s[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"rope_scaling {name} must be a number, got {value!r}")
        return float(value)

    if "factor" in s:
        factor, least = number("factor"), 0.0 if kind == "longrope" else 1.0
        if not factor > least:
            raise ConfigError(
                f"rope_scaling {kind} factor must be > {least:g}, got {s['factor']!r}: the factor is the new context "
                "over the trained one (a factor of 1 changes nothing: drop rope_scaling)"
            )
    old = s.get("original_max_position_embeddings")
    if old is not None and (not isinstance(old, int) or isinstance(old, bool) or old < 1):
        raise ConfigError(f"rope_scaling original_max_position_embeddings must be a positive integer, got {old!r}")
    for name in ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
        if s.get(name) is not None and not number(name) > 0:
            raise ConfigError(f"rope_scaling {name} must be > 0, got {s[name]!r}")
    if not s.get("beta_fast", 32) > s.get("beta_slow", 1):
        fast, slow = s.get("beta_fast", 32), s.get("beta_slow", 1)
        raise ConfigError(f"rope_scaling beta_fast={fast} must exceed beta_slow={slow} (turns: fast > slow)")
    if "truncate" in s and not isinstance(s["truncate"], bool):
        raise ConfigError(f"rope_scaling truncate must be true or false, got {s['truncate']!r}")
    if kind == "llama3" and not number("high_freq_factor") > number("low_freq_factor") > 0:
        raise ConfigError(
            f"rope_scaling llama3 needs high_freq_factor > low_freq_factor > 0, got {s['high_freq_factor']!r} and "
            f"{s['low_freq_factor']!r}"
        )
    for name in ("short_factor", "long_factor"):
        if name in s:
            value = s[name]
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in value
            )
            if not ok or (head_dim and len(value) != head_dim // 2):
                raise ConfigError(
                    f"rope_scaling {name} must be a list of head_dim/2 = {head_dim and head_dim // 2} positive "
                    f"numbers (one per frequency), got {value!r:.80}"
                )
            s[name] = [float(x) for x in value]


def _check_choice(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid values: {', '.join(valid)}")


# Named shapes. `smollm2-135m` is the embedded model's architecture; the tiny ones are for tests and quick runs.
PRESETS: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        ffn_hidden=1536,
        rope_theta=100000.0,
        tie_embeddings=True,
        max_seq_len=8192,
    ),
    "llama-tiny": dict(
        vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_multiple_of=32, max_seq_len=256
    ),
    "llama-small": dict(  # ~5.5 M parameters: the model `modernlm train` trains by default
        vocab_size=4096,
        d_model=256,
        n_layers=6,
        n_heads=8,
        n_kv_heads=4,
        ffn_multiple_of=64,
        tie_embeddings=True,
        max_seq_len=512,
    ),
    # The 2017 block and the 2024 block at the same width, depth and heads (Vaswani et al.'s base size, decoder-only).
    "gpt-2017": dict(
        vocab_size=32000,
        d_model=512,
        n_layers=6,
        n_heads=8,
        ffn="relu",
        ffn_hidden=2048,
        norm="layernorm",
        norm_eps=1e-6,
        norm_placement="post",
        positions="sinusoidal",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        scale_embeddings=True,
        max_seq_len=512,
        dropout=0.1,
    ),
    "llama": dict(
        vocab_size=32000, d_model=512, n_layers=6, n_heads=8, n_kv_heads=4, ffn_multiple_of=64, max_seq_len=2048
    ),
    # GPT-2 small (124 M): learned positions, pre-norm LayerNorm, GELU, biases, tied head.
    "gpt2": dict(
        vocab_size=50257,
        d_model=768,
        n_layers=12,
        n_heads=12,
        ffn="gelu",
        ffn_hidden=3072,
        norm="layernorm",
        positions="learned",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        max_seq_len=1024,
    ),
    "llama-7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, ffn_hidden=11008, max_seq_len=4096),
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A named configuration, with fields overridden by keyword."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return ModelConfig.from_dict({**PRESETS[name], **overrides}, f"preset {name!r} with overrides").validate()
