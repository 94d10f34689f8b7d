"""Scale out on torch.distributed: the same `train` and `finetune` on several processes, machines and GPUs.

setup.py (the process group from torchrun's environment, gloo/NCCL, timeouts, failures as clear errors), wrap.py
(DDP, FSDP2 `fully_shard` per block with a mixed-precision policy and optional CPU offload), hooks.py (the trainer's
hooks: sharded batches, summed losses, checkpoints), checkpoint.py (torch.distributed.checkpoint, resharded on load),
convert.py (a distributed run directory to the ordinary single-file one), run.py (`train`, `finetune`).
"""

from .convert import to_single_file
from .run import finetune, train
from .setup import DistributedError

__all__ = ["DistributedError", "finetune", "to_single_file", "train"]
