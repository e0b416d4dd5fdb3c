"""Temporal ensembling of action chunks (Zhao et al. 2023, ACT, Algorithm 2), an execution option of
any chunking policy: the graph's `infer: {temporal_ensemble: {coeff: c}}` (LeRobot's
`temporal_ensemble_coeff`).

The policy is queried at every control step. Each query's chunk [H, A] predicts the next H steps;
the action executed at step t is the weighted mean of every prediction made so far for t, the i-th
oldest of them weighted w_i = exp(-c * i) (c > 0 favours older predictions; 0 is the plain mean;
c < 0 favours newer). The running means are kept online, as LeRobot's ACTTemporalEnsembler keeps
them: for each future step, its mean and how many predictions it holds (at most H).

`TemporalEnsemble.update(chunk)` folds a new chunk in and returns the ensembled chunk [H, A]: row 0
is the action to execute now (what LeRobot's select_action returns), rows 1.. the current means for
the following steps (the last row holds only the new chunk's prediction). One ensemble per episode:
a session keeps its own (policy/session.py), and reset() starts over."""
from __future__ import annotations

import math

import numpy as np


class TemporalEnsemble:
    def __init__(self, coeff: float, horizon: int):
        if not isinstance(coeff, (int, float)) or isinstance(coeff, bool) or not math.isfinite(coeff):
            raise ValueError(f"infer.temporal_ensemble.coeff: expected a finite number, got {coeff!r}")
        if horizon < 1:
            raise ValueError(f"temporal ensembling needs an action chunk (horizon >= 1), got {horizon}")
        self.coeff, self.horizon = float(coeff), int(horizon)
        self.weights = np.exp(-self.coeff * np.arange(self.horizon, dtype=np.float64))
        self.cumulative = np.cumsum(self.weights)
        self.reset()

    def reset(self) -> None:
        self.means = None  # [H - 1, A] running means for the next steps
        self.counts = None  # [H - 1] predictions each holds

    def update(self, chunk) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[0] != self.horizon:
            raise ValueError(f"temporal ensembling: expected a chunk [{self.horizon}, A], got {list(chunk.shape)}")
        if self.means is None:
            means, counts = chunk.copy(), np.ones(self.horizon, dtype=np.int64)
        else:
            if self.means.shape[1] != chunk.shape[1]:
                raise ValueError(f"temporal ensembling: a chunk of width {chunk.shape[1]} after width {self.means.shape[1]}")
            c = self.counts
            folded = (self.means * self.cumulative[c - 1, None] + chunk[:-1] * self.weights[c, None]) / self.cumulative[c, None]
            means = np.concatenate([folded, chunk[-1:]], axis=0)
            counts = np.concatenate([np.minimum(c + 1, self.horizon), [1]])
        self.means, self.counts = means[1:], counts[1:]
        return means.astype(np.float32)


def checked_coeff(coeff, horizon) -> float:
    """`coeff` as a float, checked as a TemporalEnsemble over chunks of `horizon` steps checks it (a
    policy without an action chunk, horizon None, is refused): serve.temporal_ensemble set on a policy."""
    TemporalEnsemble(coeff, int(horizon or 0))
    return float(coeff)


def fold_rows(outs: list, key: str, sessions, own: dict, new) -> None:
    """Temporal ensembling of one batch's outputs, in place (Policy and the export's ExportedPolicy):
    row i's chunk out[key] is folded into its episode's ensemble and replaced by the ensembled chunk.
    The episode is sessions[i]'s (its `ensemble`), or without sessions (None) the caller's own for row i
    (own[i]); either is made by new() on first use. Rows without `key` are left as they are."""
    for i, out in enumerate(outs):
        if key not in out:
            continue
        session = None if sessions is None else sessions[i]
        ensemble = own.get(i) if session is None else session.ensemble
        if ensemble is None:
            ensemble = new()
            if session is None:
                own[i] = ensemble
            else:
                session.ensemble = ensemble
        out[key] = ensemble.update(out[key])
