"""The family's training objectives beside next-token prediction (`modernlm train --objective ...`):

- mlm: BERT's masked language modelling on the run's corpus (the default: the Python standard library). 15% of the
  tokens are chosen; of those 80% become [MASK], 10% a random token, 10% stay; the loss and the masked-token accuracy
  are taken on the chosen ones only.
- seq2seq: an encoder-decoder taught by teacher forcing to write dates spelled out in words ("march 5, 1999",
  "5 mar 1999") in ISO form ("1999-03-05"), generated here; evaluated by exact match and chrF (sacrebleu).
- image-classification: a ViT on scikit-learn's bundled 8x8 digits (1797 images; 360 held out), test accuracy and a
  confusion-matrix plot.

Each run writes a Hugging Face directory (`save_model`: config.json + model.safetensors, with tokenizer.json for
text) plus `metrics.json`, so `modernlm eval`, `classify`, `generate` and `transformers` all read it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..files import write_json

OBJECTIVES = ("lm", "mlm", "seq2seq", "image-classification")
IGNORE = -100  # label of positions left out of a loss

# The model each objective trains by default (TrainConfig.model names a decoder preset; model_overrides apply here).
MODELS = {
    "mlm": dict(
        family="encoder", head="mlm", d_model=128, n_layers=4, n_heads=4, ffn="gelu_erf", ffn_hidden=512,
        norm="layernorm", norm_eps=1e-12, norm_placement="post", positions="learned", type_vocab_size=2,
        embed_norm=True, causal=False, qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=True,
    ),
    "seq2seq": dict(
        family="seq2seq", d_model=128, n_layers=2, n_decoder_layers=2, n_heads=4, head_dim=32, ffn="relu",
        ffn_hidden=256, norm="rmsnorm", norm_eps=1e-6, positions="t5_relative", attn_scale=1.0, max_seq_len=64,
    ),
    "image-classification": dict(
        family="vit", head="classify", n_classes=10, vocab_size=1, d_model=64, n_layers=4, n_heads=4,
        ffn="gelu_erf", ffn_hidden=128, norm="layernorm", norm_eps=1e-12, positions="learned", causal=False,
        qkv_bias=True, out_bias=True, mlp_bias=True, image_size=8, patch_size=2, n_channels=1, max_seq_len=17,
    ),
}  # fmt: skip


# ---- masking -----------------------------------------------------------------------------------------------------
def mlm_mask(
    ids: torch.Tensor,  # (B, T) token ids
    mask_id: int,
    vocab_size: int,
    special: torch.Tensor | None = None,  # bool (B, T): never chosen (padding, [CLS], [SEP])
    p: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # inputs (B, T), labels (B, T) with IGNORE where not chosen
    """BERT's masking: each token is chosen with probability p; a chosen token becomes [MASK] (80%), a random token
    (10%) or stays itself (10%). Labels hold the original id at the chosen positions only."""
    u = torch.rand(ids.shape, generator=generator, device=ids.device)
    chosen = u < p
    if special is not None:
        chosen &= ~special
    what = torch.rand(ids.shape, generator=generator, device=ids.device)  # which of the three, for chosen tokens
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator, device=ids.device)
    inputs = torch.where(chosen & (what < 0.8), mask_id, ids)
    inputs = torch.where(chosen & (what >= 0.8) & (what < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, ids, IGNORE)


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of chosen positions (label != IGNORE) whose most likely token is the original."""
    chosen = labels != IGNORE
    return float((logits.argmax(-1)[chosen] == labels[chosen]).float().mean()) if chosen.any() else float("nan")


