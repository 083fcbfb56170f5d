"""Evaluation: the paper's protocol (avg@k), per-token perception KL, reports like Table 1."""
