"""The encoder member (BERT): logits and hidden states equal transformers' on random-initialised models, padding never
reaches real positions, save_model's directories load in transformers, and bad input is refused with the fix."""

from __future__ import annotations

import pytest
import torch
import transformers

import modernlm
from modernlm.config import ConfigError, ModelConfig
from modernlm.encoder import Encoder

BERT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    type_vocab_size=2,
)


def bert_config(**fields) -> transformers.BertConfig:
    return transformers.BertConfig(**{**BERT, **fields})


def inputs(B=2, T=11):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, BERT["vocab_size"], (B, T), generator=g)
    types = torch.randint(0, 2, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    return ids, types, mask


@pytest.mark.parametrize("act", ["gelu", "relu"])
def test_bert_mlm_logits_equal_transformers(tmp_path, act, hf_reference):
    ref, _ = hf_reference(transformers.BertForMaskedLM, bert_config(hidden_act=act), tmp_path)
    ours = modernlm.load_model(tmp_path)
    assert isinstance(ours, Encoder) and ours.config.family == "encoder" and ours.config.head == "mlm"
    ids, types, mask = inputs()
    with torch.no_grad():
        want = ref(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask, token_type_ids=types)
    assert got.shape == (2, 11, BERT["vocab_size"])
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-4, rtol=0)


def test_bert_model_hidden_states_and_pooler_equal_transformers(tmp_path, hf_reference):
    ref, _ = hf_reference(transformers.BertModel, bert_config(), tmp_path)
    ours = modernlm.load_model(tmp_path)
    assert ours.config.head == "none"
    ids, types, mask = inputs()
    with torch.no_grad():
        out = ref(input_ids=ids, token_type_ids=types, attention_mask=mask)
        got = ours(ids, mask, types)
        pooled = ours.pool(ours.hidden_states(ids, mask, types), mask)
    assert got.shape == (2, 11, BERT["hidden_size"])
    torch.testing.assert_close(got[mask.bool()], out.last_hidden_state[mask.bool()], atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled, out.pooler_output, atol=1e-4, rtol=0)


def test_sequence_classification_equals_transformers(tmp_path, hf_reference):
    ref, _ = hf_reference(transformers.BertForSequenceClassification, bert_config(num_labels=3), tmp_path)
    ours = modernlm.load_model(tmp_path)
    ids, types, mask = inputs()
    with torch.no_grad():
        want = ref(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        got = ours(ids, mask, types)
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_padding_never_changes_real_positions():
    torch.manual_seed(0)
    model = Encoder(tiny_config(head="none")).eval()
    ids = torch.randint(5, 90, (1, 9))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 9), torch.zeros(1, 6)], 1).long()
    with torch.no_grad():
        alone = model(ids)
        with_pad = model(padded, attention_mask=mask)
    torch.testing.assert_close(with_pad[:, :9], alone, atol=1e-5, rtol=0)
    classifier = Encoder(tiny_config(head="classify", n_classes=3, pooling="mean")).eval()
    with torch.no_grad():  # mean pooling reads the real tokens only
        torch.testing.assert_close(classifier(padded, attention_mask=mask), classifier(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["mlm", "none", "classify"])
def test_save_model_loads_in_transformers_with_equal_outputs(tmp_path, head):
    torch.manual_seed(0)
    model = Encoder(tiny_config(head=head, n_classes=4 if head == "classify" else 0, pooler=head != "mlm")).eval()
    modernlm.save_model(model, tmp_path)
    cls = {
        "mlm": transformers.BertForMaskedLM,
        "none": transformers.BertModel,
        "classify": transformers.BertForSequenceClassification,
    }[head]
    ref = cls.from_pretrained(tmp_path).eval()
    ids, types, mask = inputs()
    with torch.no_grad():
        out = ref(input_ids=ids, token_type_ids=types, attention_mask=mask)
        want = out.last_hidden_state if head == "none" else out.logits
        got = model(ids, mask, types)
    sel = mask.bool() if head != "classify" else slice(None)
    torch.testing.assert_close(got[sel], want[sel], atol=1e-4, rtol=0)
    again = modernlm.load_model(tmp_path)
    torch.testing.assert_close(again(ids, mask, types), got, atol=0, rtol=0)


def tiny_config(**fields) -> ModelConfig:
    base = dict(
        family="encoder",
        vocab_size=99,
        d_model=32,
        n_layers=2,
        n_heads=4,
        ffn="gelu_erf",
        ffn_hidden=37,
        norm="layernorm",
        norm_eps=1e-12,
        norm_placement="post",
        positions="learned",
        type_vocab_size=2,
        embed_norm=True,
        causal=False,
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        max_seq_len=64,
    )
    return ModelConfig(**{**base, **fields})


def test_bad_input_is_refused_with_the_fix():
    model = Encoder(tiny_config(head="mlm")).eval()
    ids = torch.randint(0, 99, (1, 5))
    with pytest.raises(ValueError, match="token type id 2 is out of range.*0..1"):
        model(ids, token_type_ids=torch.full((1, 5), 2))
    with pytest.raises(ValueError, match="token id 99 .* out of range"):
        model(torch.full((1, 5), 99))
    with pytest.raises(ValueError, match="more than the model's 64 positions"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ConfigError, match="n_classes"):
        tiny_config(head="classify").validate()
    with pytest.raises(ConfigError, match="head .*'lm'"):
        tiny_config(head="lm").validate()
    with pytest.raises(ConfigError, match="causal=False"):
        tiny_config(causal=True).validate()
    with pytest.raises(ConfigError, match="type_vocab_size=2 is implemented only for family encoder"):
        ModelConfig(type_vocab_size=2).validate()


def test_registries_match_the_config_and_unbuilt_fields_are_refused():
    from modernlm.config import FFNS, MEMBER_POSITIONS, NORMS
    from modernlm.layers.ffn import ACTIVATIONS
    from modernlm.layers.norm import NORM_CLASSES
    from modernlm.layers.positions import POSITION_MODULES

    assert tuple(NORM_CLASSES) == NORMS and tuple(ACTIVATIONS) == FFNS
    assert set(MEMBER_POSITIONS) <= set(POSITION_MODULES)  # every kind a member may use is a module
    refused = {
        "patch_size=8 is implemented only for family vit": dict(patch_size=8),
        "scale_embeddings=True is implemented only for family decoder": dict(scale_embeddings=True),
        "activation_checkpointing=True is implemented only": dict(activation_checkpointing=True),
        "n_classes=3 needs head='classify'": dict(n_classes=3),
        "positions is not 't5_relative'": dict(relative_buckets=16),
        "positions='alibi' is not built for family 'encoder'": dict(positions="alibi"),
    }
    for message, fields in refused.items():
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            tiny_config(**fields).validate()
