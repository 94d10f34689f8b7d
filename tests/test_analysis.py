"""Accounting against measurement: parameters vs the model, FLOPs (forward and training) vs FlopCounterMode, KV bytes
vs the cache, activation memory vs the bytes a real CPU training step keeps alive."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from modernlm import Transformer, preset
from modernlm.analysis import activation_bytes, forward_flops, kv_cache_bytes, mfu, parameter_counts, training_flops
from modernlm.analysis.measure import LiveBytes, storages_of
from modernlm.analysis.memory import korthikanti_layer_bytes, layer_activation_bytes, training_memory
from modernlm.layers.kv_cache import KVCache

VARIANTS = [
    dict(),
    dict(n_kv_heads=1, tie_embeddings=True),
    dict(qkv_bias=True, out_bias=True, mlp_bias=True),
    dict(norm="layernorm", ffn="gelu"),
    dict(ffn="geglu", head_dim=32),
    dict(norm="batchnorm", ffn="silu"),
]


@pytest.mark.parametrize("fields", VARIANTS)
def test_parameter_counts_match_model(fields):
    model = Transformer(preset("llama-tiny", **fields))
    assert parameter_counts(model.config)["total"] == model.num_parameters()


def test_parameter_parts_of_smollm2_shape():
    counts = parameter_counts(preset("smollm2-135m"))
    # 30 layers of 576 wide: attention q,o 576x576, k,v 576x192; SwiGLU 3 x 576 x 1536; tied head.
    assert counts["attention"] == 30 * (2 * 576 * 576 + 2 * 576 * 192)
    assert counts["ffn"] == 30 * 3 * 576 * 1536
    assert counts["total"] == 134_515_008  # SmolLM2-135M's published 134.5 M parameters


@pytest.mark.parametrize("fields", VARIANTS[:3])
def test_forward_flops_match_flop_counter(fields):
    model = Transformer(preset("llama-tiny", **fields)).eval()
    ids = torch.randint(0, 512, (2, 40))
    # The math backend: torch's CPU flash-attention op has no FLOP formula registered (it would count 0); the math
    # path computes the same dense Q K^T and weights x V products as matmuls, which the counter sees.
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(ids)
    assert forward_flops(model.config, seq_len=40, batch_size=2)["total"] == counter.get_total_flops()


def test_kv_cache_bytes_match_allocation():
    cfg = preset("llama-tiny", n_kv_heads=2)
    cache = KVCache(cfg, batch_size=3, max_len=50, dtype=torch.bfloat16)
    assert kv_cache_bytes(cfg, tokens=50, batch_size=3, dtype=torch.bfloat16) == cache.nbytes()
    # the 7B-shaped model at 4K tokens in fp16: 2 x 32 x 32 x 128 x 4096 x 2 bytes = 2 GiB
    assert kv_cache_bytes(preset("llama-7b"), tokens=4096, dtype=torch.float16) == 2 * 1024**3


# ---- training FLOPs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        dict(),
        dict(activation_checkpointing=True),
        dict(positions="alibi", n_kv_heads=1, norm_placement="post", activation_checkpointing=True),
        dict(shared_qk=True, n_kv_heads=4, positions="learned", ffn="gelu", tie_embeddings=True),
    ],
    ids=str,
)
def test_training_flops_match_flop_counter(fields):
    model = Transformer(preset("llama-tiny", **fields)).train()
    ids = torch.randint(0, 512, (2, 40))
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        F.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
    assert training_flops(model.config, seq_len=40, batch_size=2)["total"] == counter.get_total_flops()


def test_flops_breakdown_and_mfu():
    cfg = preset("gpt2")
    fwd = forward_flops(cfg, seq_len=1024)
    # Kaplan et al.'s 2 N (non-embedding) + 2 n_layer n_ctx d_attn per token, plus the head; their attention term
    # is half of ours, which counts both T x T products in full as dense kernels compute them.
    kaplan = 2 * parameter_counts(cfg)["non_embedding"] + 2 * (2 * 12 * 1024 * 768) + 2 * 768 * cfg.vocab_size
    assert abs(fwd["per_token"] - kaplan) / kaplan < 0.01
    assert fwd["softmax"] == 3 * 12 * 1024 * 1024 * 12 and fwd["total_with_softmax"] == fwd["total"] + fwd["softmax"]
    per_token = training_flops(cfg, 1024)["per_token"]
    assert per_token == 3 * fwd["per_token"]
    assert mfu(1000.0, cfg, peak_flops=per_token * 2000.0, seq_len=1024) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="peak_flops must be > 0"):
        mfu(1.0, cfg, 0.0)


# ---- training memory against a measured step ---------------------------------------------------------------------
def measure_step(model, ids) -> tuple[int, int]:
    """(bytes alive after the forward and the loss, peak bytes over forward and backward) of one training step."""
    with LiveBytes(storages_of(model)) as live:
        logits = model(ids)
        loss = F.cross_entropy(logits.flatten(0, 1), ids.flatten())
        del logits  # the log-softmax the loss keeps is counted; the logits a loop may hold are in logits_and_loss
        after_forward = live.now
        loss.backward()
    return after_forward, live.peak


MEMORY_CASES = [
    (dict(), "flash"),
    (dict(), "math"),
    (dict(norm="layernorm", ffn="relu", norm_placement="post", positions="sinusoidal", qkv_bias=True), "flash"),
    (dict(n_kv_heads=1, ffn="gelu", positions="alibi"), "flash"),
    (dict(shared_qk=True, n_kv_heads=4, positions="learned", ffn="geglu", resid_dropout=0.1), "flash"),
    (dict(attn_dropout=0.1, embed_dropout=0.1, positions="alibi"), "math"),
    (dict(norm="batchnorm", ffn="silu"), "flash"),
]


@pytest.mark.parametrize("recompute", [False, True], ids=["no-checkpointing", "checkpointing"])
@pytest.mark.parametrize("fields, kernel", MEMORY_CASES, ids=str)
def test_activation_memory_matches_a_measured_step(fields, kernel, recompute):
    """The activations kept after the forward (where activation memory peaks) equal the formula within 2%; the
    formula's step total bounds the measured peak. Measured on CPU (float32), with the logits freed after the loss."""
    torch.manual_seed(0)
    cfg = preset("llama-tiny", n_layers=3, activation_checkpointing=recompute, **fields)
    model = Transformer(cfg).train()
    ids = torch.randint(0, 512, (2, 48))
    backend = SDPBackend.FLASH_ATTENTION if kernel == "flash" else SDPBackend.MATH
    with sdpa_kernel(backend):
        after_forward, peak = measure_step(model, ids)
    acts = activation_bytes(cfg, 2, 48, "fp32", attention_kernel=kernel, device="cpu")
    expected = acts["total"] - 2 * 48 * 512 * 4  # this step frees the logits after the loss
    assert abs(after_forward - expected) / expected < 0.02, (after_forward, expected, acts)
    mem = training_memory(cfg, 2, 48, "fp32", "sgd", attention_kernel=kernel, device="cpu")
    assert peak <= mem["gradients"] + mem["activations_recompute_peak"]
    # the step's high-water mark beyond the weights (this step frees the logits before the backward pass): exact at
    # the start of the backward pass; under checkpointing a few (B, T, D) tensors in flight are left out
    predicted = mem["step_peak"] - mem["parameters"] - 2 * 48 * 512 * 4
    if recompute:
        assert predicted <= peak < 1.2 * predicted, (peak, predicted)
    else:
        assert abs(peak - predicted) / predicted < 0.02, (peak, predicted)


