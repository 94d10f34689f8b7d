"""Accounting for the other members: forward FLOPs against FlopCounterMode (an encoder with each head, T5 with its
cross-attention, ViT with its patch projection), training activations against a measured step (LiveBytes), and
`modernlm info` and `modernlm memory` on each."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from modernlm.analysis.family import member_activation_bytes, member_forward_flops, parameters_by_part
from modernlm.analysis.measure import LiveBytes, storages_of
from modernlm.cli.__main__ import main
from modernlm.config import ModelConfig
from modernlm.loading import model_class, save_model

COMMON = dict(d_model=32, n_layers=2, n_heads=4, ffn_hidden=48, init_std=0.02)
MEMBERS = {
    "bert-mlm": dict(family="encoder", head="mlm", vocab_size=90, causal=False, positions="learned",
                     norm="layernorm", norm_placement="post", ffn="gelu_erf", qkv_bias=True, out_bias=True,
                     mlp_bias=True, embed_norm=True, type_vocab_size=2, tie_embeddings=True, max_seq_len=32),
    "bert-classify": dict(family="encoder", head="classify", n_classes=3, pooler=True, vocab_size=90, causal=False,
                          positions="learned", norm="layernorm", norm_placement="post", ffn="gelu_erf",
                          qkv_bias=True, out_bias=True, mlp_bias=True, embed_norm=True, type_vocab_size=2,
                          max_seq_len=32),
    "t5": dict(family="seq2seq", vocab_size=90, n_decoder_layers=3, positions="t5_relative", attn_scale=1.0,
               ffn="geglu", tie_embeddings=False, max_seq_len=32),
    "vit": dict(family="vit", n_classes=5, vocab_size=1, causal=False, positions="learned", norm="layernorm",
                ffn="gelu_erf", qkv_bias=True, out_bias=True, mlp_bias=True, image_size=8, patch_size=2,
                n_channels=3, max_seq_len=17),
    "modernbert": dict(family="encoder", head="mlm", vocab_size=90, causal=False, positions="rope",
                       norm="layernorm_nobias", ffn="geglu", embed_norm=True, tie_embeddings=True, max_seq_len=64,
                       local_window=8, global_every=2, skip_first_attn_norm=True),
    "bert-mean": dict(family="encoder", head="classify", n_classes=3, pooling="mean", vocab_size=90, causal=False,
                      positions="learned", norm="layernorm", norm_placement="post", ffn="gelu_erf", qkv_bias=True,
                      out_bias=True, mlp_bias=True, max_seq_len=32),
}  # fmt: skip


def build(name: str, **fields):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**COMMON, **MEMBERS[name], **fields}).validate()
    return model_class(cfg)(cfg).eval()


@pytest.mark.parametrize("name", ["bert-mlm", "bert-classify", "t5", "vit"])
def test_forward_flops_match_flop_counter(name):
    model = build(name)
    S, T = 20, 7
    args = {
        "encoder": (torch.randint(0, 90, (2, S)),),
        "seq2seq": (torch.randint(0, 90, (2, S)), torch.randint(0, 90, (2, T))),
        "vit": (torch.randn(2, 3, 8, 8),),
    }[model.config.family]
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(*args)
    assert member_forward_flops(model.config, S, T, batch_size=2)["total"] == counter.get_total_flops()
    assert parameters_by_part(model)["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["bert-mlm", "t5", "vit"])
def test_info_describes_every_member(tmp_path, name, capsys):
    save_model(build(name), tmp_path)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert MEMBERS[name]["family"] in out and "total" in out


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("name", MEMBERS)
def test_training_activations_match_a_measured_step(name, padded):
    """What a member keeps after the forward and the loss (where activation memory peaks) equals
    `member_activation_bytes` within 1%, on CPU in float32, at two sizes (the logits freed after the loss)."""
    if padded and name == "vit":
        pytest.skip("a ViT has no padding")
    for B, S, T, fields in [(2, 20, 7, {}), (3, 30, 11, dict(n_layers=3, d_model=64, ffn_hidden=96))]:
        model = build(name, **fields).train()
        cfg = model.config
        ids = torch.randint(0, 90, (B, S))
        mask = torch.ones(B, S, dtype=torch.long)
        mask[1, S // 2 :] = 0
        kw = {"attention_mask": mask} if padded else {}
        inputs = {
            "encoder": (ids,),
            "seq2seq": (ids, torch.randint(0, 90, (B, T))),
            "vit": (torch.randn(B, 3, 8, 8),),
        }[cfg.family]
        with LiveBytes(storages_of(model)) as live:
            out = model(*inputs, **kw)
            if out.dim() == 3:  # (B, T, V) logits: the cross-entropy keeps its log-softmax
                loss = F.cross_entropy(out.flatten(0, 1), torch.randint(0, 90, out.shape[:2]).flatten())
            else:
                loss = out.pow(2).mean()
            del out
            measured = live.now
        loss.backward()
        predicted = member_activation_bytes(cfg, B, S, T, "fp32", padded=padded, device="cpu")
        logit_rows = {"encoder": B * S if cfg.head == "mlm" else 0, "seq2seq": B * T, "vit": 0}[cfg.family]
        logits = logit_rows * cfg.vocab_size * 4
        expected = predicted["total"] - logits  # this step frees the logits; a training loop holds them
        assert abs(measured - expected) / expected < 0.01, (B, S, measured, expected, predicted)


@pytest.mark.parametrize("name", ["bert-mlm", "t5", "vit", "modernbert"])
def test_memory_cli_covers_every_member(tmp_path, name, capsys):
    save_model(build(name), tmp_path)
    args = ["memory", str(tmp_path), "--batch-size", "2", "--json", "--device", "cpu", "--precision", "fp32"]
    args += ["--seq-len", "16"] if name != "vit" else []
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    n = parameters_by_part(build(name))["total"]
    training = report["training"]
    assert training["parameters"] == training["gradients"] == 4 * n and training["optimizer_states"] == 8 * n
    assert training["total"] == sum(v for k, v in training.items() if k != "total")
    if name == "t5":
        assert set(report["generation_cache_bytes"]) == {"cross_kv", "self_kv"}
    assert main(["memory", str(tmp_path), "--lora", "q_proj"]) == 2
    assert "decoder fine-tuning" in capsys.readouterr().err
