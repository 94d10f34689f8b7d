"""The process group: joined from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
gloo on CPU and NCCL on CUDA, with a timeout on every collective; left on every way out.

A run launched without torchrun is a group of one (an in-memory store), so `--parallel ddp|fsdp` also works, and
resumes a distributed checkpoint, on one process. A collective that fails (another process was killed or crashed,
the network broke, a process stopped answering for `timeout` seconds) becomes a DistributedError with a message
that says so, instead of a hang or a traceback from deep inside torch.
"""

from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ..loading import parse_device


class DistributedError(ValueError):
    """A process of a distributed run cannot go on: another one failed, or the launch is wrong; says what to do."""


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device  # this process's device: cpu, or cuda:LOCAL_RANK

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables; (0, 1, 0) when it did not start this process."""
    try:
        values = [int(os.environ.get(name, default)) for name, default in (("RANK", 0), ("WORLD_SIZE", 1))]
        values.append(int(os.environ.get("LOCAL_RANK", values[0])))
    except ValueError as e:
        raise DistributedError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them): {e}") from None
    rank, world, local = values
    if not 0 <= rank < world:
        raise DistributedError(f"RANK {rank} is not in [0, WORLD_SIZE {world}): launch with torchrun")
    return rank, world, local


def process_device(device: str, local_rank: int) -> torch.device:
    """`cpu`, or the CUDA device of this process: "cuda" means cuda:LOCAL_RANK (one GPU per process)."""
    asked = parse_device(device)  # a clear error for an unknown name or CUDA without a GPU
    if asked.type == "cuda":
        if asked.index is not None:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise DistributedError(
                    f"--device {device} with several processes: give --device cuda, and each process takes the GPU "
                    "of its LOCAL_RANK (choose the GPUs with CUDA_VISIBLE_DEVICES)"
                )
            return asked
        return parse_device(f"cuda:{local_rank}")  # a clear error with fewer GPUs than processes on this machine
    if asked.type != "cpu":
        raise DistributedError(f"distributed training runs on cpu (gloo) or cuda (NCCL), not {device!r}")
    return asked


def init(device: str, timeout_s: int) -> Context:
    """Join (or, alone, make) the process group of this run; return this process's place in it."""
    rank, world, local = launch_env()
    here = process_device(device, local)
    backend = "nccl" if here.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if here.type == "cuda":
        torch.cuda.set_device(here)
    kw = dict(backend=backend, timeout=timeout)
    if here.type == "cuda":
        kw["device_id"] = here
    if world == 1 and "MASTER_ADDR" not in os.environ:  # not launched by torchrun: a group of one in memory
        dist.init_process_group(store=dist.HashStore(), rank=0, world_size=1, **kw)
    else:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise DistributedError(f"{', '.join(missing)} not set: launch with torchrun (torch.distributed.run)")
        dist.init_process_group(**kw)
    return Context(rank, world, local, here)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_collective_failure(error: BaseException) -> bool:
    """Whether `error` is a collective that failed (a lost peer, a timeout), not a mistake of the program."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error).lower()
    signs = ("gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe", "socket")
    return isinstance(error, RuntimeError) and any(s in text for s in signs)


@contextmanager
def session(device: str, timeout_s: int, run_dir: str | os.PathLike):
    """The process group for the length of a run. A failed collective is raised as a DistributedError that names this
    rank, the likely cause, the timeout and the last complete checkpoint of `run_dir`."""
    ctx = init(device, timeout_s)
    failed = False
    try:
        yield ctx
    except Exception as e:
        failed = True
        if not is_collective_failure(e):
            raise
        raise DistributedError(failure_message(ctx, e, timeout_s, Path(run_dir))) from e
    finally:
        if not failed:
            teardown()
        # after a failure the group may be broken: destroying it could wait on the lost peers; the process exits


def failure_message(ctx: Context, error: BaseException, timeout_s: int, run_dir: Path) -> str:
    from ..training.checkpoint import latest_step

    step = latest_step(run_dir)
    kept = f"The last complete checkpoint (step {step}) is kept in {run_dir}" if step else "No checkpoint was saved"
    first = str(error).strip().splitlines()[0][:300].rstrip(". ") if str(error).strip() else type(error).__name__
    return (
        f"rank {ctx.rank} of {ctx.world_size} stopped: a collective with the other processes failed (another "
        f"process was killed or crashed, see its own message, or did not answer within --dist-timeout {timeout_s} s): "
        f"{first}. {kept}; resume with --resume once every process can run"
    )


def all_agree(ok: bool, device: torch.device) -> bool:
    """Whether `ok` holds on every process (a collective: every process must call it)."""
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    dist.all_reduce(flag)
    return float(flag) == 0.0


def broadcast_text(text: str, device: torch.device, size: int = 1024) -> str:
    """Rank 0's `text` (up to `size` UTF-8 bytes) on every process, as bytes in a tensor (no pickling)."""
    data = torch.zeros(size, dtype=torch.uint8, device=device)  # the text, then zeros (UTF-8 text has no zero byte)
    if dist.get_rank() == 0:
        raw = text.encode("utf-8")
        if len(raw) > size:
            raise DistributedError(f"a path of {len(raw)} bytes is too long to share between processes: {text[:80]}")
        data[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    dist.broadcast(data, src=0)
    return bytes(data.cpu().tolist()).split(b"\0", 1)[0].decode("utf-8")
