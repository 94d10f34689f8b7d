"""Evaluation: perplexity on held-out text (perplexity.py) and task metrics (metrics.py)."""

from .perplexity import heldout_text, perplexity, text_perplexity

__all__ = ["heldout_text", "perplexity", "text_perplexity"]
