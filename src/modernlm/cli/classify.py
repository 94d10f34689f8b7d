"""`modernlm classify --model RUN image.png ...`: the label of each image (a ViT) or text (an encoder classifier)."""

from __future__ import annotations

import json
from pathlib import Path

from ..loading import load_tokenizer
from .common import load_for


def add_parser(sub) -> None:
    p = sub.add_parser("classify", help="label images with a ViT run, or texts with an encoder classifier")
    p.add_argument("inputs", nargs="+", help="image files (PNG, JPEG) for a ViT; texts for an encoder")
    p.add_argument("--model", required=True, help="a ViT or BERT-classifier directory (e.g. runs/digits-vit)")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    model, _ = load_for(args, tokenizer=False)  # a ViT run has no tokenizer
    cfg = model.config
    if cfg.head != "classify":
        raise ValueError(
            f"{args.model} is a {cfg.family} with a {cfg.head!r} head, not a classifier; give a ViT run "
            "(modernlm train --objective image-classification) or a BertForSequenceClassification dir"
        )
    if cfg.family == "vit":
        batch = torch.stack([load_image(Path(p), cfg, Path(args.model)) for p in args.inputs])
    else:
        from ..embedding import batch_encode

        batch, mask = batch_encode(load_tokenizer(model.source), args.inputs, cfg.max_seq_len)
    with torch.no_grad():
        probs = (model(batch) if cfg.family == "vit" else model(batch, mask)).softmax(-1)
    for name, row in zip(args.inputs, probs, strict=True):
        print(json.dumps({"input": name, "label": int(row.argmax()), "probability": round(float(row.max()), 4)}))
    return 0


def load_image(path: Path, cfg, run_dir: Path):
    """An image as the model's input: converted to its channels, resized to its size, scaled as in training (a run's
    metrics.json records the digits' mean and std; 8x8 digits are 0-16 ink levels, so 255 -> 16)."""
    import numpy as np
    import torch
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    image = Image.open(path).convert("L" if cfg.n_channels == 1 else "RGB")
    image = image.resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
    x = torch.tensor(np.asarray(image, dtype=np.float32))
    x = x[None] if cfg.n_channels == 1 else x.permute(2, 0, 1)  # (C, H, W)
    metrics = run_dir / "metrics.json"
    norm = json.loads(metrics.read_text()).get("normalisation") if metrics.is_file() else None
    if norm:  # the digits run: ink 0-16, trained standardised
        return (x / 255.0 * 16.0 - norm["mean"]) / norm["std"]
    return (x / 255.0 - 0.5) / 0.5  # ViT's usual preprocessing