# ---- the loop ----------------------------------------------------------------------------------------------------
def fit(model, loss_fn: Callable[[int], torch.Tensor], steps: int, lr: float, warmup: int, weight_decay: float,
        log: Callable[[int, float], None] | None = None) -> list[float]:  # fmt: skip
    """AdamW with linear warmup and cosine decay to 0; `loss_fn(step)` draws its own batch. Returns the losses."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    losses = []
    model.train()
    for step in range(steps):
        scale = (step + 1) / max(warmup, 1) if step < warmup else 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * min(scale, 1.0)
        loss = loss_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None:
            log(step, losses[-1])
    return losses


def build_model(objective: str, overrides: dict, vocab_size: int | None = None):
    from ..loading import model_class

    fields = {**MODELS[objective], **({"vocab_size": vocab_size} if vocab_size else {}), **overrides}
    config = ModelConfig(**fields).validate()
    return model_class(config)(config)


# ---- image classification ----------------------------------------------------------------------------------------
def digits(seed: int = 0) -> dict[str, torch.Tensor]:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) float images standardised with the training mean and std; 360
    held out as the test set (a fixed permutation)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None]  # (N, 1, 8, 8), values 0..16
    labels = torch.tensor(data.target)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    test, train = order[:360], order[360:]
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    return dict(x_train=images[train], y_train=labels[train], x_test=images[test], y_test=labels[test],
                mean=mean, std=std)  # fmt: skip


def train_image_classification(config, log=None) -> dict:
    """Train a ViT on the digits; returns the metrics (test accuracy, confusion matrix) and writes the run."""
    torch.manual_seed(config.seed)
    data = digits()
    model = build_model("image-classification", config.model_overrides)
    g = torch.Generator().manual_seed(config.seed)

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, len(data["y_train"]), (config.batch_size,), generator=g)
        return F.cross_entropy(model(data["x_train"][idx]), data["y_train"][idx])

    losses = fit(model, loss_fn, config.max_steps, config.lr, config.warmup_steps, config.weight_decay, log)
    model.eval()
    with torch.no_grad():
        predicted = model(data["x_test"]).argmax(-1)
    from ..eval.metrics import accuracy, confusion_matrix, f1

    metrics = {
        "objective": "image-classification",
        "steps": config.max_steps,
        "final_loss": losses[-1],
        "test_accuracy": accuracy(predicted.tolist(), data["y_test"].tolist()),
        "test_macro_f1": f1(predicted.tolist(), data["y_test"].tolist()),
        "confusion_matrix": confusion_matrix(predicted.tolist(), data["y_test"].tolist(), 10),
        "normalisation": {"mean": float(data["mean"]), "std": float(data["std"])},
    }
    _save_run(model, config.out_dir, metrics, None)
    _plot_confusion(metrics["confusion_matrix"], Path(config.out_dir) / "confusion.png")
    return metrics


def _plot_confusion(matrix: list[list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_path

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", xticks=range(len(matrix)), yticks=range(len(matrix)))
    ax.set_title("digits: test confusion matrix")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def _save_run(model, out_dir, metrics: dict, tokenizer) -> Path:
    from ..loading import save_model

    out = Path(out_dir)
    save_model(model, out, tokenizer)
    write_json(out / "metrics.json", metrics)
    return out


# ---- seq2seq: dates ------------------------------------------------------------------------------------------------
MONTHS = "january february march april may june july august september october november december".split()
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 ,-/"
SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2: T5's pad (also the decoder start), end, unknown


def char_tokenizer():
    """A character-level tokenizer (a BPE model with no merges): ids 0-2 special, then one id per character."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models

    from ..tokenizer import Tokenizer

    vocab = {t: i for i, t in enumerate([*SPECIALS, *CHARS])}
    backend = Backend(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(list(SPECIALS))
    backend.decoder = decoders.Fuse()  # characters join with nothing between them
    return Tokenizer(backend, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", source="dates")


def date_pair(rng: random.Random) -> tuple[str, str]:
    """A date written one of four ways in words and numbers, and its ISO form."""
    year, month, day = rng.randint(1900, 2099), rng.randint(1, 12), rng.randint(1, 28)
    name = MONTHS[month - 1]
    spelled = rng.choice(
        [f"{name} {day}, {year}", f"{day} {name} {year}", f"{name[:3]} {day} {year}", f"{day} {name[:3]}, {year}"]
    )
    return spelled, f"{year:04d}-{month:02d}-{day:02d}"


def date_examples(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [date_pair(rng) for _ in range(n)]


def encode_batch(tokenizer, texts: list[str], eos: bool, pad: int) -> torch.Tensor:  # (B, T), right-padded
    rows = [tokenizer.encode(t) + ([tokenizer.eos_token_id] if eos else []) for t in texts]
    out = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
    for b, row in enumerate(rows):
        out[b, : len(row)] = torch.tensor(row)
    return out


def seq2seq_predictions(model, tokenizer, sources: list[str], max_new_tokens: int = 16) -> list[str]:
    from ..generation.generate import generate

    ids = encode_batch(tokenizer, sources, eos=True, pad=0)
    mask = (ids != 0).long()
    eos = tokenizer.eos_token_id
    outs = generate(model, ids, max_new_tokens, temperature=0.0, attention_mask=mask, eos_token_id=eos)
    return [tokenizer.decode([t for t in row if t != tokenizer.eos_token_id]) for row in outs]


def train_seq2seq(config, log=None) -> dict:
    """Teach a T5-shaped model the dates task by teacher forcing; exact match and chrF on 200 held-out dates."""
    from ..eval.metrics import chrf, exact_match
    from ..seq2seq import seq2seq_loss

    torch.manual_seed(config.seed)
    tokenizer = char_tokenizer()
    model = build_model("seq2seq", config.model_overrides, tokenizer.vocab_size)
    test = date_examples(200, seed=config.seed + 1)
    rng = random.Random(config.seed)

    def loss_fn(step: int) -> torch.Tensor:
        batch = [date_pair(rng) for _ in range(config.batch_size)]
        src = encode_batch(tokenizer, [s for s, _ in batch], eos=True, pad=0)
        labels = encode_batch(tokenizer, [t for _, t in batch], eos=True, pad=IGNORE)
        return seq2seq_loss(model, src, labels, (src != 0).long())

    losses = fit(model, loss_fn, config.max_steps, config.lr, config.warmup_steps, config.weight_decay, log)
    model.eval()
    predicted = seq2seq_predictions(model, tokenizer, [s for s, _ in test])
    references = [t for _, t in test]
    metrics = {
        "objective": "seq2seq",
        "steps": config.max_steps,
        "final_loss": losses[-1],
        "exact_match": exact_match(predicted, references),
        "chrf": chrf(predicted, references),
        "examples": [
            {"input": s, "target": t, "output": p} for (s, t), p in list(zip(test, predicted, strict=True))[:5]
        ],
    }
    _save_run(model, config.out_dir, metrics, tokenizer)
    return metrics


# ---- mlm -----------------------------------------------------------------------------------------------------------
def train_mlm(config, log=None) -> dict:
    """Masked-LM pretraining of a small BERT on the run's corpus (a byte-level BPE trained on it, plus [MASK])."""
    from .corpus import load_corpus
    from .data import corpus_tokenizer, tokenize_corpus

    torch.manual_seed(config.seed)
    corpus = load_corpus(config.data, config.val_fraction)
    tokenizer = corpus_tokenizer(corpus, config.vocab_size, config.tokenizer_sample_mb)
    tokenizer.backend.add_special_tokens(["[MASK]"])
    mask_id = tokenizer.token_to_id("[MASK]")
    data = tokenize_corpus(corpus, tokenizer, config.val_fraction)
    vocab = tokenizer.backend.get_vocab_size()
    model = build_model("mlm", {"max_seq_len": max(config.seq_len, 16), **config.model_overrides}, vocab)
    g = torch.Generator().manual_seed(config.seed)

    def loss_fn(step: int) -> torch.Tensor:
        ids, _ = data.train_batch(step, config.batch_size, config.seq_len, config.seed)
        inputs, labels = mlm_mask(ids, mask_id, vocab, generator=g)
        logits = model(inputs)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)

    losses = fit(model, loss_fn, config.max_steps, config.lr, config.warmup_steps, config.weight_decay, log)
    model.eval()
    val_g = torch.Generator().manual_seed(0)
    accuracies, val_losses = [], []
    with torch.no_grad():
        for ids, _ in data.val_batches(config.eval_batches, config.batch_size, config.seq_len):
            inputs, labels = mlm_mask(ids, mask_id, vocab, generator=val_g)
            logits = model(inputs)
            accuracies.append(masked_accuracy(logits, labels))
            val_losses.append(float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)))
    metrics = {
        "objective": "mlm",
        "steps": config.max_steps,
        "final_loss": losses[-1],
        "val_masked_loss": sum(val_losses) / max(len(val_losses), 1),
        "val_masked_token_accuracy": sum(accuracies) / max(len(accuracies), 1),
        "mask_token_id": mask_id,
    }
    _save_run(model, config.out_dir, metrics, tokenizer)
    return metrics


TRAINERS = {"mlm": train_mlm, "seq2seq": train_seq2seq, "image-classification": train_image_classification}


def run_objective(objective: str, config, progress: bool | None = None) -> dict:
    """Train `config` (a TrainConfig: out_dir, data, max_steps, batch_size, seq_len, lr, warmup_steps,
    weight_decay, seed, model_overrides) with one of the family's objectives."""
    progress = config.progress if progress is None else progress
    if objective not in TRAINERS:
        raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")

    def log(step: int, loss: float) -> None:
        if progress and (step % max(config.log_interval, 1) == 0 or step == config.max_steps - 1):
            print(f"step {step:5d}  loss {loss:.4f}", flush=True)

    return TRAINERS[objective](config, log)
