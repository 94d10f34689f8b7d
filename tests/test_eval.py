"""Perplexity against transformers' own loss on the same tokens, the windows' bookkeeping, and the CLI verb."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

import modernlm
from modernlm.eval import heldout_text, perplexity


@pytest.fixture(scope="module")
def pair(tmp_path_factory, hf_reference):
    config = transformers.LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    hf, path = hf_reference(transformers.LlamaForCausalLM, config, tmp_path_factory.mktemp("ppl"))
    return hf, modernlm.load_model(path)


IDS = torch.randint(0, 320, (100,), generator=torch.Generator().manual_seed(1)).tolist()


def test_one_window_equals_transformers_loss(pair):
    hf, ours = pair
    with torch.no_grad():
        loss = hf(torch.tensor([IDS]), labels=torch.tensor([IDS])).loss
    got = perplexity(ours, IDS, window=128)
    assert got.tokens == 99
    assert got.perplexity == pytest.approx(math.exp(float(loss)), rel=1e-5)


@pytest.mark.parametrize("window,stride", [(16, 16), (16, 8), (33, 1), (100, 7)])
def test_windows_score_every_token_once(pair, window, stride):
    got = perplexity(pair[1], IDS, window=window, stride=stride)
    assert got.tokens == 99
    full = perplexity(pair[1], IDS, window=128)
    assert abs(math.log(got.perplexity) - math.log(full.perplexity)) < 0.5  # less context, similar figure


def test_bad_windows(pair):
    with pytest.raises(ValueError, match="stride must be an integer in \\[1, window=8\\], got 9"):
        perplexity(pair[1], IDS, window=8, stride=9)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(pair[1], [1])


def test_heldout_text_ships():
    text = heldout_text()
    assert 800 < len(text.split()) < 1200 and "ferry" in text


def test_cli_perplexity_on_smollm2(capsys):
    from modernlm.cli.__main__ import main

    assert main(["eval", "perplexity", "--quantize", "gguf", "--window", "256", "--json"]) == 0
    out = capsys.readouterr().out
    import json

    result = json.loads(out)
    assert result["tokens"] > 900 and 2 < result["perplexity"] < 60


def test_one_perplexity_definition_for_the_verb_and_the_benchmark(tmp_path, capsys):
    """`modernlm eval perplexity` and benchmarks/quantize.py compute `text_perplexity` (BOS first, window 512, stride
    256, the text's tokens counted), so the figures in docs/compress.md are what the command prints."""
    import json
    from pathlib import Path

    import modernlm
    from conftest import save_tiny_chat_model
    from modernlm.cli.__main__ import main
    from modernlm.eval.perplexity import STRIDE, WINDOW, text_ids, text_perplexity

    tiny = save_tiny_chat_model(tmp_path / "m", heldout_text(), max_seq_len=64)
    assert main(["eval", "perplexity", "--model", str(tiny), "--window", "32", "--stride", "16", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    model, tok = modernlm.load(tiny)
    want = text_perplexity(model, tok, window=32, stride=16)
    assert (got["perplexity"], got["tokens"]) == (want.perplexity, want.tokens)
    ids = text_ids(tok, heldout_text())
    assert want == perplexity(model, ids, window=32, stride=16) and want.tokens == len(ids) - 1
    bench = (Path(__file__).parents[1] / "benchmarks" / "quantize.py").read_text()
    assert "text_perplexity(model, tokenizer, window=s[\"window\"], stride=s[\"window\"] // 2" in bench
    assert "window=512" in bench and (WINDOW, STRIDE) == (512, 256)
