"""Training memory: parameters + gradients + optimizer states + activations, in bytes.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models", section 4),
whose GPT block at 16 bits saves 34·B·S·H + 5·B·N·S² bytes per layer (H width, N heads, S sequence). We count the
same thing, the tensors autograd keeps for the backward pass, element by element for *our* block, which changes:
- norms: LayerNorm keeps its input, our RMSNorm (a custom autograd function) the normalised x before the gain; the
  linear after either keeps its output: 2·D; plus a float32 statistic or two per token (1/rms; mean and 1/std);
- FFN width: F instead of 4·D, and per kind: ReLU keeps F (its output is the down projection's input), GELU 2·F,
  SwiGLU/GeGLU 4·F (the gate's input, both factors of the product, the product);
- attention: with GQA/MQA the keys and values are K·Dh wide; shared Q/K keeps one tensor; RoPE keeps the rotated q, k;
  a fused ("flash", memory-efficient) kernel keeps q, k, v, its output and a float32 log-sum-exp per head, and no S²
  term at all; the materialising ("math") kernel keeps the scaled q and k and v at full H·Dh width (keys and values are
  expanded for GQA), the softmax output (N·S per token), with attention dropout also its mask and output;
- dropout masks: 1 byte per element on CUDA (as in the paper); torch's CPU dropout keeps a float mask instead;
- outside the blocks: the final norm, the float32 logits and the log-softmax the loss keeps (B·S·V each; the paper
  leaves these out), RoPE's cos/sin tables and the ALiBi bias (once, shared by the layers).
With activation checkpointing only each block's input (B·S·D) is kept; during the backward one block at a time is
recomputed, which adds one layer's activations on top (`recompute_peak`).

Precision: "fp32" keeps everything in float32; "bf16"/"fp16" mean autocast (the trainer's meaning): float32
parameters, gradients and optimizer states, 16-bit copies of the weights, activations counted at 2 bytes (an estimate:
under autocast the residual stream and norms stay float32; on a CPU without bf16 units attention runs its float32
kernel and keeps float32 q, k, v and output, see layers/linear.py). Only fp32 is checked against measurement (on CPU).
"""

from __future__ import annotations

import functools

from ..config import GATED_FFNS, ModelConfig

PRECISIONS = {"fp32": 4, "bf16": 2, "fp16": 2}  # bytes of an activation element
OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd-momentum": 1, "sgd": 0}  # float32 tensors kept per parameter
ATTENTION_KERNELS = ("auto", "flash", "math")
FFN_SAVED = {"relu": 1, "gelu": 2, "gelu_erf": 2, "swiglu": 4, "geglu": 4, "geglu_erf": 4}  # multiples of F per token


