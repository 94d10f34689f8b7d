"""LoRA against its definition and against PEFT (the reference implementation) on the same base weights."""

from __future__ import annotations

import pytest
import torch
import transformers

import modernlm
from modernlm.finetune.lora import (
    LoraConfig,
    LoraError,
    LoraLinear,
    apply_lora,
    load_adapter,
    merge,
    merge_and_unload,
    save_adapter,
    trainable_parameters,
    unmerge,
)

IDS = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))  # (B, T)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, hf_reference):
    """A random-initialised transformers Llama (GQA), saved: the base model for both implementations."""
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return hf_reference(transformers.LlamaForCausalLM, config, tmp_path_factory.mktemp("base"))[1]


def randomize_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, LoraLinear):
            m.lora_B.data = torch.randn(m.lora_B.shape, generator=g) * 0.1


def test_zero_b_gives_exactly_the_base_output(hf_dir):
    model = modernlm.load_model(hf_dir)
    with torch.no_grad():
        base = model(IDS)
        apply_lora(model, LoraConfig(r=4, targets=("q_proj", "v_proj", "down_proj")))
        assert torch.equal(model(IDS), base)


def test_merge_unmerge_and_unload(hf_dir):
    model = apply_lora(modernlm.load_model(hf_dir), LoraConfig(r=4, alpha=8))
    base_q = model.blocks[0].attn.q_proj.weight.detach().clone()
    randomize_adapters(model)
    with torch.no_grad():
        adapted = model(IDS)
        merge(model)
        torch.testing.assert_close(model(IDS), adapted, rtol=0, atol=1e-5)
        unmerge(model)
        torch.testing.assert_close(model.blocks[0].attn.q_proj.weight, base_q, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(IDS), adapted, rtol=0, atol=1e-6)
        plain = merge_and_unload(model)
        assert not any(isinstance(m, LoraLinear) for m in plain.modules())
        torch.testing.assert_close(plain(IDS), adapted, rtol=0, atol=1e-5)


def test_only_adapters_get_gradients_and_change(hf_dir):
    model = apply_lora(modernlm.load_model(hf_dir), LoraConfig(r=4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable, total = trainable_parameters(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n) < total
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(IDS).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if ".lora_" in n:
            assert not torch.equal(p, before[n]), n
        else:
            assert p.grad is None and torch.equal(p, before[n]), n


def test_our_adapter_loads_in_peft_with_the_same_logits(hf_dir, tmp_path):
    from peft import PeftModel

    ours = apply_lora(modernlm.load_model(hf_dir), LoraConfig(r=4, alpha=12, targets=("q_proj", "k_proj", "o_proj")))
    randomize_adapters(ours)
    save_adapter(ours, tmp_path / "adapter")
    reference = PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(hf_dir), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS), reference(IDS).logits, rtol=0, atol=1e-4)


def test_peft_adapter_loads_in_modernlm_with_the_same_logits(hf_dir, tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    torch.manual_seed(2)
    peft_config = PeftLoraConfig(r=8, lora_alpha=16, target_modules=["v_proj", "gate_proj", "up_proj"])
    reference = get_peft_model(transformers.LlamaForCausalLM.from_pretrained(hf_dir), peft_config)
    for name, p in reference.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    reference.save_pretrained(tmp_path / "peft")
    ours = load_adapter(modernlm.load_model(hf_dir), tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS), reference(IDS).logits, rtol=0, atol=1e-4)


def test_adapter_round_trip_keeps_trained_norms(hf_dir, tmp_path):
    model = apply_lora(modernlm.load_model(hf_dir), LoraConfig(r=2, train_norms=True))
    randomize_adapters(model)
    with torch.no_grad():
        model.norm.weight.add_(0.5)
        expected = model(IDS)
    save_adapter(model, tmp_path / "a")
    size = (tmp_path / "a" / "adapter_model.safetensors").stat().st_size
    assert size < 0.2 * sum(p.numel() * 4 for p in model.parameters())  # adapters alone, not the model
    reloaded = load_adapter(modernlm.load_model(hf_dir), tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS), expected, rtol=0, atol=0)


def test_merged_model_loads_in_transformers(hf_dir, tmp_path):
    model = apply_lora(modernlm.load_model(hf_dir), LoraConfig(r=4))
    randomize_adapters(model)
    with torch.no_grad():
        expected = model(IDS)
    modernlm.save_model(merge_and_unload(model), tmp_path / "merged")
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(reference(IDS).logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "config, message",
    [
        (LoraConfig(r=0), "rank r must be an integer >= 1"),
        (LoraConfig(targets=("q_proj", "query")), r"no linear module named \['query'\]"),
        (LoraConfig(alpha=0), "alpha must be > 0"),
    ],
)
def test_bad_settings(hf_dir, config, message):
    with pytest.raises(LoraError, match=message):
        apply_lora(modernlm.load_model(hf_dir), config)
