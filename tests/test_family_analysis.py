"""Accounting for the other members: forward FLOPs against FlopCounterMode (an encoder with each head, T5 with its
cross-attention, ViT with its patch projection), and `modernlm info` on each."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from modernlm.analysis.family import member_forward_flops, parameters_by_part
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
}  # fmt: skip


def build(name: str):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**COMMON, **MEMBERS[name]}).validate()
    return model_class(cfg)(cfg).eval()


@pytest.mark.parametrize("name", MEMBERS)
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
