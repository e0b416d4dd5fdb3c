"""A FAST tokenizer fitted on synthetic smooth action chunks, for the tiny FAST graph
(graphvla/graphs/tiny/fast_tokenizer) and tests: `python tests/fast_fixture.py DIR`."""
from __future__ import annotations

import sys

import numpy as np


def smooth_chunks(n: int, horizon: int, action_dim: int, seed: int = 0) -> np.ndarray:
    """Chunks in [-1, 1] that look like robot actions: a random start, a slow drift and small noise."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(-1, 1, (n, 1, action_dim))
    drift = rng.normal(0, 0.08, (n, 1, action_dim)) * np.arange(horizon)[None, :, None]
    noise = rng.normal(0, 0.02, (n, horizon, action_dim))
    return np.clip(start + drift + noise, -1, 1)


def fit_tiny_fast(directory, horizon: int = 8, action_dim: int = 4, vocab_size: int = 256, scale: float = 10.0):
    from graphvla.processors.fast_tokenizer import FASTTokenizer

    # wide enough that N(0, 1)-ish synthetic targets (graphvla check) stay inside the fitted range
    data = np.concatenate([smooth_chunks(2000, horizon, action_dim), np.clip(np.random.default_rng(1).normal(
        0, 0.5, (500, horizon, action_dim)), -1, 1)])
    return FASTTokenizer(horizon, action_dim, scale=scale, vocab_size=vocab_size).fit(data).save(directory)


if __name__ == "__main__":
    print(fit_tiny_fast(sys.argv[1]))
