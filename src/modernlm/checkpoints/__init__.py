"""Weights in and out: HF directories (hf.py), GGUF files (gguf.py), source names to paths (sources.py)."""
