"""Evaluation: task metrics (eval/metrics.py)."""
