"""Resumable run state, written so that a crash at any moment leaves the latest complete checkpoint loadable.

A run directory:
    checkpoints/step-0000100/   model.safetensors + modernlm_config.json (the weights), optimizer.safetensors (AdamW
                                moments and RNG states), state.json (step, data position, param groups, ...)
    checkpoints/latest          the name of the newest complete checkpoint; replacing this file commits a save
    model.safetensors, modernlm_config.json   the latest weights, which `modernlm.load_model(run_dir)` reads
A checkpoint is written under a temporary name and renamed into place (os.replace) before `latest` names it, so a
half-written checkpoint is never the latest one. Only safetensors and JSON are read back: no pickles.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..checkpoints.native import CONFIG_NAME, WEIGHTS_NAME, save_native
from ..files import atomic_path, clean_stale, copy_file, write_json, write_text

log = logging.getLogger("modernlm")
CHECKPOINTS = "checkpoints"
LATEST = "latest"
OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "state.json"


class CheckpointError(ValueError):
    """No usable checkpoint where one was asked for; the message says where it looked."""


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    keep: int = 2,
    *,
    publish: bool = True,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint of step `state["step"]` atomically, make it the latest, publish its weights at the run
    directory's root (unless not `publish`), and delete all but the newest `keep` checkpoints. `weights`: the
    tensors to store instead of the whole state dict (e.g. only LoRA adapters; never published). Returns the
    checkpoint directory."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{int(state['step']):07d}"
    if _latest_name(root) == final.name and final.is_dir():
        return final  # this step is already saved (an interrupt right after a scheduled save)
    with atomic_path(final) as tmp:  # replaces a stale copy of this step that `latest` does not name
        if weights is None:
            save_native(model, tmp)
        else:
            tmp.mkdir(parents=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / WEIGHTS_NAME)
            publish = False  # a partial state dict is no model to load
        _write_optimizer(tmp, optimizer)
        _write_json(tmp / STATE_NAME, {**state, "param_groups": _param_groups(optimizer), "rng": _python_rng()})
    _write_text_atomic(root / LATEST, final.name + "\n")
    if publish:
        publish_latest(run_dir)
    _prune(root, keep)
    return final


def publish_latest(run_dir: str | os.PathLike) -> None:
    """Copy the latest checkpoint's weights and config to the run directory's root, where `load_model` reads them
    (each file atomically; a kill between the two is repaired by the next call, which a resumed run makes)."""
    root = Path(run_dir) / CHECKPOINTS
    name = _latest_name(root)
    if name is not None:
        for file in (CONFIG_NAME, WEIGHTS_NAME):
            copy_file(root / name / file, Path(run_dir) / file)


def load_checkpoint(run_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, dict[str, Any]]:
    """(model state dict, optimizer state dict, run state) of the latest readable checkpoint of `run_dir`. When the
    newest one is missing or damaged (a disk error, a hand edit), the next older complete one is taken, with a
    notice that says what was wrong and which step the run goes back to."""
    root = Path(run_dir) / CHECKPOINTS
    problems = []
    for directory in checkpoint_dirs(root):
        try:
            loaded = read_checkpoint(directory)
        except (OSError, ValueError, KeyError, SafetensorError) as e:  # JSONDecodeError is a ValueError
            problems.append(f"{directory.name}: {type(e).__name__}: {e}")
            continue
        if problems:
            log.warning(
                "the newest checkpoint of %s cannot be read (%s); resuming from the older complete one, %s",
                run_dir, "; ".join(problems), directory.name,
            )  # fmt: skip
        return loaded
    found = f": {'; '.join(problems)}" if problems else f" (looked in {root})"
    raise CheckpointError(f"no readable checkpoint to resume in {run_dir}{found}; start without resume")


def read_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, Any]]:
    """(model state dict, optimizer state dict, run state) of one checkpoint directory; raises if it is damaged."""
    state = json.loads((directory / STATE_NAME).read_text())
    tensors = load_file(directory / OPTIMIZER_NAME)
    weights = load_file(directory / WEIGHTS_NAME)
    groups = state.pop("param_groups")
    return weights, _optimizer_state(tensors, groups), state | {"rng_tensors": _rng(tensors)}


def checkpoint_dirs(root: Path) -> list[Path]:
    """Checkpoint directories, the one `latest` names first, then the others newest first."""
    steps = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
    latest = _latest_name(root)
    return sorted(steps, key=lambda p: p.name != latest)


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states a checkpoint saved (torch CPU and CUDA, Python's `random`)."""
    tensors = state["rng_tensors"]
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = state["rng"]
    random.setstate((version, tuple(internal), gauss))


def latest_step(run_dir: str | os.PathLike) -> int | None:
    """The step of the latest checkpoint, or None when there is none."""
    candidates = checkpoint_dirs(Path(run_dir) / CHECKPOINTS)
    return int(candidates[0].name.split("-")[1]) if candidates else None


# ---- the optimizer and the RNGs as tensors + JSON -----------------------------------------------------------------
def _write_optimizer(directory: Path, optimizer: torch.optim.Optimizer) -> None:
    tensors = {}
    for index, values in optimizer.state_dict()["state"].items():
        for key, value in values.items():
            tensors[f"state.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_file(tensors, directory / OPTIMIZER_NAME)


def _optimizer_state(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": param_groups}


def _rng(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name[4:]: value for name, value in tensors.items() if name.startswith("rng.")}


def _param_groups(optimizer: torch.optim.Optimizer) -> list[dict]:
    return [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
        for g in optimizer.state_dict()["param_groups"]
    ]


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


# ---- files --------------------------------------------------------------------------------------------------------
def _latest_name(root: Path) -> str | None:
    path = root / LATEST
    if not path.is_file():
        return None
    name = path.read_text().strip()
    return name if (root / name).is_dir() else None


def _write_json(path: Path, data: dict) -> None:
    write_json(path, data, indent=1)


def _write_text_atomic(path: Path, text: str) -> None:
    write_text(path, text)


def _prune(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and temporary directories of interrupted saves."""
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    latest = _latest_name(root)
    for old in steps[:-keep]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)
    clean_stale(root)  # staging directories of saves that were killed (a live writer's are kept)
    for tmp in root.glob(".tmp-*"):  # the naming of older versions; no save is in progress here
        shutil.rmtree(tmp, ignore_errors=True)
