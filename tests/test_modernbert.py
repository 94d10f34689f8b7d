"""ModernBERT: MLM logits and hidden states equal transformers' on random-initialised models (RoPE with two bases,
GeGLU, bias-free pre-norm, alternating local/global attention over a sequence longer than the window), and
save_model's directory loads in transformers."""

from __future__ import annotations

import pytest
import torch
import transformers

import modernlm
from modernlm.encoder import Encoder

MODERNBERT = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=4,
    num_attention_heads=4,
    local_attention=8,  # each token sees 4 neighbours each side on local layers; the inputs are 21 long
    global_attn_every_n_layers=3,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
)


def modernbert_config(**fields) -> transformers.ModernBertConfig:
    return transformers.ModernBertConfig(**{**MODERNBERT, **fields})


def batch():
    ids = torch.randint(3, MODERNBERT["vocab_size"], (2, 21), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 21, dtype=torch.long)
    mask[1, 15:] = 0
    return ids, mask


@pytest.mark.parametrize("cls", [transformers.ModernBertForMaskedLM, transformers.ModernBertModel])
def test_modernbert_equals_transformers(tmp_path, cls, hf_reference):
    ref, _ = hf_reference(cls, modernbert_config(), tmp_path, attn="sdpa")
    ours = modernlm.load_model(tmp_path)
    assert isinstance(ours, Encoder) and ours.config.positions == "rope" and ours.config.global_every == 3
    assert [ours.is_local(i) for i in range(4)] == [False, True, True, False]
    ids, mask = batch()
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask)
        want = out.logits if cls is transformers.ModernBertForMaskedLM else out.last_hidden_state
        got = ours(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)


def test_save_model_loads_in_transformers(tmp_path, hf_reference):
    hf_reference(transformers.ModernBertForMaskedLM, modernbert_config(), tmp_path / "in", attn="sdpa")
    ours = modernlm.load_model(tmp_path / "in")
    modernlm.save_model(ours, tmp_path / "out")
    again = transformers.ModernBertForMaskedLM.from_pretrained(tmp_path / "out", attn_implementation="sdpa").eval()
    ids, mask = batch()
    with torch.no_grad():
        want, got = again(input_ids=ids, attention_mask=mask).logits, ours(ids, mask)
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], atol=1e-4, rtol=0)
