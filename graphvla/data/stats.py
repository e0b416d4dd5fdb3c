"""Normalization statistics: mean/std, min/max and the 1st/99th percentiles per key.

Computed exactly from the frames (every numeric column is in memory anyway), so `graphvla data
stats`, the trainer and the tests agree to the last digit."""
from __future__ import annotations

import numpy as np

STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")


def compute_stats(x: np.ndarray) -> dict[str, list[float]]:
    """x: [N, D] -> {'mean','std','min','max','q01','q99'} each a list of D floats."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if len(x) == 0:
        raise ValueError("cannot compute statistics of zero frames")
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
            "max": x.max(0).tolist(), "q01": q01.tolist(), "q99": q99.tolist()}


def pooled_stats(parts: list, width: int) -> dict[str, list[float]]:
    """Statistics of one port of width `width` over several datasets, parts[i] [N_i, D_i] with
    D_i <= width (a narrower robot's vector fills the first D_i dims; the batches zero-pad the rest
    and mark them with a dim mask). Dimension d is computed over the datasets that have it, never
    over zero-padded columns, which would pull the mean to 0 and shrink or widen the spread; a
    dimension no dataset has gets zeros (the normalizer then leaves it alone). When every dataset
    has the full width this is compute_stats of them all, to the last digit."""
    parts = [np.asarray(x, dtype=np.float64).reshape(len(x), -1) for x in parts]
    if any(x.shape[1] > width for x in parts):
        raise ValueError(f"a dataset has {max(x.shape[1] for x in parts)} dims but the port has {width}")
    if all(x.shape[1] == width for x in parts):
        return compute_stats(np.concatenate(parts))
    out = {k: [0.0] * width for k in STAT_NAMES}
    for lo, hi in _spans({x.shape[1] for x in parts}, width):
        having = [x[:, lo:hi] for x in parts if x.shape[1] >= hi]
        if not having:
            continue
        part = compute_stats(np.concatenate(having))
        for k in STAT_NAMES:
            out[k][lo:hi] = part[k]
    return out


def _spans(widths: set, width: int) -> list[tuple[int, int]]:
    """[0, width) cut at every dataset's width: within a span the same datasets have every dim."""
    cuts = sorted({0, width} | {w for w in widths if 0 < w < width})
    return list(zip(cuts[:-1], cuts[1:]))


def dataset_stats_from_episodes(episode_stats: list[dict]) -> dict:
    """Dataset statistics from LeRobot per-episode ones, the way meta/stats.json holds them: min of
    mins, max of maxes, the count-weighted mean and the pooled variance, each in its statistic's own
    shape (a vector [D], a camera's per-channel [3, 1, 1]); keys in first-seen order."""
    out: dict = {}
    keys = [k for e in episode_stats for k in e["stats"]]
    for k in dict.fromkeys(keys):
        parts = [e["stats"][k] for e in episode_stats if k in e["stats"]]
        mean = np.array([p["mean"] for p in parts], dtype=np.float64)
        n = np.array([p["count"][0] for p in parts], dtype=np.float64).reshape((-1,) + (1,) * (mean.ndim - 1))
        var = np.array([p["std"] for p in parts], dtype=np.float64) ** 2
        total = n.sum()
        m = (n * mean).sum(0) / total
        v = (n * (var + (mean - m) ** 2)).sum(0) / total
        out[k] = {"min": np.min([p["min"] for p in parts], 0).tolist(), "max": np.max([p["max"] for p in parts], 0).tolist(),
                  "mean": m.tolist(), "std": np.sqrt(v).tolist(), "count": [int(total)]}
    return out
