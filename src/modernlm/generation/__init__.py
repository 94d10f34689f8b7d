"""Generation: the decode loop (generate.py), logit filters and the sampler (sampling.py), beam search (beam.py)."""

from .generate import IncrementalDecoder, Session, TurnStats, generate, generate_naive, stream_generate
from .sampling import SamplingParams

__all__ = [
    "IncrementalDecoder",
    "SamplingParams",
    "Session",
    "TurnStats",
    "generate",
    "generate_naive",
    "stream_generate",
]
