"""Training: the tokenizer against transformers, the data split and batches against their definitions, the
schedule against its formula, a tiny model overfitting a tiny corpus (below its unigram entropy), exact resume,
checkpoints that survive a crash mid-write, a NaN and a signal, and clear errors for bad inputs."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
from collections import Counter

import numpy as np
import pytest
import torch

import modernlm
from modernlm.training import TrainConfig, TrainingError, load_checkpoint, save_checkpoint, train, train_bpe
from modernlm.training import checkpoint as checkpoint_module
from modernlm.training import trainer as trainer_module
from modernlm.training.corpus import load_corpus, stdlib_root
from modernlm.training.data import tokenize_corpus
from modernlm.training.optim import lr_at, param_groups
from modernlm.training.report import MetricsLog

TEXT = """Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.
Complex is better than complicated. Flat is better than nested. Sparse is better than dense.
Readability counts. Special cases aren't special enough to break the rules. Although practicality beats purity.
Errors should never pass silently. Unless explicitly silenced. In the face of ambiguity, refuse the temptation to
guess. There should be one -- and preferably only one -- obvious way to do it. Now is better than never.
"""
ODD_TEXTS = [
    "naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어, emoji 🙂🚀 and a ZWJ 👩‍💻",
    "\ttabs\r\nand  double  spaces\n\n\x00\x7f control bytes",
    "def f(x):\n    return x ** 2  # comment",
    "",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Token files and tokenizers go to a fresh cache per test; one thread keeps runs reproducible and polite."""
    monkeypatch.setenv("MODERNLM_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "zen.txt"
    path.write_text(TEXT * 2)
    return path


def tiny_config(tmp_path, corpus_file, name="run", **overrides) -> TrainConfig:
    values = dict(
        out_dir=str(tmp_path / name),
        data=[str(corpus_file)],
        val_fraction=0.0,
        vocab_size=300,
        model="llama-tiny",
        model_overrides={"d_model": 32, "n_heads": 2, "n_kv_heads": 1, "max_seq_len": 64},
        seq_len=32,
        batch_size=4,
        max_steps=8,
        warmup_steps=2,
        lr=3e-3,
        eval_interval=0,
        save_interval=2,
        sample_tokens=0,
        progress=False,
    )
    return TrainConfig(**{**values, **overrides})


# ---- tokenizer --------------------------------------------------------------------------------------------------
def test_trained_tokenizer_round_trips_and_loads_in_transformers(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = train_bpe([TEXT * 3, *ODD_TEXTS], vocab_size=320)
    tokenizer.save(tmp_path / "tok")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert auto.eos_token == "<|endoftext|>" and auto.eos_token_id == tokenizer.eos_token_id
    for text in [*ODD_TEXTS, TEXT, "unseen words: zyzzyva quokka 🦘 ∮ E⋅da = Q", "a<|endoftext|>b"]:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert hf.encode(text, add_special_tokens=False) == ids
        assert auto.encode(text, add_special_tokens=False) == ids
    assert tokenizer.encode("<|endoftext|>") == [tokenizer.eos_token_id]
    assert tokenizer.vocab_size <= 320
    assert len(tokenizer.encode(TEXT)) < len(TEXT.encode("utf-8")) / 2  # merges were learned


def test_tokenizer_cli_trains_a_loadable_tokenizer(tmp_path, corpus_file, capsys):
    from modernlm.cli.__main__ import main

    assert main(["tokenizer", "train", "--data", str(corpus_file), "--vocab-size", "300", "--out", str(tmp_path)]) == 0
    tokenizer = modernlm.load_tokenizer(tmp_path)
    assert tokenizer.decode(tokenizer.encode("héllo")) == "héllo"


# ---- data -------------------------------------------------------------------------------------------------------
def test_stdlib_split_is_by_a_hash_of_the_relative_path():
    corpus = load_corpus(["stdlib"], val_fraction=0.02)
    names = {d.name for d in corpus.train} | {d.name for d in corpus.val}
    expected = {n for n in names if int(hashlib.sha256(n.encode()).hexdigest()[:12], 16) / 16**12 < 0.02}
    assert {d.name for d in corpus.val} == expected and 0 < len(expected) < len(names) * 0.05
    assert not {d.name for d in corpus.train} & expected
    assert "os.py" in names and not any("site-packages" in n for n in names)
    assert (stdlib_root() / "os.py").is_file()


def test_batches_are_windows_of_the_token_file_with_shifted_targets(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.txt").write_text(TEXT.upper())
    corpus = load_corpus([str(tmp_path / "*.txt")], val_fraction=0.0)
    tokenizer = train_bpe([TEXT, TEXT.upper()], vocab_size=300)
    data = tokenize_corpus(corpus, tokenizer, val_fraction=0.25)
    ids_a, ids_b = tokenizer.encode(TEXT), tokenizer.encode(TEXT.upper())
    eot = tokenizer.eos_token_id
    assert list(data.tokens) == [eot, *ids_a, eot, *ids_b]  # each document after an end-of-text token
    assert data.n_val == int(len(data.tokens) * 0.25)  # two documents on one side of the split: by tokens
    x, y = data.train_batch(3, batch_size=5, seq_len=16, seed=7)
    assert x.shape == y.shape == (5, 16) and x.dtype == torch.long
    tokens = np.asarray(data.tokens, dtype=np.int64)
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        start = next(s for s in range(data.n_train) if (tokens[s : s + 16] == row_x).all())
        assert (tokens[start + 1 : start + 17] == row_y).all() and start + 17 <= data.n_train
    again, _ = data.train_batch(3, batch_size=5, seq_len=16, seed=7)
    other, _ = data.train_batch(4, batch_size=5, seq_len=16, seed=7)
    assert torch.equal(x, again) and not torch.equal(x, other)
    for vx, _ in data.val_batches(2, 4, 16):
        assert all(any((tokens[s : s + 16] == r).all() for s in range(data.n_train, len(tokens) - 16)) for r in vx)


# ---- optimizer and schedule -------------------------------------------------------------------------------------
def test_schedule_follows_warmup_and_cosine_formulas():
    lr, lo, warm, total = 1e-3, 1e-4, 10, 111  # 100 decay steps after warmup
    assert lr_at(0, lr, lo, warm, total) == pytest.approx(lr / warm)
    assert lr_at(4, lr, lo, warm, total) == pytest.approx(lr * 5 / warm)
    assert lr_at(warm, lr, lo, warm, total) == pytest.approx(lr)
    mid = warm + (total - warm - 1) // 2  # halfway through the decay
    assert lr_at(mid, lr, lo, warm, total) == pytest.approx(lo + 0.5 * (lr - lo) * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(total - 1, lr, lo, warm, total) == pytest.approx(lo)


@pytest.mark.parametrize("tied", [True, False])
def test_weight_decay_only_on_matrices(tied):
    model = modernlm.Transformer(modernlm.preset("llama-tiny", tie_embeddings=tied))
    decay, no_decay = (g["params"] for g in param_groups(model, 0.1))
    assert {id(p) for p in decay} | {id(p) for p in no_decay} == {id(p) for p in model.parameters()}
    assert all(p.dim() == 2 for p in decay) and all(p is not model.embed.weight for p in decay)
    assert model.embed.weight in no_decay and all(p.dim() == 1 for p in no_decay if p is not model.embed.weight)
    assert len(decay) == 7 * model.config.n_layers + (0 if tied else 1)  # q k v o gate up down (+ LM head)
    with_embed, _ = (g["params"] for g in param_groups(model, 0.1, decay_embeddings=True))
    assert any(p is model.embed.weight for p in with_embed)


# ---- training ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: autocast (emulated on CPUs without bf16 units)
def test_tiny_model_overfits_tiny_corpus_below_unigram_entropy(tmp_path, corpus_file, precision):
    config = tiny_config(
        tmp_path,
        corpus_file,
        max_steps=120,
        warmup_steps=10,
        lr=1e-2,
        batch_size=8,
        save_interval=0,
        min_lr=1e-3,
        precision=precision,
    )
    config.model_overrides = {"d_model": 64, "max_seq_len": 64}
    result = train(config)
    tokens = np.asarray(
        tokenize_corpus(load_corpus(config.data, 0.0), modernlm.load_tokenizer(config.out_dir), 0.0).tokens
    )
    counts = np.array(list(Counter(tokens.tolist()).values()), dtype=np.float64)
    p = counts / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())  # nats/token of the best context-free model
    final = sum(result.losses[-10:]) / 10
    assert final < 0.35 * unigram_entropy, (final, unigram_entropy)


def test_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path, corpus_file):
    overrides = {"d_model": 32, "n_heads": 2, "n_kv_heads": 1, "max_seq_len": 64, "dropout": 0.1}  # dropout: RNG
    straight = train(tiny_config(tmp_path, corpus_file, "a", model_overrides=overrides, grad_accum=2))
    config = tiny_config(tmp_path, corpus_file, "b", model_overrides=overrides, grad_accum=2)
    first = train(config, stop_at_step=3)
    assert first.status == "paused" and first.step == 3
    second = train(config, resume=True)
    assert second.status == "done" and len(first.losses) + len(second.losses) == 8
    torch.testing.assert_close(first.losses + second.losses, straight.losses, rtol=1e-6, atol=1e-6)
    metrics = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [m for m in metrics if "tokens" in m][-1]["tokens"] == 8 * 2 * 4 * 32  # steps x accum x batch x seq_len
    weights_a = modernlm.load_model(tmp_path / "a").state_dict()
    for name, value in modernlm.load_model(tmp_path / "b").state_dict().items():
        torch.testing.assert_close(value, weights_a[name], rtol=1e-5, atol=1e-6)


def test_run_directory_loads_for_generation_and_the_cli_trains(tmp_path, corpus_file, capsys):
    from modernlm.cli.__main__ import main

    out = tmp_path / "cli-run"
    argv = ["train", "--out", str(out), "--data", str(corpus_file), "--vocab-size", "300", "--model", "llama-tiny"]
    argv += ["--max-steps", "4", "--seq-len", "32", "--batch-size", "4", "--sample-tokens", "8", "--no-progress"]
    assert main(argv + ["--model-override", "d_model=32", "--model-override", "max_seq_len=64"]) == 0
    assert "---- sample ----" in capsys.readouterr().out
    for name in ("metrics.jsonl", "loss.png", "tokenizer.json", "train_config.json", "samples.txt"):
        assert (out / name).is_file(), name
    model, tokenizer = modernlm.load_model(out), modernlm.load_tokenizer(out)
    assert model.config.d_model == 32 and model.config.vocab_size == tokenizer.vocab_size
    assert main(["generate", "--model", str(out), "--prompt", "Beautiful", "-n", "5", "-q"]) == 0
    assert main(argv) == 2 and "--resume" in capsys.readouterr().err  # the run exists: no silent overwrite


# ---- checkpoints that survive -----------------------------------------------------------------------------------
@pytest.mark.parametrize("crash_in", ["_write_optimizer", "_write_text_atomic"])
def test_killed_write_leaves_the_previous_checkpoint_loadable(tmp_path, corpus_file, monkeypatch, crash_in):
    config = tiny_config(tmp_path, corpus_file, max_steps=4)
    train(config)
    weights, _, state = load_checkpoint(config.out_dir)
    model = modernlm.load_model(config.out_dir)
    model.embed.weight.data += 1.0  # a different model, half-saved below
    optimizer = torch.optim.AdamW(model.parameters())

    def crash(*args, **kwargs):
        (tmp_path / "run" / "checkpoints" / "partial-file").write_bytes(b"\0" * 10)
        raise OSError("simulated crash in the middle of a save")

    original = getattr(checkpoint_module, crash_in)
    monkeypatch.setattr(checkpoint_module, crash_in, crash)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(config.out_dir, model, optimizer, {"step": 6})
    monkeypatch.setattr(checkpoint_module, crash_in, original)
    again, _, state_again = load_checkpoint(config.out_dir)
    assert state_again["step"] == state["step"] == 4
    for name, value in weights.items():
        torch.testing.assert_close(again[name], value, rtol=0, atol=0)
        torch.testing.assert_close(modernlm.load_model(config.out_dir).state_dict()[name], value, rtol=0, atol=0)
    resumed = train(tiny_config(tmp_path, corpus_file, max_steps=4), resume=True)  # loads and has nothing left to do
    assert resumed.step == 4


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, corpus_file, monkeypatch):
    real, calls = trainer_module.next_token_loss, []

    def poisoned(logits, targets):
        calls.append(1)
        loss = real(logits, targets)
        return loss * float("nan") if len(calls) == 6 else loss

    monkeypatch.setattr(trainer_module, "next_token_loss", poisoned)
    config = tiny_config(tmp_path, corpus_file, max_steps=10)
    with pytest.raises(TrainingError, match=r"loss is nan at step 6.*last good checkpoint \(step 4\)"):
        train(config)
    _, _, state = load_checkpoint(config.out_dir)
    assert state["step"] == 4
    assert modernlm.load_model(config.out_dir)(torch.tensor([[1, 2, 3]])).isfinite().all()


def test_sigterm_saves_and_stops_then_resume_finishes(tmp_path, corpus_file, monkeypatch):
    real, calls = trainer_module.next_token_loss, []

    def signalled(logits, targets):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGTERM)
        return real(logits, targets)

    monkeypatch.setattr(trainer_module, "next_token_loss", signalled)
    config = tiny_config(tmp_path, corpus_file, save_interval=0)
    result = train(config)
    assert result.status == "interrupted" and result.step == 3
    assert load_checkpoint(config.out_dir)[2]["step"] == 3
    assert train(config, resume=True).step == 8
    steps = [r["step"] for r in MetricsLog(tmp_path / "run" / "metrics.jsonl", 8).read() if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 8


# ---- clear errors -----------------------------------------------------------------------------------------------
def test_clear_errors_for_bad_inputs(tmp_path, corpus_file):
    with pytest.raises(FileNotFoundError, match="no such file, directory or glob"):
        train(tiny_config(tmp_path, corpus_file, data=[str(tmp_path / "missing.txt")]))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        train(tiny_config(tmp_path, corpus_file, data=[str(tmp_path / "*.nothing")]))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        train(tiny_config(tmp_path, corpus_file, data=[str(tmp_path / "empty.txt")]))
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(ValueError, match="holds no documents"):
        train(tiny_config(tmp_path, corpus_file, data=[str(tmp_path / "empty-dir")]))
    with pytest.raises(ValueError, match="longer than the model's max_seq_len 64"):
        train(tiny_config(tmp_path, corpus_file, seq_len=65, data=["stdlib"]))  # raised before any data work
    (tmp_path / "short.txt").write_text("hello world")
    with pytest.raises(ValueError, match="fewer than seq_len"):
        train(tiny_config(tmp_path, corpus_file, data=[str(tmp_path / "short.txt")]))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tiny_config(tmp_path, corpus_file, name="never-ran"), resume=True)
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(tiny_config(tmp_path, corpus_file, precision="fp16"))
    assert not (tmp_path / "cache" / "tokens").exists() or not any((tmp_path / "cache" / "tokens").glob(".*tmp*"))


