"""Generation: the decode loop (generate.py), logit filters and the sampler (sampling.py), beam search (beam.py)."""

from .generate import generate
from .naive import generate_naive
from .sampling import SamplingParams
from .session import Session, TurnStats, stream_generate
from .stops import IncrementalDecoder

__all__ = [
    "IncrementalDecoder",
    "SamplingParams",
    "Session",
    "TurnStats",
    "generate",
    "generate_naive",
    "stream_generate",
]