LORA_CASES = [
    (dict(), "flash", ("q_proj", "k_proj", "v_proj", "o_proj")),
    (dict(), "math", ("q_proj", "v_proj")),
    (dict(), "flash", ("down_proj",)),
    (dict(ffn="gelu", norm="layernorm"), "flash", ("up_proj", "down_proj")),
    (dict(), "flash", ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
]


@pytest.mark.parametrize("fields, kernel, targets", LORA_CASES, ids=str)
def test_lora_activation_memory_matches_a_measured_step(fields, kernel, targets):
    """LoRA (frozen weights, rank-4 adapters): a frozen projection keeps no input, nothing before the first adapter
    keeps anything, each adapter keeps its (r,) product; the formula against the measured step within 2%."""
    from modernlm.finetune.lora import LoraConfig, apply_lora

    torch.manual_seed(0)
    cfg = preset("llama-tiny", n_layers=3, **fields)
    model = apply_lora(Transformer(cfg).train(), LoraConfig(r=4, targets=targets))
    ids = torch.randint(0, 512, (2, 48))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION if kernel == "flash" else SDPBackend.MATH):
        after_forward, peak = measure_step(model, ids)
    adapters = dict.fromkeys(targets, 4)
    acts = activation_bytes(cfg, 2, 48, "fp32", attention_kernel=kernel, device="cpu", adapters=adapters)
    expected = acts["total"] - 2 * 48 * 512 * 4  # this step frees the logits after the loss
    assert abs(after_forward - expected) / expected < 0.02, (after_forward, expected, acts)
    full = activation_bytes(cfg, 2, 48, "fp32", attention_kernel=kernel, device="cpu")
    assert acts["total"] < full["total"]