def test_resume_refuses_changed_settings(tmp_path, corpus_file):
    train(tiny_config(tmp_path, corpus_file, max_steps=2))
    with pytest.raises(ValueError, match="different lr"):
        train(tiny_config(tmp_path, corpus_file, max_steps=2, lr=1.0), resume=True)
    config = TrainConfig.from_json(tmp_path / "run" / "train_config.json")
    assert config == tiny_config(tmp_path, corpus_file, max_steps=2)


def test_cli_flags_override_the_config_file(tmp_path, capsys):
    import json

    from modernlm.cli.__main__ import main

    TrainConfig(max_steps=7, lr=1e-3, data=["a.txt"]).to_json(tmp_path / "c.json")
    argv = ["train", "--config", str(tmp_path / "c.json"), "--max-steps", "9", "--model-override", "norm=layernorm"]
    assert main(argv + ["--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["max_steps"], printed["lr"], printed["data"]) == (9, 1e-3, ["a.txt"])
    assert printed["model_overrides"] == {"norm": "layernorm"}
    assert main(["train", "--config", str(tmp_path / "missing.json")]) == 2
    assert "no training config" in capsys.readouterr().err


# ---- hardening: paths, damaged checkpoints, finished runs, leftovers ---------------------------------------------
def test_resume_accepts_the_same_run_by_another_path(tmp_path, corpus_file, monkeypatch):
    train(tiny_config(tmp_path, corpus_file, max_steps=2))
    monkeypatch.chdir(tmp_path)
    relative = tiny_config(tmp_path, corpus_file, max_steps=4, out_dir="run")
    with pytest.raises(ValueError, match="different max_steps.*--extend"):
        train(relative, resume=True)
    (tmp_path / "run").rename(tmp_path / "moved")
    moved = tiny_config(tmp_path, corpus_file, max_steps=2, out_dir=str(tmp_path / "moved"))
    assert train(moved, resume=True).status == "finished"


def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, corpus_file, caplog):
    config = tiny_config(tmp_path, corpus_file, max_steps=4)
    straight = train(tiny_config(tmp_path, corpus_file, "straight", max_steps=4))
    train(config)
    newest = tmp_path / "run" / "checkpoints" / "step-0000004"
    (newest / "optimizer.safetensors").write_bytes(b"\x00" * 12)  # a disk error
    with caplog.at_level("WARNING", logger="modernlm"):
        _, _, state = load_checkpoint(config.out_dir)
    assert state["step"] == 2 and "resuming from the older complete one, step-0000002" in caplog.text
    import shutil

    shutil.rmtree(newest)
    (tmp_path / "run" / "checkpoints" / "latest").unlink()  # and `latest` lost too
    again = train(config, resume=True)  # resumes from step 2 and trains steps 3 and 4 again
    assert again.step == 4 and again.losses == straight.losses[2:]


def test_a_finished_run_is_not_sampled_again_and_extends_on_request(tmp_path, corpus_file, caplog):
    from modernlm.training.optim import lr_at

    config = tiny_config(tmp_path, corpus_file, max_steps=4, sample_tokens=4, sample_prompts=["Beautiful"])
    train(config)
    samples = (tmp_path / "run" / "samples.txt").stat().st_mtime_ns
    again = train(config, resume=True)
    assert again.status == "finished" and again.losses == [] and again.samples == []
    assert (tmp_path / "run" / "samples.txt").stat().st_mtime_ns == samples
    longer = tiny_config(tmp_path, corpus_file, max_steps=6, sample_tokens=4, sample_prompts=["Beautiful"])
    with pytest.raises(ValueError, match="different max_steps"):
        train(longer, resume=True)
    with caplog.at_level("WARNING", logger="modernlm"):
        extended = train(longer, resume=True, extend=True)
    assert extended.status == "done" and extended.step == 6 and len(extended.losses) == 2
    before, after = lr_at(4, 3e-3, 2e-4, 2, 4), lr_at(4, 3e-3, 2e-4, 2, 6)
    assert f"from {before:.3g} to {after:.3g}" in caplog.text and "from 4 to 6 steps" in caplog.text
    with pytest.raises(ValueError, match="--extend needs a new --max-steps above the saved 6"):
        train(longer, resume=True, extend=True)


def test_a_clean_run_leaves_no_temporary_files_and_stale_ones_are_removed(tmp_path, corpus_file):
    import os

    dead = 2**22 + 12345  # a process id that is not running
    stale = tmp_path / "run" / "checkpoints" / f".step-0000002.tmp-{dead}-0123abcd"
    stale.mkdir(parents=True)
    (tmp_path / "run" / f".tokenizer.json.tmp-{dead}-89abcdef").write_text("half")
    live = tmp_path / "run" / f".other.tmp-{os.getpid()}-00000000"  # a live writer's: kept
    live.write_text("in progress")
    train(tiny_config(tmp_path, corpus_file, max_steps=4))
    left = [p.name for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert left == [live.name]


def test_tokenizer_cli_reports_the_vocabulary_it_built(tmp_path, corpus_file, capsys):
    from modernlm.cli.__main__ import main

    assert (
        main(["tokenizer", "train", "--data", str(corpus_file), "--vocab-size", "5000", "--out", str(tmp_path / "t")])
        == 0
    )
    out = capsys.readouterr().out
    built = modernlm.load_tokenizer(tmp_path / "t").vocab_size
    assert f"({built} ids; 5000 were asked for" in out and built < 5000


def test_a_warmup_longer_than_the_run_is_warned_about(tmp_path, corpus_file, caplog):
    with caplog.at_level(logging.WARNING, logger="modernlm"):
        train(tiny_config(tmp_path, corpus_file, "short", max_steps=3, warmup_steps=10))
    said = [r.getMessage() for r in caplog.records if "warmup_steps 10 is longer than the run's 3" in r.getMessage()]
    assert len(said) == 1 and "lower --warmup-steps" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modernlm"):
        train(tiny_config(tmp_path, corpus_file, "fine", max_steps=3, warmup_steps=2))
    assert not [r for r in caplog.records if "warmup_steps" in r.getMessage()]
