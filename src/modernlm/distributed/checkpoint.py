"""Distributed checkpoints: torch.distributed.checkpoint (DCP) for the model and the optimizer, each process writing
its own shards; resumable on any number of processes (DCP reshards on load), and convertible to the ordinary
single-file run directory.

A distributed checkpoint directory (beside the ordinary ones, under checkpoints/, named the same):
    step-0000100/.metadata, __0_0.distcp, __1_0.distcp ...   DCP: model and optimizer state, keyed by parameter name
    step-0000100/rng-0.safetensors, rng-1...                 each process's RNG states
    step-0000100/state.json                                  the run state (step, data position, ...), rank 0's
    step-0000100/model.safetensors, modernlm_config.json     the full weights, gathered to rank 0 (training runs)
Only tensors go into DCP's files (the optimizer's hyperparameters go to state.json), and DCP's `.metadata`, which
torch writes with pickle, is read back by an unpickler that builds only DCP's own metadata classes, torch.Size and
dtypes: a checkpoint directory from elsewhere cannot run code (modernlm loads no pickles). The processes write into
one staging directory (rank 0 names it, the others are told the name), rank 0 renames it
into place after every process has finished, then points `latest` at it: a kill at any moment leaves the previous
checkpoint the latest complete one.
"""

from __future__ import annotations

import json
import logging
import os
import pickle  # only for DCP's metadata, through an unpickler that builds nothing but its metadata classes
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from ..checkpoints.native import save_native
from ..files import atomic_path, write_json, write_text
from ..training.checkpoint import (
    CHECKPOINTS,
    LATEST,
    STATE_NAME,
    CheckpointError,
    _prune,
    _python_rng,
    checkpoint_dirs,
    publish_latest,
    read_checkpoint,
    restore_rng,
)
from .setup import all_agree, broadcast_text

log = logging.getLogger("modernlm")


def _options(trainable_only: bool, full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # ignore_frozen_params: a LoRA run keeps only its adapters (and their optimizer states), as on one process
    return StateDictOptions(full_state_dict=full, ignore_frozen_params=trainable_only, strict=not trainable_only)


def save_distributed(trainer, state: dict, plain) -> Path:
    """Every process writes its shards of `trainer`'s model and optimizer at step `state["step"]`; rank 0 adds the
    run state (and, for runs that publish weights, the full weights from `plain()`, a collective), commits and
    prunes. Returns the checkpoint directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = Path(trainer.run_dir) / CHECKPOINTS
    final = root / f"step-{int(state['step']):07d}"
    device, main = trainer.parallel.ctx.device, dist.get_rank() == 0
    weights = plain() if trainer.inputs.publish_weights else None  # every process: FSDP gathers to rank 0
    with atomic_path(final) if main else _elsewhere() as tmp:
        staging = Path(broadcast_text(str(tmp) if main else "", device))
        trainable_only = trainer.inputs.save_trainable_only
        model_state, optim_state = get_state_dict(trainer.model, trainer.optimizer, options=_options(trainable_only))
        try:
            dcp.save({"model": model_state, "optim": {"state": optim_state["state"]}}, checkpoint_id=staging)
        except CheckpointException as e:  # raised on every process: the staging directory is removed
            raise CheckpointError(f"checkpoint {final.name} could not be written: {_first_failure(e)}") from None
        error = None
        try:
            save_file(_rng_tensors(), staging / f"rng-{dist.get_rank()}.safetensors")
        except OSError as e:  # told to every process below, so none waits for it
            error = e
        if not all_agree(error is None, device):  # every process has written its files
            raise error or CheckpointError(
                f"another process could not write its part of checkpoint {final.name} (its message says why); "
                "the previous checkpoint stays the latest"
            )
        if main:
            groups = _plain(optim_state["param_groups"])  # hyperparameters, and parameter names in place of tensors
            meta = {**state, "world_size": dist.get_world_size(), "param_groups": groups, "rng": _python_rng()}
            write_json(staging / STATE_NAME, meta, indent=1)
            if weights is not None:
                save_native(weights, staging)
    if main:
        write_text(root / LATEST, final.name + "\n")
        if weights is not None:
            publish_latest(trainer.run_dir)
        _prune(root, trainer.cfg.keep_checkpoints)
    dist.barrier()  # committed on every process's return: none goes on (or stops) before rank 0 has renamed it
    return final


def _first_failure(error: CheckpointException) -> str:
    """The first process's error of a DCP failure, in one line."""
    failures = getattr(error, "failures", None) or {}
    for rank, failure in sorted(failures.items()):
        inner = getattr(failure, "exc", failure)
        return f"rank {rank}: {type(inner).__name__}: {str(inner).strip().splitlines()[0][:200] if str(inner) else ''}"
    return str(error).splitlines()[0][:200]


class _elsewhere:
    """The staging directory of a process other than rank 0: rank 0 creates, commits and cleans it."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    return tensors


def _plain(groups: list[dict]) -> list[dict]:
    return [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in groups]


def latest_dir(run_dir: str | os.PathLike) -> Path:
    candidates = checkpoint_dirs(Path(run_dir) / CHECKPOINTS)
    if not candidates:
        raise CheckpointError(f"no checkpoint to resume in {run_dir}; start without --resume")
    return candidates[0]


def load_distributed(directory: Path, model, optimizer, trainable_only: bool) -> dict:
    """Load a DCP checkpoint into `model` and `optimizer` (plain, DDP or FSDP, on any number of processes, or none:
    DCP then reads in this process alone); restore this rank's RNGs; return the run state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    options = _options(trainable_only)
    state = json.loads((directory / STATE_NAME).read_text())
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    target = {"model": model_state, "optim": {"state": optim_state["state"]}}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is, without a group
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        try:
            dcp.load(target, storage_reader=SafeReader(directory), planner=TensorsOnlyPlanner())
        except CheckpointException as e:  # a BaseException in torch: one clear error instead (on every process)
            raise CheckpointError(f"{directory} cannot be read: {_first_failure(e)}") from None
    optim = {"state": target["optim"]["state"], "param_groups": state["param_groups"]}
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=optim, options=options)
    _restore_rng(directory, state)
    state.pop("param_groups", None)
    return state