def test_checkpointing_keeps_one_tensor_per_block():
    cfg = preset("llama", vocab_size=512)
    plain = activation_bytes(cfg, 8, 512, "bf16", activation_checkpointing=False)
    ckpt = activation_bytes(cfg, 8, 512, "bf16", activation_checkpointing=True)
    assert ckpt["blocks"] == cfg.n_layers * 8 * 512 * cfg.d_model * 2 and ckpt["blocks"] < plain["blocks"] / 10
    assert ckpt["recompute_peak"] == ckpt["total"] + plain["blocks"] // cfg.n_layers


def test_memory_of_the_2017_block_at_16_bits_is_close_to_korthikanti():
    """The paper's GPT block (LayerNorm, GELU 4H, MHA, dropout everywhere, materialised softmax) at 16 bits: our
    per-layer count differs only by the float32 norm statistics (a few bytes per token)."""
    cfg = preset("gpt2", dropout=0.1)
    ours = layer_activation_bytes(cfg, 4, 1024, "bf16", attention_kernel="math")["total"]
    paper = korthikanti_layer_bytes(cfg, 4, 1024)
    assert abs(ours - paper) / paper < 0.01, (ours, paper)


def test_training_memory_parts():
    cfg = preset("llama-7b")
    mem = training_memory(cfg, 1, 4096, "bf16", "adamw", activation_checkpointing=True)
    n = parameter_counts(cfg)["total"]
    assert (mem["parameters"], mem["gradients"], mem["optimizer_states"], mem["weight_copies"]) == (
        4 * n,
        4 * n,
        8 * n,
        2 * n,
    )
    with pytest.raises(ValueError, match="unknown optimizer 'lion'; valid values: adamw"):
        training_memory(cfg, 1, 16, optimizer="lion")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        training_memory(cfg, 1, 16, precision="fp8")


# ---- CLI ---------------------------------------------------------------------------------------------------------
def test_flops_and_memory_cli(tmp_path, capsys):
    import json

    from modernlm.cli.__main__ import main

    assert main(["flops", "gpt-2017", "--seq-len", "128", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["forward_total_per_token"] == forward_flops(preset("gpt-2017"), 128)["per_token"]
    preset("llama-tiny").to_json(tmp_path / "c.json")
    assert main(["memory", str(tmp_path / "c.json"), "--batch-size", "2", "--seq-len", "64"]) == 0
    out = capsys.readouterr().out
    assert "activations" in out and "checkpointed" in out and "KV cache" in out
    assert main(["memory", "no-such-model"]) == 2
    assert "gpt-2017" in capsys.readouterr().err  # the error lists the presets
    assert main(["memory", "llama-tiny", "--lora", "q_proj,v_proj", "--lora-r", "4", "--json"]) == 0
    lora = json.loads(capsys.readouterr().out)["training"]
    assert lora["optimizer_states"] < lora["activations"] and lora["step_peak"] > lora["activations"]
    assert main(["memory", "llama-tiny", "--lora", "qproj"]) == 2
    assert "no projection named ['qproj']" in capsys.readouterr().err


@pytest.mark.parametrize("fields", [dict(), dict(shared_qk=True, n_kv_heads=4, ffn="gelu")], ids=str)
def test_adapter_parameters_equal_lora_trainables(fields):
    from modernlm.analysis.params import adapter_parameters, projection_shapes
    from modernlm.finetune.lora import LoraConfig, apply_lora, trainable_parameters

    cfg = preset("llama-tiny", **fields)
    targets = tuple(projection_shapes(cfg))
    model = apply_lora(Transformer(cfg), LoraConfig(r=3, targets=targets))
    assert adapter_parameters(cfg, dict.fromkeys(targets, 3)) == trainable_parameters(model)[0]
