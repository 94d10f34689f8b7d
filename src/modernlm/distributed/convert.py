"""A distributed run directory converted to the ordinary single-file one: the latest DCP checkpoint read in this
process alone (DCP reshards any number of saved shards into one), written as checkpoint.py writes, beside a copy of
the run's tokenizer, metrics and figures and its config with `parallel` "none". `modernlm train --resume --out NEW`
then continues the run on one process with the losses it would have had."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..checkpoints.native import CONFIG_NAME
from ..config import ModelConfig
from ..files import clean_stale, copy_file
from ..model import Transformer
from ..training.checkpoint import latest_step, save_checkpoint
from ..training.optim import build_optimizer
from ..training.parallel import is_distributed_checkpoint
from ..training.setup import TRAIN_CONFIG_NAME, read_saved_config
from .checkpoint import latest_dir, load_distributed


def to_single_file(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the ordinary run directory `out_dir` from the distributed run `run_dir` (a `modernlm train` run);
    returns `out_dir`. The source is left as it is."""
    run_dir, out = Path(run_dir), Path(out_dir)
    config = read_saved_config(run_dir)
    if not is_distributed_checkpoint(run_dir):
        raise ValueError(f"the latest checkpoint of {run_dir} is already single-file: resume or load it as it is")
    if out.resolve() == run_dir.resolve() or latest_step(out) is not None:
        raise ValueError(f"{out} is the run itself or holds a run already: give a new directory")
    directory = latest_dir(run_dir)
    if not (directory / CONFIG_NAME).is_file():
        raise ValueError(f"{directory} has no {CONFIG_NAME}: only `modernlm train` runs can be converted")
    model = Transformer(ModelConfig.from_json(directory / CONFIG_NAME).validate())
    c = config
    optimizer = build_optimizer(model, c.lr, c.weight_decay, c.betas, c.eps, c.decay_embeddings)
    state = load_distributed(directory, model, optimizer, trainable_only=False)  # also this process's RNGs: rank 0's
    state.pop("world_size", None)
    state.pop("rng", None)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale(out, recursive=True)
    for path in run_dir.iterdir():
        if path.is_file() and not path.name.startswith(".") and path.name != TRAIN_CONFIG_NAME:
            copy_file(path, out / path.name)
    plain = dataclasses.replace(config, out_dir=str(out), parallel="none", cpu_offload=False)
    plain.to_json(out / TRAIN_CONFIG_NAME)
    save_checkpoint(out, model, optimizer, state, keep=config.keep_checkpoints)
    return out
