"""Weights in and out: Hugging Face directories (hf.py), GGUF files (gguf.py), and how a source name is resolved (sources.py)."""