# DCP's metadata classes, and what their pickle names of torch and pathlib (found by unpickling a saved .metadata)
_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
}  # fmt: skip


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP's metadata and nothing else: any other class or function named in the file is refused."""

    def find_class(self, module: str, name: str):
        if name in _METADATA_CLASSES.get(module, ()) or (module == "torch" and name == "Size"):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout)):
            return getattr(torch, name)
        raise CheckpointError(f"the checkpoint metadata names {module}.{name}, which is not DCP metadata: refused")


class SafeReader(FileSystemReader):
    """torch's DCP file reader, with the metadata read by `_MetadataUnpickler` instead of pickle.load."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        rank = kwargs.get("rank")
        path = Path(self.path) / (".metadata" if rank is None else f"__{rank}.metadata")
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as e:
            raise CheckpointError(f"{path} is damaged: {type(e).__name__}: {e}") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path} is not DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class TensorsOnlyPlanner(DefaultLoadPlanner):
    """DCP's planner, refusing the pickled (non-tensor) values torch would otherwise load with weights_only=False."""

    def load_bytes(self, read_item, value) -> None:
        raise CheckpointError(f"the checkpoint holds a pickled value ({read_item.dest_index.fqn}): refused")


def _restore_rng(directory: Path, state: dict) -> None:
    rank = dist.get_rank() if dist.is_initialized() else 0
    path = directory / f"rng-{rank}.safetensors"
    if not path.is_file():  # more processes than the run was saved with: a new process starts from the seed's state
        log.info("no RNG state for rank %d in %s (saved by %s processes)", rank, directory, state.get("world_size"))
        return
    restore_rng({"rng_tensors": load_file(path), "rng": state["rng"]})  # the single-file checkpoint's own restore
    if state.get("world_size") not in (None, dist.get_world_size() if dist.is_initialized() else 1):
        log.info("resuming a run saved by %s processes on a different number: dropout masks differ from a straight "
                 "run's (losses match without dropout)", state["world_size"])  # fmt: skip


def load_single_file(directory: Path, model, optimizer, trainable_only: bool) -> dict:
    """Load an ordinary (single-file) checkpoint directory into a DDP or FSDP model and its optimizer, every process
    reading the full tensors and keeping its shard (set_state_dict with full state dicts)."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    from .wrap import unwrap

    weights, optimizer_state, state = read_checkpoint(directory)
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {order[int(i)]: values for i, values in optimizer_state["state"].items()},
        "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in optimizer_state["param_groups"]],
    }
    options = _options(trainable_only, full=True)
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=by_name, options=options)
    restore_rng(state)
    return state
