"""The trainer's hooks (training/parallel.py) for DDP and FSDP under torch.distributed.

The global batch is `batch_size` rows per micro-batch, `grad_accum` micro-batches per step, as on one process: each
process takes its contiguous `batch_size / world_size` rows of every micro-batch (batch `i` is a pure function of
the seed and i, so the shards stay resumable). Each process's loss is weighted by its share of the micro-batch's
target tokens, so that the average DDP and FSDP take over processes is the loss of the whole micro-batch: the same
losses and updates as one process at the same global batch, up to the order of float sums.
"""

from __future__ import annotations

import logging
import threading
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError

from ..training.checkpoint import CHECKPOINTS, CheckpointError, checkpoint_dirs
from ..training.parallel import DCP_METADATA, Parallel
from .checkpoint import latest_dir, load_distributed, load_single_file, save_distributed
from .setup import Context
from .wrap import plain_from_state, skeleton, unwrap, wrap_model

log = logging.getLogger("modernlm")


def check_batch(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        raise ValueError(
            f"batch_size {batch_size} does not split over {world_size} processes: it is the global batch (each "
            f"process runs batch_size / {world_size} rows); give a multiple of {world_size}, e.g. "
            f"{max(batch_size // world_size, 1) * world_size}"
        )


class DistributedParallel(Parallel):
    def __init__(self, ctx: Context, mode: str, precision: str, cpu_offload: bool) -> None:
        self.ctx, self.mode, self.precision, self.cpu_offload = ctx, mode, precision, cpu_offload
        self.rank, self.world_size, self.device = ctx.rank, ctx.world_size, ctx.device
        self._shell = None  # FSDP: the plain model's skeleton on rank 0, filled with gathered weights on demand
        self._saved_step = None  # the step of the checkpoint last saved or restored, the same on every process

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.mode == "fsdp" and self.is_main:
            self._shell = skeleton(model)
        return wrap_model(model, self.mode, self.ctx.device, self.precision, self.cpu_offload)

    def train_batch(self, data, index: int, batch_size: int, seq_len: int, seed: int):
        x, y = data.train_batch(index, batch_size, seq_len, seed)  # the global micro-batch, (B, T) each
        rows = batch_size // self.world_size
        mine = slice(self.rank * rows, (self.rank + 1) * rows)
        count_all, count_mine = int((y != -100).sum()), int((y[mine] != -100).sum())
        # no target anywhere: every process's mean is NaN, as one process's would be (the trainer stops)
        weight = self.world_size * count_mine / count_all if count_all else 1.0
        return x[mine], y[mine], weight

    def sync(self, model: torch.nn.Module, last: bool):
        if self.mode == "ddp":
            return nullcontext() if last else model.no_sync()  # accumulate locally, all-reduce on the last
        model.set_requires_gradient_sync(last)  # FSDP: reduce-scatter on the last micro-batch only
        return nullcontext()

    def step_loss(self, total: torch.Tensor, interrupted: threading.Event) -> float:
        both = torch.stack([total.detach().float(), torch.tensor(float(interrupted.is_set()), device=total.device)])
        dist.all_reduce(both)  # (loss sum, number of processes asked to stop)
        if float(both[1]) > 0:
            interrupted.set()  # every process stops after this step, so none waits for the others
        return float(both[0]) / self.world_size

    def grad_norm(self, norm: torch.Tensor) -> float:
        full = getattr(norm, "full_tensor", None)  # FSDP: a DTensor (already reduced over the shards)
        return float(full() if full is not None else norm)

    def save(self, trainer, state: dict, weights: dict | None):
        # decided from memory, never from files another process may be writing: every process skips or saves
        if state["step"] == self._saved_step:  # already saved (an interrupt right after a scheduled save)
            return latest_dir(trainer.run_dir)
        self._saved_step = state["step"]
        return save_distributed(trainer, state, lambda: self.plain_model(trainer.model))

    def restore(self, trainer) -> dict:
        """The latest readable checkpoint, distributed or single-file; a damaged newest one falls back to the older
        complete one with a notice, as on one process (every process reads the same files: the same outcome)."""
        problems = []
        for directory in checkpoint_dirs(Path(trainer.run_dir) / CHECKPOINTS):
            load = load_distributed if (directory / DCP_METADATA).is_file() else load_single_file
            try:
                state = load(directory, trainer.model, trainer.optimizer, trainer.inputs.save_trainable_only)
            except (OSError, ValueError, KeyError, SafetensorError) as e:  # CheckpointError is a ValueError
                problems.append(f"{directory.name}: {type(e).__name__}: {e}")
                continue
            if problems and self.is_main:
                log.warning("the newest checkpoint of %s cannot be read (%s); resuming from the older complete "
                            "one, %s", trainer.run_dir, "; ".join(problems), directory.name)  # fmt: skip
            self._saved_step = state["step"]
            return state
        found = f": {'; '.join(problems)}" if problems else ""
        raise CheckpointError(f"no readable checkpoint to resume in {trainer.run_dir}{found}; start without resume")

    def plain_model(self, model: torch.nn.Module) -> torch.nn.Module | None:
        if self.mode == "ddp":
            return unwrap(model) if self.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)  # a collective: the full tensors on rank 0 only
        if not self.is_main:
            return None
        return plain_from_state(self._shell, state, torch.device("cpu"))  # no second copy on rank 0's GPU

    def barrier(self) -> None:
        dist.barrier()
