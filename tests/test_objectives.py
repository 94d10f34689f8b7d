"""The family's objectives and metrics: BERT's 80/10/10 masking (a statistical test), metrics against scikit-learn
and transformers, and small runs of each objective (full-size figures in the slow suite)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import modernlm
from modernlm.cli.__main__ import main
from modernlm.eval import metrics
from modernlm.training.config import TrainConfig
from modernlm.training.objectives import IGNORE, masked_accuracy, mlm_mask, run_objective


def test_mlm_masking_follows_80_10_10():
    V, mask_id = 1000, 999
    ids = torch.randint(0, 998, (400, 500), generator=torch.Generator().manual_seed(0))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True  # [CLS], [SEP]
    inputs, labels = mlm_mask(ids, mask_id, V, special, generator=torch.Generator().manual_seed(1))
    chosen = labels != IGNORE
    n, k = special.numel() - int(special.sum()), int(chosen.sum())

    def near(count: int, trials: int, p: float) -> bool:  # within 5 binomial standard deviations
        return abs(count - trials * p) <= 5 * math.sqrt(trials * p * (1 - p))

    assert not chosen[special].any() and (labels[chosen] == ids[chosen]).all()
    assert (inputs[~chosen] == ids[~chosen]).all()  # unchosen tokens are never touched
    assert near(k, n, 0.15)
    masked = int((inputs[chosen] == mask_id).sum())
    kept = int((inputs[chosen] == ids[chosen]).sum())
    replaced = k - masked - kept
    assert near(masked, k, 0.8)
    assert near(kept, k, 0.1 + 0.1 / V)  # a random token may be the original itself
    assert near(replaced, k, 0.1 * (1 - 1 / V) - 0.1 * 1 / V)  # (and rarely [MASK])


def test_masked_accuracy_reads_chosen_positions_only():
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, 2] = logits[0, 1, 4] = logits[0, 2, 1] = 1
    assert masked_accuracy(logits, torch.tensor([[2, IGNORE, 3]])) == 0.5


def test_classification_metrics_equal_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    refs = [0, 1, 2, 2, 1, 0, 3, 3, 1]
    preds = [0, 2, 2, 2, 1, 1, 3, 0, 1]
    assert metrics.accuracy(preds, refs) == pytest.approx(sklearn.accuracy_score(refs, preds))
    assert metrics.f1(preds, refs) == pytest.approx(sklearn.f1_score(refs, preds, average="macro"))
    assert metrics.confusion_matrix(preds, refs, 4) == sklearn.confusion_matrix(refs, preds).tolist()


def test_generation_metrics():
    preds, refs = ["2020-01-02", "the cat sat on the mat"], ["2020-01-02 ", "the cat is on the mat"]
    assert metrics.exact_match(preds, refs) == 0.5
    assert metrics.chrf(refs, refs) == pytest.approx(100.0)
    assert 0 < metrics.chrf(preds, refs) < 100 and 0 < metrics.bleu(preds, refs) < 100
    scores = metrics.rouge(preds, refs)
    assert scores["rouge1"] == pytest.approx((1 + 5 / 6) / 2)  # unigram F1 of the second pair is 5/6
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.exact_match(preds, refs[:1])


def test_perplexity_equals_transformers(tmp_path):
    import transformers

    torch.manual_seed(0)
    model = modernlm.Transformer(modernlm.preset("llama-tiny")).eval()
    modernlm.save_model(model, tmp_path)
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(2))
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want = math.exp(float(ref(input_ids=ids, labels=ids).loss))
    assert metrics.perplexity(model, ids[0].tolist()) == pytest.approx(want, rel=1e-4)


def small(tmp_path, **fields) -> TrainConfig:
    return TrainConfig(out_dir=str(tmp_path / "run"), log_interval=1000, progress=False, **fields).validate()


def test_image_classification_small_run_classify_and_eval(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from PIL import Image

    cfg = small(tmp_path, max_steps=100, batch_size=32, lr=2e-3, warmup_steps=10, weight_decay=0.05)
    result = run_objective("image-classification", cfg)
    assert result["test_accuracy"] > 0.25  # 100 steps (chance: 0.1); the slow suite trains the full run to >= 97%
    run = tmp_path / "run"
    assert (run / "confusion.png").is_file() and (run / "config.json").is_file()
    assert sum(map(sum, result["confusion_matrix"])) == 360
    capsys.readouterr()
    assert main(["eval", "task", "--model", str(run), "--task", "digits"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(result["test_accuracy"])
    from sklearn.datasets import load_digits

    data = load_digits()
    image = (data.images[0] / 16 * 255).astype("uint8")
    Image.fromarray(image, mode="L").save(tmp_path / "digit.png")
    assert main(["classify", "--model", str(run), str(tmp_path / "digit.png")]) == 0
    assert json.loads(capsys.readouterr().out)["input"].endswith("digit.png")
    with pytest.raises(ValueError, match="needs an encoder-decoder.*this model is a vit"):
        from modernlm.training.evaluate import evaluate_dates

        evaluate_dates(modernlm.load_model(run), None)


def test_seq2seq_small_run(tmp_path, capsys):
    pytest.importorskip("sacrebleu")
    result = run_objective("seq2seq", small(tmp_path, max_steps=30, batch_size=16, lr=2e-3, warmup_steps=5))
    assert result["final_loss"] < 2.5 and 0 <= result["exact_match"] <= 1
    model = modernlm.load_model(tmp_path / "run")
    assert model.config.family == "seq2seq"
    capsys.readouterr()
    assert main(["eval", "task", "--model", str(tmp_path / "run"), "--task", "dates"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"exact_match", "chrf", "bleu"}
    assert main(["generate", "--model", str(tmp_path / "run"), "--prompt", "may 1, 2000", "--max-new-tokens", "3"]) == 0


def test_mlm_small_run(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    cfg = small(tmp_path, data=[str(text)], max_steps=15, batch_size=8, seq_len=32, lr=1e-3, warmup_steps=5,
                vocab_size=300, eval_batches=2, val_fraction=0.1)  # fmt: skip
    result = run_objective("mlm", cfg)
    assert 0 <= result["val_masked_token_accuracy"] <= 1
    model = modernlm.load_model(tmp_path / "run")
    assert model.config.family == "encoder" and model.config.head == "mlm"
    from modernlm.embedding import fill_mask

    (candidates,) = fill_mask(model, modernlm.load_tokenizer(tmp_path / "run"), "the quick [MASK] fox", top_k=3)
    assert len(candidates) == 3 and all(0 <= p <= 1 for _, p in candidates)


@pytest.mark.slow
def test_digits_vit_reaches_97_percent(tmp_path):
    cfg = small(tmp_path, max_steps=1200, batch_size=64, lr=1e-3, warmup_steps=60, weight_decay=0.05)
    assert run_objective("image-classification", cfg)["test_accuracy"] >= 0.97


@pytest.mark.slow
def test_dates_seq2seq_reaches_95_percent_exact_match(tmp_path):
    cfg = small(tmp_path, max_steps=1500, batch_size=64, lr=2e-3, warmup_steps=100)
    result = run_objective("seq2seq", cfg)
    assert result["exact_match"] >= 0.95 and result["chrf"] >= 95


def test_train_cli_runs_an_objective(tmp_path, capsys):
    out = tmp_path / "vit"
    args = ["train", "--objective", "image-classification", "--max-steps", "3", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "test_accuracy=" in capsys.readouterr().out and (out / "metrics.json").is_file()
    with pytest.raises(SystemExit):
        main(["train", "--objective", "nonsense"])
