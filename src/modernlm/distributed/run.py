"""`train` and `finetune` on several processes: the ordinary runs with the distributed hooks, inside a process group.

Launch: `torchrun --nproc-per-node N -m modernlm train --parallel ddp|fsdp ...` (or `python -m torch.distributed.run`);
without torchrun a run is a group of one. Rank 0 prepares the run directory (tokenizer, config, token file) while the
others wait, then every process builds the same model from the same seed and trains its shard of each batch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..training.config import TrainConfig
from ..training.setup import prepare
from ..training.trainer import Trainer, TrainResult, _interrupts
from .hooks import DistributedParallel, check_batch
from .setup import Context, DistributedError, all_agree, session


def train(
    config: TrainConfig, *, resume: bool = False, stop_at_step: int | None = None, extend: bool = False
) -> TrainResult:
    """`modernlm.training.train` under torch.distributed with `config.parallel` ("ddp" or "fsdp"); the same
    arguments and result (on every process; rank 0's is the one to report)."""
    config.validate()
    if config.parallel == "none":
        raise ValueError("parallel is 'none': give --parallel ddp or fsdp, or train with modernlm.training.train")
    with session(config.device, config.dist_timeout, config.out_dir) as ctx:
        check_batch(config.batch_size, ctx.world_size)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        inputs = main_first(ctx, lambda main: prepare(config, resume, extend, main=main))
        inputs.config = dataclasses.replace(inputs.config, device=str(ctx.device))  # cuda: this process's GPU
        inputs.parallel = DistributedParallel(ctx, config.parallel, config.precision, config.cpu_offload)
        trainer = Trainer(inputs, resume)
        with _interrupts() as interrupted:
            return trainer.run(stop_at_step, interrupted)


def main_first(ctx: Context, work):
    """`work(main=True)` on rank 0, then, once it succeeded, `work(main=False)` on the others (which read what rank
    0 wrote). A failure on rank 0 stops every process with a message instead of leaving them waiting."""
    result, error = None, None
    if ctx.is_main:
        try:
            result = work(True)
        except Exception as e:  # reported below, after the others know
            error = e
    if not all_agree(error is None, ctx.device):
        if error is not None:
            raise error
        raise DistributedError(f"rank {ctx.rank}: rank 0 could not prepare the run (its message says why)")
    return result if ctx.is_main else work(False)


def finetune(cfg, *, resume: bool = False, stop_at_step: int | None = None, extend: bool = False):
    """`modernlm.finetune.run.finetune` under torch.distributed with `cfg.train.parallel`."""
    from ..finetune.run import finetune as finetune_run

    cfg.validate()
    loop = cfg.train
    if loop.parallel == "none":
        raise ValueError("parallel is 'none': give --parallel ddp or fsdp, or fine-tune without it")
    with session(loop.device, loop.dist_timeout, Path(loop.out_dir)) as ctx:
        check_batch(loop.batch_size, ctx.world_size)
        hooks = DistributedParallel(ctx, loop.parallel, loop.precision, loop.cpu_offload)
        return finetune_run(cfg, resume=resume, stop_at_step=stop_at_step, extend=extend, parallel=hooks)
