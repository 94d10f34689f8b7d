"""The vision-language member against transformers' Idefics3 and SmolVLM on random small configs: logits with images
(one and several per sequence, padding images), cached decoding after an image prefill, the way back out, the config
checks and the parameter count."""

from __future__ import annotations

import pytest
import torch
import transformers

import modernlm
from modernlm.config import ConfigError, ModelConfig
from modernlm.layers.kv_cache import KVCache

IMAGE_TOKEN, V = 100, 128
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)  # fmt: skip
TEXT = dict(model_type="llama", vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)  # fmt: skip
CONFIGS = {"idefics3": transformers.Idefics3Config, "smolvlm": transformers.SmolVLMConfig}
TOKENS_PER_IMAGE = (32 // 8 // 2) ** 2  # (image / patch / pixel shuffle)^2


def make_hf(name: str, seed: int = 0, **text):
    torch.manual_seed(seed)
    config = CONFIGS[name](vision_config=VISION, text_config={**TEXT, **text}, scale_factor=2,
                           image_token_id=IMAGE_TOKEN)  # fmt: skip
    model = transformers.AutoModelForImageTextToText.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # biases and norm gains start at 0 and 1; randomise them so a missed one shows
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or "norm" in pname:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def prompt(n_images: int, seed: int) -> list[int]:
    """Text tokens around n_images runs of image tokens, as Idefics3's processor lays them out."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, IMAGE_TOKEN, (3,), generator=g).tolist()
    for _ in range(n_images):
        ids += [IMAGE_TOKEN] * TOKENS_PER_IMAGE + torch.randint(1, IMAGE_TOKEN, (2,), generator=g).tolist()
    return ids


@pytest.fixture(params=sorted(CONFIGS))
def pair(request, tmp_path):
    hf = make_hf(request.param)
    hf.save_pretrained(tmp_path / "hf")
    return hf, modernlm.load_model(tmp_path / "hf"), tmp_path


def test_logits_with_images_equal_transformers(pair):
    hf, model, _ = pair
    assert model.config.family == "vlm" and model.config.image_tokens == TOKENS_PER_IMAGE
    ids = torch.tensor([prompt(2, 1), prompt(2, 2)])  # (B, T): two images each
    pixels = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(3))  # (B, I, C, H, W)
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=pixels).logits
        torch.testing.assert_close(model(ids, pixel_values=pixels), want, atol=1e-4, rtol=0)
        torch.testing.assert_close(model(ids, pixel_values=pixels.flatten(0, 1)), want, atol=1e-4, rtol=0)
        text = torch.tensor([[5, 6, 7, 8]])  # no image: the decoder alone
        torch.testing.assert_close(model(text), hf(input_ids=text).logits, atol=1e-4, rtol=0)


def test_padding_images_are_dropped_like_transformers(pair):
    hf, model, _ = pair
    ids = torch.tensor([prompt(2, 4), prompt(1, 5) + [7] * (TOKENS_PER_IMAGE + 2)])  # the second has one image
    pixels = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    pixels[1, 1] = 0  # its second slot is padding
    with torch.no_grad():
        torch.testing.assert_close(model(ids, pixel_values=pixels), hf(input_ids=ids, pixel_values=pixels).logits,
                                   atol=1e-4, rtol=0)  # fmt: skip


def test_cached_decoding_after_an_image_prefill(pair):
    hf, model, _ = pair
    ids = torch.tensor([prompt(1, 7) + [9, 10, 11, 12]])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    T = ids.shape[1] - 4
    cache = KVCache.for_model(model, 1, 64)
    with torch.no_grad():
        want = hf(input_ids=ids, pixel_values=pixels[None]).logits
        got = [model(ids[:, :T], pixel_values=pixels, input_pos=torch.arange(T), cache=cache)]
        got += [model(ids[:, t : t + 1], input_pos=torch.tensor([t]), cache=cache) for t in range(T, ids.shape[1])]
    torch.testing.assert_close(torch.cat(got, 1), want, atol=1e-4, rtol=0)


def test_save_model_loads_in_transformers(pair):
    hf, model, tmp_path = pair
    modernlm.save_model(model, tmp_path / "out")
    again = transformers.AutoModelForImageTextToText.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(again) is type(hf)
    ids, pixels = torch.tensor([prompt(1, 9)]), torch.randn(1, 1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, pixel_values=pixels).logits,
                                   hf(input_ids=ids, pixel_values=pixels).logits, atol=1e-5, rtol=0)  # fmt: skip


def test_parameter_count_and_wrong_image_tokens(pair):
    from modernlm.analysis import parameter_counts

    hf, model, _ = pair
    measured = sum(p.numel() for p in model.parameters())
    assert measured == sum(p.numel() for p in hf.parameters())
    assert parameter_counts(model.config)["total"] == measured
    with pytest.raises(ValueError, match=f"put {TOKENS_PER_IMAGE} image tokens in the text for each image"):
        model(torch.tensor([prompt(1, 1)]), pixel_values=torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(pixel_shuffle=3), "pixel_shuffle=3 must be a positive integer dividing the 4 x 4 patch grid"),
        (dict(vision=None), "family 'vlm' needs `vision`"),
        (dict(image_token_id=V), f"image_token_id={V} is not a token"),
    ],
)
def test_bad_vlm_configs_are_refused(pair, change, message):
    _, model, _ = pair
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict({**model.config.to_dict(), **change}).validate()


def test_info_and_memory_count_the_whole_model(pair, capsys):
    import json

    from modernlm.cli.__main__ import main

    hf, model, tmp_path = pair
    measured = sum(p.numel() for p in model.parameters())
    assert main(["info", str(tmp_path / "hf"), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["parameters"]
    assert counts["total"] == measured and counts["vision"] == sum(p.numel() for p in model.vision.parameters())
    assert main(["memory", str(tmp_path / "hf"), "--seq-len", "32", "--json"]) == 0
    assert main(["flops", str(tmp_path / "hf"), "--seq-len", "32"]) == 0


# ---- LoRA on the backbone, the drill card's choice ----------------------------------------------------------------
def test_vlm_lora_preset_freezes_exactly_the_cards_components(pair):
    from modernlm.finetune.vlm import apply_vlm_lora, format_table, trainable_table

    hf, model, _ = pair
    cfg, r = model.config, 4
    totals = {part: n for part, (_, n) in trainable_table(model).items()}
    apply_vlm_lora(model, r=r)
    adapters = cfg.n_layers * r * ((cfg.d_model + cfg.q_dim) * 2 + (cfg.d_model + cfg.kv_dim) * 2)  # q, o; k, v
    table = trainable_table(model)
    assert table == {
        "vision tower": (0, totals["vision tower"]),
        "projector": (0, totals["projector"]),
        "embeddings and head": (0, totals["embeddings and head"]),
        "norms": (0, totals["norms"]),
        "language model weights": (0, totals["language model weights"]),
        "LoRA adapters (q, k, v, o)": (adapters, adapters),
        "total": (adapters, sum(totals.values()) - totals["total"] + adapters),
    }
    assert "LoRA adapters" in format_table(table)
    assert all(not n.startswith("vision.") for n, p in model.named_parameters() if p.requires_grad)  # its q/k/v too


def test_vlm_lora_unfreezes_what_it_is_asked_to(tmp_path):
    from modernlm.finetune.lora import LoraError
    from modernlm.finetune.vlm import apply_vlm_lora, trainable_table

    hf = make_hf("smolvlm")
    hf.save_pretrained(tmp_path)
    model = apply_vlm_lora(modernlm.load_model(tmp_path), unfreeze=("projector", "norms"))
    table = trainable_table(model)
    assert table["projector"][0] == table["projector"][1] > 0 and table["norms"][0] == table["norms"][1] > 0
    assert table["vision tower"][0] == 0 and table["embeddings and head"][0] == 0
    with pytest.raises(LoraError, match=r"unfreeze names \['tower'\]"):
        apply_vlm_lora(modernlm.load_model(tmp_path), unfreeze=("tower",))
