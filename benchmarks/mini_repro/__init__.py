"""Miniature reproduction of PAPO vs GRPO on CPU; see `run.py` and RESULTS.md."""
