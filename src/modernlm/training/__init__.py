"""Training: from raw text to a working model. `train(TrainConfig())` is the no-argument recipe of `modernlm train`.

corpus.py (where text comes from, the train/val split), bpe.py (tokenizer training), data.py (the token file and
batches), optim.py (AdamW groups, the schedule), checkpoint.py (resumable run state), trainer.py (the loop),
report.py (metrics, loss curve, samples), setup.py (checks and preparation before the first step).
"""

from .bpe import train_bpe, train_bpe_files
from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .trainer import TrainingError, TrainResult, next_token_loss, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "load_checkpoint",
    "next_token_loss",
    "save_checkpoint",
    "train",
    "train_bpe",
    "train_bpe_files",
]
