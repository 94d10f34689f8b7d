"""`modernlm eval context`: the passkey harness finds a key a model can see and scores chance where it cannot; the
chunked prefill equals one forward pass; bad input is refused before any work."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import modernlm
from conftest import save_tiny_chat_model
from modernlm.analysis.kv_cache import kv_cache_bytes
from modernlm.cli.__main__ import main
from modernlm.config import ModelConfig
from modernlm.eval import long_context as lc
from modernlm.layers.kv_cache import RollingKVCache

V = 128


class CharTokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) % V for c in text]


class WordTokenizer:
    def encode(self, text: str) -> list[int]:
        return [sum(map(ord, w)) % V for w in text.split()]


class CopyingModel(nn.Module):
    """An oracle that sees the last `sight` tokens: at each position it predicts the token that followed the latest
    earlier occurrence of the longest suffix (up to 24 tokens) of the sequence so far, as an induction head does."""

    def __init__(self, sight: int = 10**9) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=V, d_model=8, n_layers=1, n_heads=1, max_seq_len=4096)
        self.weight = nn.Parameter(torch.zeros(1))
        self.sight = sight

    def forward(self, input_ids, input_pos=None, cache=None, **_):
        assert int(input_pos[0]) == 0, "the oracle reads the whole sequence in one chunk"
        ids = input_ids[0].tolist()
        logits = torch.zeros(1, len(ids), V)
        for t in range(len(ids)):
            best, token = 0, 0
            for j in range(max(0, t - self.sight), t):
                n = 0
                while n < 24 and j - n >= 0 and ids[j - n] == ids[t - n] and t - n > j:
                    n += 1
                if n >= best and n > 0:
                    best, token = n, ids[j + 1]
            logits[0, t, token] = 1.0
        return logits


def test_passkey_found_where_the_model_can_see_it_and_chance_elsewhere():
    tok, depths = CharTokenizer(), [0.0, 0.5, 1.0]
    seeing = lc.passkey(CopyingModel(), tok, [300], depths, trials=2, chunk=4096)
    assert seeing.accuracy == [[1.0, 1.0, 1.0]]
    near = lc.passkey(CopyingModel(sight=90), tok, [300], depths, trials=2, chunk=4096)  # sees the end only
    assert near.accuracy == [[0.0, 0.0, 1.0]]
    torch.manual_seed(0)
    blind = modernlm.Transformer(ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, max_seq_len=512))
    assert lc.passkey(blind, tok, [250, 500], depths, trials=2, chunk=64).accuracy == [[0.0] * 3] * 2  # chance: ~0
    with pytest.raises(lc.LongContextError, match="a passkey prompt needs at least"):
        lc.passkey(blind, tok, [100], depths)


def test_passkey_prompt_has_the_length_and_the_needle_at_its_depth():
    tok = CharTokenizer()
    for depth in (0.0, 0.3, 1.0):
        prompt, answer = lc.passkey_prompt(tok, 500, depth, "12345")
        assert len(prompt) + len(answer) == 500
        text = "".join(chr(i) for i in prompt)
        where = text.index("The pass key is 12345")
        room = 500 - len(lc.INTRO) - len(lc.NEEDLE.format(key="12345")) - len(lc.QUESTION) - 6
        assert where == len(lc.INTRO) + round(depth * room)


@pytest.fixture(scope="module")
def model64(tiny_decoder):
    """A tiny decoder with a 64-token context."""
    return tiny_decoder(vocab_size=V, d_model=32, max_seq_len=64)


def test_chunked_prefill_equals_one_forward_pass(model64):
    ids = torch.randint(0, V, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    lc.apply_scaling(model64, "yarn", 4.0)
    try:
        with torch.no_grad():
            whole = torch.log_softmax(model64(torch.tensor([ids[:-1]]))[0], -1)
        want = whole.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        torch.testing.assert_close(lc.chunked_logprobs(model64, ids[:-1], ids[1:], chunk=48), want, atol=1e-5, rtol=0)
        result = lc.position_perplexity(model64, ids, 128, buckets=4, windows=2, chunk=48)
        assert result.bucket == 32 and len(result.perplexity) == 4
    finally:
        model64.config = ModelConfig.from_dict({**model64.config.to_dict(), "rope_scaling": None, "max_seq_len": 64})
        model64.reset_rope()


def test_kv_cache_report_beside_the_formula(tmp_path):
    model = modernlm.Transformer(ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=256))
    rows = lc.kv_cache_report(model, [64, 256])
    assert [r["measured"] for r in rows] == [r["formula"] for r in rows] == [2 * 2 * 4 * 8 * n * 4 for n in (64, 256)]
    windowed = modernlm.Transformer(
        ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=256, sliding_window=32)
    )
    rows = lc.kv_cache_report(windowed, [16, 256])
    assert [r["measured"] for r in rows] == [r["formula"] for r in rows] == [2 * 2 * 4 * 8 * n * 4 for n in (16, 32)]
    assert rows[1]["without_window"] == 2 * 2 * 4 * 8 * 256 * 4
    mixed = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_seq_len=256, sliding_window=32,
                        layer_types=["full_attention", "sliding_attention"])  # fmt: skip
    cache = RollingKVCache(mixed, 1, 256, torch.float32)
    assert cache.nbytes() == kv_cache_bytes(mixed, 256, rolling=True) == 2 * (256 + 32) * 4 * 8 * 4


@pytest.mark.parametrize(
    "kind, factor, fields, message",
    [
        ("magic", 2.0, {}, "unknown scaling 'magic'"),
        ("longrope", 2.0, {}, "per-frequency factors are searched"),
        ("yarn", 1.0, {}, "needs --factor > 1"),
        ("none", 0.5, {}, "--factor must be >= 1"),
        ("yarn", 2.0, dict(positions="alibi"), "positions are 'alibi'"),
        ("none", 2.0, dict(positions="learned"), "learned position table ends at 64"),
        ("linear", 2.0, dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "already has rope_scaling"),
    ],
)
def test_bad_scaling_requests_are_refused(kind, factor, fields, message):
    model = modernlm.Transformer(ModelConfig(**{**dict(vocab_size=V, d_model=16, n_layers=1, n_heads=2), **fields,
                                                "max_seq_len": 64}))  # fmt: skip
    with pytest.raises(lc.LongContextError, match=message):
        lc.apply_scaling(model, kind, factor)


def test_passkey_beyond_the_context_or_memory_is_refused_before_starting(model64, monkeypatch):
    with pytest.raises(lc.LongContextError, match=r"passkey lengths \[128\] exceed the model's context 64"):
        lc.passkey(model64, CharTokenizer(), [32, 128], [0.5])
    monkeypatch.setattr(lc, "available_bytes", lambda device: 1000)
    with pytest.raises(lc.LongContextError, match="passkey at 64 tokens needs about .* GiB is available"):
        lc.passkey(model64, WordTokenizer(), [64], [0.5])


def test_cli_writes_curves_heat_maps_and_kv_bytes(tmp_path, capsys, tiny_chat_dir):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    text += "".join(f"line {i} of the text.\n" for i in range(300))
    model = tiny_chat_dir(text, max_seq_len=160)
    (tmp_path / "long.txt").write_text(text)
    args = ["eval", "context", "--model", str(model), "--scaling", "dynamic,none", "--factor", "2"]
    args += ["--depths", "0,1", "--trials", "1", "--buckets", "4", "--text", str(tmp_path / "long.txt")]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["lengths"] == [160, 320] and set(result["scalings"]) == {"dynamic", "none"}
    assert result["scalings"]["dynamic"]["rope_scaling"]["original_max_position_embeddings"] == 160
    assert len(result["scalings"]["none"]["passkey"]["accuracy"]) == 2
    assert (tmp_path / "out" / "perplexity.png").is_file() and (tmp_path / "out" / "passkey.png").is_file()
    assert "KV cache @ 320" in capsys.readouterr().out
    assert main([*args[:4], "--scaling", "yarn", "--factor", "1"]) == 2
    assert "needs --factor > 1" in capsys.readouterr().err
    assert main([*args[:4], "--factor", "2", "--lengths", "64,512"]) == 2
    assert "--lengths must lie in [2, factor" in capsys.readouterr().err


def test_a_trained_run_is_measured_from_its_training_length(tmp_path, capsys):
    """A run trained on 80-token sequences with max_seq_len 160: its "1x" is 80 (train_config.json's seq_len), not
    160; a model that records no training length takes max_seq_len, and says so."""
    from modernlm.training.config import TrainConfig

    text = "the quick brown fox jumps over the lazy dog. " * 40
    text += "".join(f"line {i} of the text.\n" for i in range(300))
    model = save_tiny_chat_model(tmp_path / "m", text, max_seq_len=160)
    (tmp_path / "long.txt").write_text(text)
    args = ["eval", "context", "--model", str(model), "--scaling", "dynamic", "--factor", "2", "--skip", "passkey"]
    args += ["--buckets", "4", "--text", str(tmp_path / "long.txt"), "--json"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["lengths"] == [160, 320] and "records no training length" in err
    TrainConfig(seq_len=80).to_json(model / "train_config.json")
    assert main(args) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["trained_length"] == 80 and result["lengths"] == [80, 160]
    assert result["scalings"]["dynamic"]["rope_scaling"]["original_max_position_embeddings"] == 80
    assert "trained on 80-token sequences" in err
