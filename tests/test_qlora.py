"""QLoRA: LoRA over a quantized frozen base. Zero adapters give exactly the quantized base's output, only the
adapters learn, the loss falls, adapters round-trip in PEFT's layout, merging gives float layers, and the finetune
run trains over an int4 SmolLM2 (slow)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import modernlm
from modernlm.finetune.lora import (
    LoraConfig,
    LoraError,
    apply_lora,
    load_adapter,
    merge,
    merge_and_unload,
    save_adapter,
)
from modernlm.finetune.qlora import QuantLoraLinear
from modernlm.quant import QuantLinear, dequantize_model, is_quantized, plain, quantize

IDS = torch.randint(0, 512, (4, 16), generator=torch.Generator().manual_seed(0))


def train(model, steps=12):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        logits = model(IDS[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), IDS[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_adapters_learn_over_frozen_codes(kind, tiny_decoder):
    model = quantize(tiny_decoder("wide"), kind)
    with torch.no_grad():
        base = model(IDS)
    apply_lora(model, LoraConfig(r=4, targets=("q_proj", "v_proj", "down_proj")))
    assert isinstance(model.blocks[0].attn.q_proj, QuantLoraLinear)
    assert isinstance(model.blocks[0].attn.k_proj, QuantLinear)
    with torch.no_grad():
        assert torch.equal(model(IDS), base)  # B = 0: exactly the quantized base
    codes = model.blocks[0].attn.q_proj.base.qweight.state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    losses = train(model)
    assert losses[-1] < 0.9 * losses[0]
    for k, v in model.blocks[0].attn.q_proj.base.qweight.state_dict().items():
        assert torch.equal(v, codes[k])  # the base never moved


def test_adapters_round_trip_and_merge(tmp_path, tiny_decoder):
    model = apply_lora(quantize(tiny_decoder("wide"), "int4"), LoraConfig(r=4, targets=("q_proj", "v_proj")))
    train(model, steps=3)
    save_adapter(model, tmp_path)
    fresh = load_adapter(quantize(tiny_decoder("wide"), "int4"), tmp_path)
    with torch.no_grad():
        want = model(IDS)
        torch.testing.assert_close(fresh(IDS), want, rtol=0, atol=1e-5)
    with pytest.raises(LoraError, match="quantized and cannot take B A in place"):
        merge(model)
    with torch.no_grad(), plain():
        want = model(IDS)  # the dequantize-then-matmul twin: float32 activations, as the merged float model has
    merged = dequantize_model(merge_and_unload(model))
    assert not is_quantized(merged)
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS), want, rtol=1e-4, atol=1e-4)


def test_qlora_config_errors():
    from modernlm.finetune.config import FinetuneConfig

    with pytest.raises(ValueError, match="QLoRA trains LoRA adapters over an int8 or int4 base"):
        FinetuneConfig(quantize="int4", lora=False).validate()
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        FinetuneConfig(quantize="int3").validate()


@pytest.mark.slow
def test_finetune_over_int4_smollm2(tmp_path):
    from modernlm.finetune.examples import example_conversations
    from modernlm.finetune.run import finetune
    from test_finetune import tiny_config, write_jsonl

    conversations = example_conversations(24)
    files = (
        write_jsonl(tmp_path / "t.jsonl", conversations[:16]),
        write_jsonl(tmp_path / "v.jsonl", conversations[16:]),
    )
    cfg = tiny_config(tmp_path / "qlora", files)
    cfg.quantize = "int4"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = finetune(cfg)
    finally:
        torch.set_num_threads(threads)
    assert result.status == "done" and result.val_after < result.val_before
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (result.run_dir / "merged" / "config.json").is_file()
    base = modernlm.load_model(quantize="int4")
    fresh = load_adapter(base, result.run_dir / "adapter")
    ids = torch.tensor([[1, 4093, 198, 2683, 314, 216, 34, 35]])
    merged = modernlm.load_model(result.run_dir / "merged")
    with torch.no_grad(), plain():  # float32 activations on both sides
        torch.testing.assert_close(merged(ids), fresh(ids), rtol=0, atol=2e-3)


@pytest.mark.parametrize("spec", ["int8", "int8-g32", "int4", "int4-g64"])
@pytest.mark.parametrize("tie,bias", [(True, False), (False, True)])
def test_memory_predicts_the_quantized_base(spec, tie, bias):
    """analysis/memory.py's bytes of a quantized base equal the bytes the quantized model holds, and its kernel
    copies the packed layouts a batch-1 forward builds."""
    from modernlm.analysis.memory import quantized_weight_bytes, training_memory
    from modernlm.quant import model_bytes, quantized_modules
    from modernlm.quant.load import parse

    cfg = modernlm.preset("llama-tiny", d_model=128, n_heads=4, n_kv_heads=2, ffn_hidden=384, tie_embeddings=tie,
                          qkv_bias=bias)  # fmt: skip
    kind, group = parse(spec)
    model = quantize(modernlm.Transformer(cfg).eval(), kind, group_size=group)
    predicted = quantized_weight_bytes(cfg, spec)
    assert predicted["stored"] == model_bytes(model)
    with torch.no_grad():
        model(IDS[:1, :1])  # one row: the fused kernels, which build their layouts
    own = {t.untyped_storage().data_ptr() for t in model.buffers()}  # a layout may reuse the stored codes
    layouts = [m.qweight.kernel_cache for m in quantized_modules(model).values()]
    tensors = {
        t.untyped_storage().data_ptr(): t
        for c in layouts
        for v in c.values()
        for t in (v if isinstance(v, tuple) else (v,))
    }
    built = sum(t.untyped_storage().nbytes() for ptr, t in tensors.items() if ptr not in own)
    assert predicted["kernels"] == built
    parts = training_memory(cfg, 2, 16, adapters={"q_proj": 4}, trainable_parameters=4 * 6 * 128, quantize=spec)
    assert parts["parameters"] == predicted["stored"] + 4 * 4 * 6 * 128
