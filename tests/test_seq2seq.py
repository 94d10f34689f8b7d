"""The encoder-decoder member (T5): logits, loss and greedy generation equal transformers' on random-initialised
T5ForConditionalGeneration (the original ReLU and v1.1's gated GELU); cached generation equals the recomputing twin;
save_model's directories load in transformers."""

from __future__ import annotations

import pytest
import torch
import transformers

import modernlm
from modernlm.seq2seq import Seq2Seq, seq2seq_loss

T5 = dict(
    vocab_size=101, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4, dropout_rate=0.0
)
T5["decoder_start_token_id"] = 0
KINDS = {
    "t5-relu-tied-scaled": dict(feed_forward_proj="relu"),
    "t5v1.1-gated-gelu": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


@pytest.fixture(scope="module")
def hf_t5(hf_reference):
    """hf_t5(directory, **fields) -> a random T5ForConditionalGeneration of T5 + fields, saved in directory."""

    def build(directory, **fields):
        config = transformers.T5Config(**{**T5, **fields})
        return hf_reference(transformers.T5ForConditionalGeneration, config, directory)[0]

    return build


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, T5["vocab_size"], (2, 13), generator=g)
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 9:] = 0
    labels = torch.randint(2, T5["vocab_size"], (2, 7), generator=g)
    labels[1, 5:] = -100
    return ids, mask, labels


@pytest.mark.parametrize("kind", KINDS)
def test_t5_logits_and_loss_equal_transformers(tmp_path, kind, hf_t5):
    ref = hf_t5(tmp_path, **KINDS[kind])
    ours = modernlm.load_model(tmp_path)
    assert isinstance(ours, Seq2Seq) and ours.config.family == "seq2seq"
    ids, mask, labels = batch()
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask, labels=labels)
        decoder_input_ids = ref._shift_right(labels)
        got = ours(ids, decoder_input_ids, attention_mask=mask)
        loss = seq2seq_loss(ours, ids, labels, mask)
    assert got.shape == (2, 7, T5["vocab_size"])
    torch.testing.assert_close(got, out.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(loss, out.loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_generation_equals_transformers_and_the_uncached_twin(tmp_path, kind, hf_t5):
    from modernlm.generation.sampling import SamplingParams
    from modernlm.generation.seq2seq import generate_seq2seq

    ref = hf_t5(tmp_path, **KINDS[kind], num_decoder_layers=2)  # transformers' generate cache assumes equal stacks
    ours = modernlm.load_model(tmp_path)
    ids, mask, _ = batch()
    with torch.no_grad():
        want = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=1)
    got = modernlm.generate(ours, ids, 12, attention_mask=mask, eos_token_id=1)
    for row, ref_row in zip(got, want[:, 1:].tolist(), strict=True):  # transformers' rows start with the start token
        assert row == ref_row[: len(row)] and (len(row) == 12 or row[-1] == 1)
    plain = generate_seq2seq(ours, ids, 12, SamplingParams(0.0), frozenset([1]), mask, use_cache=False)
    assert plain == got


def test_sampling_is_reproducible_and_lists_are_accepted(tmp_path, hf_t5):
    hf_t5(tmp_path, **KINDS["t5-relu-tied-scaled"])
    model = modernlm.load_model(tmp_path)
    a = modernlm.generate(model, [[5, 6, 7], [8, 9]], 6, temperature=1.0, top_k=20, seed=3)
    b = modernlm.generate(model, [[5, 6, 7], [8, 9]], 6, temperature=1.0, top_k=20, seed=3)
    assert a == b and [len(r) for r in a] == [6, 6]
    assert modernlm.generate(model, [8, 9], 4) == modernlm.generate(model, [[8, 9], [5, 6, 7]], 4)[:1]


@pytest.mark.parametrize("kind", KINDS)
def test_save_model_loads_in_transformers(tmp_path, kind, hf_t5):
    ref = hf_t5(tmp_path / "in", **KINDS[kind])
    ours = modernlm.load_model(tmp_path / "in")
    modernlm.save_model(ours, tmp_path / "out")
    again = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    ids, mask, labels = batch()
    with torch.no_grad():
        dec = ref._shift_right(labels)
        torch.testing.assert_close(
            again(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
            ours(ids, dec, mask),
            atol=1e-4,
            rtol=0,
        )


def test_bad_input_is_refused(tmp_path, hf_t5):
    hf_t5(tmp_path, **KINDS["t5-relu-tied-scaled"])
    model = modernlm.load_model(tmp_path)
    with pytest.raises(ValueError, match="needs a target"):
        seq2seq_loss(model, torch.tensor([[5, 6]]), None)
    with pytest.raises(ValueError, match="decoder_input_ids must be an integer tensor"):
        model(torch.tensor([[5, 6]]), torch.tensor([5.0]))
    from modernlm.encoder import Encoder

    bert = Encoder(
        modernlm.ModelConfig(
            family="encoder",
            causal=False,
            vocab_size=50,
            d_model=16,
            n_layers=1,
            n_heads=2,
            positions="learned",
            max_seq_len=16,
        )
    )
    with pytest.raises(ValueError, match="no decoder to write tokens with.*fill-mask"):
        modernlm.generate(bert, [5, 6], 3)
