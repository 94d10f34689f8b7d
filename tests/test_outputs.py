"""`output_attentions` / `output_hidden_states` in transformers' conventions: every member's attention probabilities
and hidden states equal transformers' (eager attention) on random-initialised Llama, Qwen2, BERT, ModernBERT, T5 and
ViT configurations and on the embedded SmolLM2; with the KV cache a step's attention is the full recompute's last row;
quantized models give their dequantized twin's; and without the flags nothing changes: the same logits tensor, and
SDPA is the path taken (no probabilities formed)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import modernlm
from modernlm.layers import attention
from modernlm.layers.kv_cache import KVCache
from modernlm.model import ModelOutput
from modernlm.quant import dequantize_model, quantize
from modernlm.seq2seq import Seq2SeqOutput
from test_encoder import bert_config, inputs
from test_hf import BASE, make_hf_model  # noqa: F401  (make_hf_model is a fixture)
from test_modernbert import batch as modernbert_batch
from test_modernbert import modernbert_config
from test_seq2seq import KINDS, hf_t5  # noqa: F401  (hf_t5 is a fixture)
from test_seq2seq import batch as t5_batch
from test_vit import vit_config

TOL = dict(atol=1e-5, rtol=0)


def assert_tuples_close(got, want, rows=None, **tol):
    """Each pair of tensors close; `rows` (B, T) bool keeps only real query positions (padding rows are unread)."""
    assert got is not None and want is not None and len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.shape == w.shape, f"#{i}: {tuple(g.shape)} != {tuple(w.shape)}"
        if rows is not None:  # (B, H, T, S) -> (n, H, S); (B, T, D) -> (n, D)
            g, w = (g.transpose(1, 2), w.transpose(1, 2)) if g.dim() == 4 else (g, w)
            g, w = g[rows], w[rows]
        torch.testing.assert_close(g, w, msg=f"#{i}", **(tol or TOL))


def both(model, *args, **kwargs):
    with torch.no_grad():
        return model(*args, **kwargs, output_attentions=True, output_hidden_states=True)


# ---- decoders -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llama2-mha-untied", "smollm2-gqa-tied-theta", "qwen2-biases-tied", "mistral-gqa"])
def test_decoder_attentions_and_hidden_states_equal_transformers(tmp_path, name, make_hf_model):  # noqa: F811
    ref = make_hf_model(name, tmp_path)  # eager attention
    ours = modernlm.load_model(tmp_path)
    ids = torch.randint(0, BASE["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    want, got = both(ref, input_ids=ids), both(ours, ids)
    assert isinstance(got, ModelOutput) and len(got.attentions) == ours.config.n_layers
    assert got.attentions[0].shape == (2, ours.config.n_heads, 24, 24)
    assert len(got.hidden_states) == ours.config.n_layers + 1
    assert got.hidden_states[0].shape == (2, 24, ours.config.d_model)
    assert_tuples_close(got.attentions, want.attentions)
    assert_tuples_close(got.hidden_states, want.hidden_states, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=0)


def test_smollm2_attentions_and_hidden_states_equal_transformers(smollm2_gguf, hf_smollm2_tokenizer):
    """Both load the embedded GGUF (fp32, dequantized); the differences are RoPE's (float64 frequencies, test_gguf)."""
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ours = modernlm.load_model(smollm2_gguf)
    ids = torch.tensor([hf_smollm2_tokenizer.encode("The cat sat on the mat. The cat", add_special_tokens=False)])
    want, got = both(ref, input_ids=ids), both(ours, ids)
    assert len(got.attentions) == 30 and got.attentions[0].shape == (1, 9, ids.shape[1], ids.shape[1])
    assert_tuples_close(got.attentions, want.attentions, atol=2e-5, rtol=0)
    assert_tuples_close(got.hidden_states[:-1], want.hidden_states[:-1], atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(got.hidden_states[-1], want.hidden_states[-1], atol=2e-4, rtol=1e-4)


def test_one_cached_step_attends_as_the_full_recompute_last_row():
    torch.manual_seed(0)
    model = modernlm.Transformer(modernlm.preset("llama-tiny", n_heads=4, n_kv_heads=2)).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    cache = KVCache(model.config, 2, 16, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        model(ids[:, :8], input_pos=torch.arange(8), cache=cache)
        step = model(ids[:, 8:], input_pos=torch.tensor([8]), cache=cache, output_attentions=True)
        full = model(ids, output_attentions=True)
    for layer, (one, every) in enumerate(zip(step.attentions, full.attentions, strict=True)):
        assert one.shape == (2, 4, 1, 16)  # every cache slot; the empty ones get exactly zero
        torch.testing.assert_close(one[:, :, 0, :9], every[:, :, -1], **TOL, msg=f"layer {layer}")
        assert (one[:, :, 0, 9:] == 0).all()
    torch.testing.assert_close(step.logits[:, -1], full.logits[:, -1], **TOL)


# ---- encoders, T5, ViT --------------------------------------------------------------------------------------------
def test_bert_attentions_and_hidden_states_equal_transformers(tmp_path, hf_reference):
    ref, _ = hf_reference(transformers.BertForMaskedLM, bert_config(), tmp_path)
    ref.set_attn_implementation("eager")
    ours = modernlm.load_model(tmp_path)
    ids, types, mask = inputs()
    want = both(ref, input_ids=ids, token_type_ids=types, attention_mask=mask)
    got = both(ours, ids, mask, types)
    real = mask.bool()
    assert_tuples_close(got.attentions, want.attentions, real)
    assert_tuples_close(got.hidden_states, want.hidden_states, real)
    torch.testing.assert_close(got.logits[real], want.logits[real], atol=1e-4, rtol=0)


def test_modernbert_attentions_and_hidden_states_equal_transformers(tmp_path, hf_reference):
    """Local layers (a window narrower than the input) and the final norm on the last hidden state."""
    ref, _ = hf_reference(transformers.ModernBertModel, modernbert_config(), tmp_path, attn="sdpa")
    ref.set_attn_implementation("eager")
    ours = modernlm.load_model(tmp_path)
    ids, mask = modernbert_batch()
    want, got = both(ref, input_ids=ids, attention_mask=mask), both(ours, ids, mask)
    real = mask.bool()
    assert len(got.attentions) == 4 and (got.attentions[1][0, :, 0, 5:] == 0).all()  # local: 4 neighbours a side
    assert_tuples_close(got.attentions, want.attentions, real)
    assert_tuples_close(got.hidden_states, want.hidden_states, real)


@pytest.mark.parametrize("kind", KINDS)
def test_t5_self_and_cross_attentions_and_hidden_states_equal_transformers(tmp_path, kind, hf_t5):  # noqa: F811
    ref = hf_t5(tmp_path, **KINDS[kind])
    ref.set_attn_implementation("eager")
    ours = modernlm.load_model(tmp_path)
    ids, mask, labels = t5_batch()
    decoder_ids = ref._shift_right(labels)
    want = both(ref, input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids)
    got = both(ours, ids, decoder_ids, mask)
    assert isinstance(got, Seq2SeqOutput) and got.cross_attentions[0].shape == (2, 4, 7, 13)
    real = mask.bool()
    assert_tuples_close(got.encoder_attentions, want.encoder_attentions, real)
    assert_tuples_close(got.encoder_hidden_states, want.encoder_hidden_states, real)
    assert_tuples_close(got.decoder_attentions, want.decoder_attentions)
    assert_tuples_close(got.cross_attentions, want.cross_attentions)
    assert_tuples_close(got.decoder_hidden_states, want.decoder_hidden_states)
    torch.testing.assert_close(got.encoder_last_hidden_state[real], want.encoder_last_hidden_state[real], **TOL)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=0)


def test_vit_attentions_and_hidden_states_equal_transformers(tmp_path, hf_reference):
    ref, _ = hf_reference(transformers.ViTForImageClassification, vit_config(), tmp_path)
    ref.set_attn_implementation("eager")
    ours = modernlm.load_model(tmp_path)
    images = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    want, got = both(ref, pixel_values=images), both(ours, images)
    assert got.attentions[0].shape == (3, 4, 10, 10)  # 9 patches and the class token
    assert_tuples_close(got.attentions, want.attentions)
    assert_tuples_close(got.hidden_states, want.hidden_states)  # before the final norm, as transformers'
    torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=0)