def _check(name: str, value: str, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid values: {', '.join(valid)}")


def layer_activation_bytes(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    precision: str = "fp32",
    *,
    attention_kernel: str = "auto",
    device: str = "cuda",
    adapters: dict[str, int] | None = None,
    input_grad: bool = True,
) -> dict[str, int]:
    """Bytes one block keeps for the backward pass, by part (no checkpointing). `adapters`: see `activation_bytes`;
    `input_grad`: whether the block's input needs a gradient (with frozen weights, not before the first adapter)."""
    e, tokens, D, F = PRECISIONS[precision], batch_size * seq_len, cfg.d_model, cfg.ffn_hidden
    kernel = resolve_kernel(cfg, attention_kernel, device)
    mask_bytes = 1 if device.startswith("cuda") else e
    keeps, g = functools.partial(_keeps_input, adapters), _grad_flow(adapters, input_grad)
    # each norm keeps its own tensor and statistics if its input needs a gradient; its output is kept by the
    # projections it feeds
    norms = (g["block_in"] + g["attn_out"]) * _norm_own(cfg, e) + (g["attn_in"] + g["ffn_in"]) * D * e
    if kernel == "flash":  # q, k, v and the log-sum-exp if q/k/v need gradients; the output (o_proj's input)
        keys = 0 if cfg.shared_qk else cfg.kv_dim
        attention = g["qkv"] * ((cfg.q_dim + keys + cfg.kv_dim) * e + cfg.n_heads * 4)
        attention += (g["qkv"] or keeps("o_proj")) * cfg.q_dim * e
    else:  # math: scaled q, scaled k and v (expanded to H heads), softmax output; the output's reshaped copy
        n_score_tensors = 1 + (2 if cfg.attn_dropout else 0)
        scores = cfg.n_heads * seq_len * (n_score_tensors * e - (e - mask_bytes if cfg.attn_dropout else 0))
        attention = g["qkv"] * (3 * cfg.q_dim * e + scores) + keeps("o_proj") * cfg.q_dim * e
    if cfg.ffn in GATED_FFNS:  # act(gate) * up keeps the gate's input and each factor for the other's grad
        ffn = 2 * g["gate"] + g["up"] + keeps("down_proj")
    elif cfg.ffn in ("gelu", "gelu_erf", "silu"):  # its input, and its output (the down projection's input)
        ffn = g["up"] + keeps("down_proj")
    else:  # relu: its output, for its own backward and the down projection's
        ffn = int(g["up"] or keeps("down_proj"))
    parts = {
        "norms": norms * tokens,
        "attention": attention * tokens,
        "ffn": ffn * F * e * tokens,
        "dropout_masks": (2 * D * mask_bytes * tokens) if cfg.resid_dropout else 0,
        "adapters": sum((adapters or {}).values()) * e * tokens,  # each adapter's (r,) product A x, kept for B
    }
    parts["total"] = sum(parts.values())
    return parts


def _keeps_input(adapters: dict[str, int] | None, name: str) -> bool:
    """A projection keeps its input for the backward pass if its weight trains (no adapters: full training) or an
    adapter on it does (LoRA's A needs it)."""
    return adapters is None or name in adapters


def _norm_own(cfg: ModelConfig, e: int) -> int:
    """Bytes per token a norm keeps of its own: x̂ (RMSNorm) or its input (LayerNorm, BatchNorm), and float32
    statistics per token (BatchNorm's are per feature, not per token)."""
    return cfg.d_model * e + {"rmsnorm": 1, "batchnorm": 0}.get(cfg.norm, 2) * 4


def _grad_flow(adapters: dict[str, int] | None, input_grad: bool) -> dict[str, bool]:
    """Whether the attention's and the FFN's input projections keep their (shared) input (`attn_in`, `ffn_in`), and
    which tensors of a block need a gradient, in order: its input, q/k/v, the attention sub-layer's output (and so
    the residual stream after it), the gate and up outputs, the block's output."""
    keeps = functools.partial(_keeps_input, adapters)
    attn_in = any(keeps(n) for n in ("q_proj", "k_proj", "v_proj"))
    ffn_in = any(keeps(n) for n in ("gate_proj", "up_proj"))
    qkv = input_grad or attn_in
    attn_out = qkv or keeps("o_proj")
    gate, up = attn_out or keeps("gate_proj"), attn_out or keeps("up_proj")
    out = gate or up or keeps("down_proj")
    return dict(
        attn_in=attn_in, ffn_in=ffn_in, block_in=input_grad, qkv=qkv, attn_out=attn_out, gate=gate, up=up, out=out
    )


def resolve_kernel(cfg: ModelConfig, attention_kernel: str, device: str) -> str:
    """The kernel torch's SDPA picks: fused ("flash") unless attention dropout on CPU forces the math path."""
    _check("attention_kernel", attention_kernel, ATTENTION_KERNELS)
    if attention_kernel != "auto":
        return attention_kernel
    return "math" if cfg.attn_dropout and not device.startswith("cuda") else "flash"


def activation_bytes(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    precision: str = "fp32",
    *,
    activation_checkpointing: bool | None = None,
    attention_kernel: str = "auto",
    device: str = "cuda",
    adapters: dict[str, int] | None = None,
) -> dict[str, int]:
    """Bytes kept between the forward and the backward pass of one step (when activation memory peaks), by part.

    `adapters` (LoRA): {leaf module name: rank} of the adapted projections of a model whose own weights are frozen
    (e.g. {"q_proj": 8, "v_proj": 8}); a frozen projection without one keeps no input. None: every weight trains."""
    _check("precision", precision, PRECISIONS)
    recompute = cfg.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    e, tokens, D = PRECISIONS[precision], batch_size * seq_len, cfg.d_model
    kw = dict(attention_kernel=attention_kernel, device=device, adapters=adapters)
    # with frozen weights (adapters) nothing upstream of the first adapter needs a gradient: the embedding output
    # does not, and the first block keeps only what follows its first adapter
    first_in = adapters is None
    first = layer_activation_bytes(cfg, batch_size, seq_len, precision, input_grad=first_in, **kw)
    later_in = _grad_flow(adapters, first_in)["out"]
    layer = layer_activation_bytes(cfg, batch_size, seq_len, precision, input_grad=later_in, **kw)
    mask_bytes = 1 if device.startswith("cuda") else e
    head_trains = _keeps_input(adapters, "lm_head")  # its input is the final norm's output
    later = _grad_flow(adapters, later_in)
    final_norm = (later["out"] * _norm_own(cfg, e) + head_trains * D * e) * tokens
    kernel = resolve_kernel(cfg, attention_kernel, device)
    shared = 0  # tensors built once per forward and kept by every layer
    if cfg.positions == "rope":
        shared += 2 * seq_len * cfg.head_dim * e
    if cfg.positions == "alibi" and (kernel == "flash" or recompute):
        shared += cfg.n_heads * seq_len * seq_len * e
    parts = {
        "blocks": cfg.n_layers * tokens * D * e if recompute else first["total"] + (cfg.n_layers - 1) * layer["total"],
        # ids (int64) for the embedding's weight gradient, the dropout mask
        "embedding": tokens * 8 * first_in + (tokens * D * mask_bytes if cfg.embed_dropout else 0),
        # pre-norm: the final norm; post-norm: the embedding output, which the first block's projections keep
        "final_norm": final_norm if cfg.norm_placement == "pre" else later["attn_in"] * tokens * D * e,
        "logits_and_loss": 2 * tokens * cfg.vocab_size * 4,  # float32 logits, the log-softmax the loss keeps
        "shared": shared,
    }
    parts["total"] = sum(parts.values())
    parts["recompute_peak"] = parts["total"] + (layer["total"] if recompute else 0)
    return parts


def training_memory(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    precision: str = "fp32",
    optimizer: str = "adamw",
    *,
    activation_checkpointing: bool | None = None,
    attention_kernel: str = "auto",
    device: str = "cuda",
    trainable_parameters: int | None = None,
    adapters: dict[str, int] | None = None,
    quantize: str | None = None,
) -> dict[str, int]:
    """Bytes of one training step: parameters, gradients, optimizer states, (autocast weight copies,) activations.

    `trainable_parameters` (default: all) is how many get gradients and optimizer states, e.g. LoRA's adapters;
    they are counted on top of the model's own parameters. `adapters` ({module name: rank}, see `activation_bytes`)
    counts LoRA's activations instead of full training's.

    `total` is the sum of the parts; `step_peak` the high-water mark of one step (see below), which measurement
    matches on SmolLM2 for full and LoRA fine-tuning (benchmarks/finetune_memory.py).

    `quantize` ("int8", "int4", "int4-g64"...: QLoRA) counts the frozen base as `modernlm.quantize` stores it
    (`quantized_weight_bytes`), the kernels' packed copies built by the batch-1 answers before training, and the one
    float32 matrix a quantized product dequantizes at a time (the largest: the head, in the loss's forward and
    backward) instead of the float parameters and autocast's copies."""
    from .params import parameter_counts

    _check("precision", precision, PRECISIONS)
    _check("optimizer", optimizer, OPTIMIZER_STATES)
    n = parameter_counts(cfg)["total"]
    acts = activation_bytes(
        cfg,
        batch_size,
        seq_len,
        precision,
        activation_checkpointing=activation_checkpointing,
        attention_kernel=attention_kernel,
        device=device,
        adapters=adapters,
    )
    stored = None if quantize is None else quantized_weight_bytes(cfg, quantize)
    logits = batch_size * seq_len * cfg.vocab_size
    parts = _training_parts(n, trainable_parameters, precision, optimizer, acts, stored, logits)
    return _add_step_totals(parts, acts)


def _training_parts(
    n: int,
    trainable_parameters: int | None,
    precision: str,
    optimizer: str,
    acts: dict[str, int],
    stored: dict[str, int] | None,
    logits: int,
) -> dict[str, int]:
    """training_memory's parts before their sums: `n` the model's parameters, `acts` from `activation_bytes`,
    `stored` from `quantized_weight_bytes` (None: a float base), `logits` the elements of one step's logits."""
    trained = n if trainable_parameters is None else trainable_parameters
    extra = 0 if trainable_parameters is None else trainable_parameters  # adapters live beside the frozen model
    return {
        "parameters": 4 * (n + extra) if stored is None else stored["stored"] + 4 * extra,
        "gradients": 4 * trained,
        "optimizer_states": 4 * trained * OPTIMIZER_STATES[optimizer],
        # autocast's 16-bit casts of the weights; a quantized base: its kernels' copies and one dequantized matrix
        "weight_copies": (0 if precision == "fp32" else 2 * n) if stored is None else stored["transient"],
        "activations": acts["total"],
        "activations_recompute_peak": acts["recompute_peak"],
        # the first gradients of the backward pass: of the log-softmax and of the float32 logits (and, under
        # autocast, of the 16-bit logits they were cast from), alive together while the activations still are
        "loss_backward": logits * (8 + (0 if precision == "fp32" else PRECISIONS[precision])),
    }


def _add_step_totals(parts: dict[str, int], acts: dict[str, int]) -> dict[str, int]:
    """`parts` with `total` (the sum of the parts, activations at their recompute peak) and `step_peak` added."""
    parts["total"] = sum(v for k, v in parts.items() if k not in ("activations_recompute_peak", "loss_backward"))
    parts["total"] += acts["recompute_peak"] - acts["total"]
    # The high-water mark of a step whose gradients start at None (zero_grad(set_to_none=True)): at the start of the
    # backward pass (activations + loss_backward), or at its end (all gradients, with one block recomputed on top
    # under checkpointing), whichever is larger; parameters, weight copies and optimizer states are there throughout.
    backward_end = parts["gradients"] + acts["recompute_peak"] - acts["total"]
    parts["step_peak"] = (
        parts["parameters"]
        + parts["weight_copies"]
        + parts["optimizer_states"]
        + max(acts["total"] + parts["loss_backward"], backward_end)
    )
    return parts


def korthikanti_layer_bytes(cfg: ModelConfig, batch_size: int, seq_len: int) -> int:
    """The paper's formula as printed, per layer at 16 bits: 34·B·S·H + 5·B·N·S² (for comparison in reports)."""
    return 34 * batch_size * seq_len * cfg.d_model + 5 * batch_size * cfg.n_heads * seq_len**2


def quantized_weight_bytes(cfg: ModelConfig, quantize: str, kernels: str | None = None) -> dict[str, int]:
    """Bytes of a model after `modernlm.quantize(model, kind, group)` (quantize: "int8", "int4", "int4-g64"...):
    `stored` (codes, scales, zeros, the int8 head/tied embedding, float norms and biases, a float untied embedding),
    `kernels` (the layouts the decode kernels build at first use: modernlm's own, `kernels="native"`, the default
    where they are built, or torch's, `"torch"`), `transient` (kernels + the largest matrix dequantized to float32,
    one at a time)."""
    from ..quant import native
    from ..quant.load import parse
    from ..quant.weights import DEFAULT_GROUP
    from .params import parameter_counts, projection_shapes

    kind, group = parse(quantize)
    group = DEFAULT_GROUP.get(kind) if group == "default" else group
    if kind not in ("int8", "int4"):
        raise ValueError(f"quantize must be int8 or int4 (with -gN), got {quantize!r}")
    if kernels is None:
        kernels = "native" if native.load() is not None else "torch"
    _check("kernels", kernels, ("native", "torch"))

    def matrix(n_in: int, n_out: int, kind: str, group: int | None) -> tuple[int, int]:
        """(stored, kernel layout) bytes of one quantized matrix."""
        groups = 1 if group is None else n_in // group
        if kind == "int8":  # stored: codes, float32 scales
            stored = n_in * n_out + 4 * n_out * groups
            if kernels == "native":  # the codes as they are, a float32 scale per block of 32 inputs
                return stored, 4 * n_out * n_in // 32
            codes_copy = 0 if group is None else n_in * n_out  # the grouped path's (G, N, gs) codes
            return stored, codes_copy + 2 * n_out * groups  # and bf16 scales
        stored = n_in * n_out // 2 + 8 * n_out * groups  # nibbles, float32 scales and zeros
        if kernels == "native":  # nibbles in blocks, a float32 scale and minimum per block of 32 inputs
            return stored, n_in * n_out // 2 + 8 * n_out * n_in // 32
        return stored, n_in * n_out // 2 + 4 * n_out * groups  # torch's packing, bf16 scales and zeros

    counts = parameter_counts(cfg)
    shapes = projection_shapes(cfg)
    stored = layouts = 0
    for n_in, n_out in shapes.values():
        s, k = matrix(n_in, n_out, kind, group)
        stored, layouts = stored + cfg.n_layers * s, layouts + cfg.n_layers * k
    head, head_layout = matrix(cfg.d_model, cfg.vocab_size, "int8", None)  # int8 per channel (quant/modules.py)
    layouts += head_layout
    float_params = counts["total"] - cfg.n_layers * sum(i * o for i, o in shapes.values()) - counts["lm_head"]
    float_params -= counts["embedding"] if cfg.tie_embeddings else 0  # the tied embedding is the int8 head
    stored += head + 4 * float_params
    largest = max([cfg.vocab_size * cfg.d_model, *(i * o for i, o in shapes.values())])
    return {"stored": stored, "kernels": layouts, "transient": layouts + 4 * largest}


PARALLEL_MODES = ("none", "ddp", "fsdp")


def per_rank_memory(
    cfg: ModelConfig, batch_size: int, seq_len: int, world_size: int, parallel: str = "fsdp", **kw
) -> dict[str, int]:
    """`training_memory` on each of `world_size` processes training with the global batch `batch_size` (each runs
    batch_size / world_size rows, as `modernlm train --parallel` does); `kw` as training_memory's.

    ddp: every process holds the whole model, its gradients (DDP's buckets are the gradients' storage,
    gradient_as_bucket_view) and optimizer states; only the activations shrink, with the rows. fsdp: parameters,
    gradients and optimizer states are divided by world_size (FSDP2 pads each tensor's first dimension to a multiple
    of it: at most world_size - 1 rows more per tensor), activations are not (they follow the rows); on top,
    `gathered_units`: the full parameters of the units in flight (the root's embedding, final norm and head for the
    whole step, two blocks: the one running and the one prefetched) in the compute dtype, and one block's full
    gradients before their reduce-scatter. Autocast's weight copies are then those of the gathered units only."""
    from .params import attention_parameters, block_norms, ffn_parameters, norm_parameters, parameter_counts

    _check("parallel", parallel, PARALLEL_MODES)
    if world_size < 1 or batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} does not split over world_size {world_size}: give a multiple")
    parts = training_memory(cfg, batch_size // world_size, seq_len, **kw)
    if parallel != "fsdp" or kw.get("trainable_parameters") is not None or kw.get("quantize"):
        if parallel == "fsdp":
            raise ValueError("the fsdp accounting covers full training of a float model, not LoRA or QLoRA")
        return parts
    e = PRECISIONS[kw.get("precision", "fp32")]
    block = attention_parameters(cfg) + ffn_parameters(cfg) + block_norms(cfg) * norm_parameters(cfg)
    root = parameter_counts(cfg)["total"] - cfg.n_layers * block
    recompute = parts["activations_recompute_peak"] - parts["activations"]
    for name in ("parameters", "gradients", "optimizer_states"):
        parts[name] = -(-parts[name] // world_size)  # ceil
    parts["weight_copies"] = 0
    in_flight = min(cfg.n_layers, 2)  # the running block and the prefetched one
    parts["gathered_units"] = (root + in_flight * block) * e + 4 * block if world_size > 1 else 0
    parts["total"] = sum(parts[k] for k in ("parameters", "gradients", "optimizer_states", "gathered_units"))
    parts["total"] += parts["activations"] + recompute
    backward_end = parts["gradients"] + recompute
    persistent = parts["parameters"] + parts["optimizer_states"] + parts["gathered_units"]
    parts["step_peak"] = persistent + max(parts["activations"] + parts["loss_backward"], backward_end)
    first = ("parameters", "gradients", "optimizer_states", "weight_copies", "gathered_units")
    return {k: parts[k] for k in (*first, *(k for k in parts if k not in first))}
