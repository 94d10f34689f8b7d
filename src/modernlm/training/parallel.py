"""The trainer's hooks for running on several processes, and their single-process defaults.

The Trainer calls these at the few places where data parallelism changes something: wrapping the model before the
optimizer is built, drawing this process's rows of a batch, summing a step's loss over processes, saving and
restoring checkpoints, and handing a plain (unwrapped, unsharded) model to rank 0 for samples and published weights.
`Parallel` is the single-process case, where every hook is the identity; `modernlm.distributed` subclasses it
(DDP and FSDP under torch.distributed), so the loop itself is written once.
"""

from __future__ import annotations

import os
import threading
from contextlib import nullcontext
from pathlib import Path

import torch

from .checkpoint import CHECKPOINTS, checkpoint_dirs, load_checkpoint, restore_rng, save_checkpoint

DCP_METADATA = ".metadata"  # the file torch.distributed.checkpoint writes last, beside the ranks' shards


class Parallel:
    """One process: the whole batch here, nothing to sum, checkpoints in the single-file format (checkpoint.py)."""

    rank = 0
    world_size = 1
    device = None  # this process's device when the process group chose it (cuda:LOCAL_RANK); None: the config's

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs, plots, samples and checkpoints (rank 0)."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model to train, after it was moved to its device and before the optimizer is built."""
        return model

    def train_batch(self, data, index: int, batch_size: int, seq_len: int, seed: int):
        """(inputs, targets, weight) of micro-batch `index`: this process's rows of the global batch, and the factor
        that makes the mean of the processes' losses the loss of the whole batch (1 on one process)."""
        x, y = data.train_batch(index, batch_size, seq_len, seed)
        return x, y, 1.0

    def sync(self, model: torch.nn.Module, last: bool):
        """A context for one micro-batch's backward: gradients are averaged over processes on the `last` one only."""
        return nullcontext()

    def step_loss(self, total: torch.Tensor, interrupted: threading.Event) -> float:
        """The step's loss over all processes; a stop asked on any process is set on every one (so all stop after
        the same step)."""
        return float(total)

    def grad_norm(self, norm: torch.Tensor) -> float:
        return float(norm)

    def save(self, trainer, state: dict, weights: dict | None) -> Path:
        """Write a checkpoint of `trainer` at `state["step"]` (see Trainer.save)."""
        cfg, inputs = trainer.cfg, trainer.inputs
        return save_checkpoint(
            trainer.run_dir,
            trainer.model,
            trainer.optimizer,
            state,
            keep=cfg.keep_checkpoints,
            publish=inputs.publish_weights,
            weights=weights,
        )

    def restore(self, trainer) -> dict:
        """Load the latest checkpoint into the trainer's model and optimizer; return its run state."""
        if is_distributed_checkpoint(trainer.run_dir):
            raise ValueError(
                f"the latest checkpoint of {trainer.run_dir} was written by a distributed run (--parallel ddp or "
                "fsdp): resume it with --parallel ddp or fsdp (one process works too), or convert it first with "
                f"modernlm train --out {trainer.run_dir} --to-single-file NEW_DIR"
            )
        weights, optimizer_state, state = load_checkpoint(trainer.run_dir)
        model = trainer.model
        if trainer.inputs.save_trainable_only:
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            if set(weights) != trainable:
                raise ValueError(
                    f"the checkpoint in {trainer.run_dir} holds {len(weights)} tensors, but this model trains "
                    f"{len(trainable)} parameters: it was made with other settings; resume with the saved ones"
                )
            model.load_state_dict(weights, strict=False)
        else:
            model.load_state_dict(weights)
        trainer.optimizer.load_state_dict(optimizer_state)
        restore_rng(state)
        return state

    def plain_model(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """The trained model as an ordinary module on rank 0 (None on the others); every rank must call it."""
        return model

    def barrier(self) -> None:
        """Wait for every process (after rank 0 wrote what the others read)."""

    def publish(self, run_dir: Path) -> None:
        """Copy the latest checkpoint's weights to the run root (a kill may have come before it was done)."""
        from .checkpoint import publish_latest

        publish_latest(run_dir)


def is_distributed_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether the latest checkpoint of `run_dir` is in torch.distributed.checkpoint's format (its `.metadata`)."""
    candidates = checkpoint_dirs(Path(run_dir) / CHECKPOINTS)
    return bool(candidates) and (candidates[0] / DCP_METADATA).is_file()
