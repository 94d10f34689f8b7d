"""Evaluation: perplexity on held-out text (perplexity.py)."""

from .perplexity import heldout_text, perplexity

__all__ = ["heldout_text", "perplexity"]