# ---- quantized models ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_model_attends_as_its_dequantized_twin(monkeypatch, kind):
    monkeypatch.setenv("MODERNLM_QUANT_KERNEL", "torch")
    monkeypatch.setenv("MODERNLM_QUANT_ACT", "float32")  # the fused kernels on float32 activations, as the twin
    torch.manual_seed(0)
    cfg = modernlm.preset("llama-tiny", d_model=128, n_heads=4, n_kv_heads=2, ffn_hidden=384, init_std=0.08)
    model = quantize(modernlm.Transformer(cfg).eval(), kind)
    twin = dequantize_model(copy.deepcopy(model))
    ids = torch.randint(0, cfg.vocab_size, (1, 20))
    got, want = both(model, ids), both(twin, ids)
    with torch.no_grad():
        torch.testing.assert_close(got.logits, model(ids), **TOL)  # the same model, asked or not
    assert_tuples_close(got.attentions, want.attentions)
    assert_tuples_close(got.hidden_states, want.hidden_states, atol=1e-4, rtol=0)


# ---- off by default -----------------------------------------------------------------------------------------------
def test_without_the_flags_the_logits_tensor_comes_back_through_sdpa(monkeypatch):
    """The default path forms no probabilities: the explicit softmax is never called, SDPA once per layer; asking
    changes no output."""
    torch.manual_seed(0)
    model = modernlm.Transformer(modernlm.preset("llama-tiny")).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        asked = model(ids, output_attentions=True, output_hidden_states=True)
        calls = []
        sdpa = torch.nn.functional.scaled_dot_product_attention
        counted = lambda *a, **k: calls.append(1) or sdpa(*a, **k)  # noqa: E731
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
        unasked = lambda *a, **k: pytest.fail("probabilities formed unasked")  # noqa: E731
        monkeypatch.setattr(attention, "explicit_attention", unasked)
        plain = model(ids)
    assert type(plain) is torch.Tensor and len(calls) == model.config.n_layers
    assert all(not block.attn.probs for block in model.blocks)  # nothing left recording
    torch.testing.assert_close(asked.logits, plain, **TOL)
    for a in asked.attentions:  # probabilities: rows of 1, exactly 0 above the diagonal
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), **TOL)
        assert (a.triu(1) == 0).all()


def test_recording_is_per_thread():
    """A server's engine thread running the same model while a request handler records stays on SDPA."""
    import threading

    from modernlm.layers.attention import recording

    torch.manual_seed(0)
    model = modernlm.Transformer(modernlm.preset("llama-tiny")).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 10))
    go = threading.Event()

    def other():
        go.wait()
        with torch.no_grad():
            model(ids)

    thread = threading.Thread(target=other)
    thread.start()
    with torch.no_grad(), recording([block.attn for block in model.blocks]) as logs:
        go.set()
        thread.join()
        assert [len(log) for log in logs] == [0, 0]  # the other thread's forward recorded nothing
        model(ids)
    assert [len(log) for log in logs] == [1, 1] and all(not block.attn.probs for block in model.blocks)
