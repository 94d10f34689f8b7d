"""The ViT member: class logits equal transformers' ViTForImageClassification on random weights, save_model's
directory loads in transformers, and images of the wrong shape are refused with the fix."""

from __future__ import annotations

import pytest
import torch
import transformers

import modernlm
from modernlm.config import ConfigError, ModelConfig
from modernlm.vit import ImageShapeError, ViT

VIT = dict(
    image_size=12,
    patch_size=4,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    num_labels=5,
)


def vit_config(**fields) -> transformers.ViTConfig:
    return transformers.ViTConfig(**{**VIT, **fields})


@pytest.mark.parametrize("channels", [3, 1])
def test_vit_logits_equal_transformers(tmp_path, channels, hf_reference):
    ref, _ = hf_reference(transformers.ViTForImageClassification, vit_config(num_channels=channels), tmp_path)
    ours = modernlm.load_model(tmp_path)
    assert isinstance(ours, ViT) and ours.config.family == "vit" and ours.config.n_patches == 9
    images = torch.randn(3, channels, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(pixel_values=images).logits
        got = ours(images)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_save_model_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(
        family="vit", head="classify", n_classes=4, vocab_size=1, d_model=32, n_layers=2, n_heads=4, ffn="gelu_erf",
        ffn_hidden=48, norm="layernorm", positions="learned", causal=False, qkv_bias=True, out_bias=True,
        mlp_bias=True, image_size=8, patch_size=2, n_channels=1, max_seq_len=17,
    )  # fmt: skip
    model = ViT(cfg).eval()
    modernlm.save_model(model, tmp_path)
    ref = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()
    images = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ref(pixel_values=images).logits, model(images), atol=1e-4, rtol=0)
        torch.testing.assert_close(modernlm.load_model(tmp_path)(images), model(images), atol=0, rtol=0)


def test_wrong_images_and_patch_sizes_are_refused(tmp_path, hf_reference):
    hf_reference(transformers.ViTForImageClassification, vit_config(), tmp_path)
    model = modernlm.load_model(tmp_path)
    with pytest.raises(ImageShapeError, match="10x10 pixels .* resize the images to 12x12"):
        model(torch.randn(1, 3, 10, 10))
    with pytest.raises(ImageShapeError, match="3 channel"):
        model(torch.randn(1, 1, 12, 12))
    with pytest.raises(ImageShapeError, match="float tensor"):
        model(torch.zeros(1, 3, 12, 12, dtype=torch.long))
    with pytest.raises(ConfigError, match="patch_size=5 does not divide image_size=12"):
        ModelConfig(
            family="vit", n_classes=2, causal=False, positions="learned", image_size=12, patch_size=5
        ).validate()
    with pytest.raises(ConfigError, match="max_seq_len must be 10"):
        ModelConfig(
            family="vit", n_classes=2, causal=False, positions="learned", image_size=12, patch_size=4
        ).validate()
