"""Serving: the continuous-batching engine (engine.py) with its prefix cache (prefix_cache.py) and counters
(metrics.py), the OpenAI-compatible HTTP app (api.py) and the chat page (web/)."""

from .engine import Engine, Event, Handle, QueueFull, Request

__all__ = ["Engine", "Event", "Handle", "QueueFull", "Request"]
