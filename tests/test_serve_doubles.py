"""A test double of graphvla.policy.policy.Policy for the server tests: same API, with
actions that are an exact function of the observation so round trips can be checked."""
from __future__ import annotations

import threading
import time

import numpy as np

INPUTS = {
    "images": {"kind": "image", "views": 2, "size": [32, 32]},
    "instruction": {"kind": "text"},
    "state": {"kind": "state", "dim": 8},
}


def expected_actions(obs: dict, horizon: int = 4, dim: int = 3) -> np.ndarray:
    """actions[h, a] = sum(state) + mean(image) + len(text) + 10 h + a."""
    img = obs["images"].astype(np.float64)
    img_mean = img.mean() / 255.0 if obs["images"].dtype == np.uint8 else img.mean()
    base = float(np.sum(obs["state"], dtype=np.float64)) + img_mean + len(obs["instruction"])
    return (base + 10 * np.arange(horizon)[:, None] + np.arange(dim)[None, :]).astype(np.float32)


class DoublePolicy:
    def __init__(self, horizon=4, dim=3, delay_s=0.0, per_item_s=0.0, inputs=None):
        self.horizon, self.dim = horizon, dim
        self.delay_s, self.per_item_s = delay_s, per_item_s
        self.batch_sizes: list[int] = []
        self.resets = 0
        self._lock = threading.Lock()
        self.metadata = {
            "name": "double", "fingerprint": "f" * 64, "action_horizon": horizon, "action_dim": dim,
            "inputs": dict(inputs or INPUTS), "outputs": ["actions"], "normalization": {"state": "mean_std", "actions": "mean_std"},
        }

    def _check(self, obs):
        for port, decl in self.metadata["inputs"].items():
            if port not in obs and not decl.get("optional"):
                raise ValueError(f"missing input '{port}'")
        if obs["instruction"] == "crash":
            raise RuntimeError("boom")
        if obs["instruction"] == "invalid":
            raise ValueError("instruction: 'invalid' is not allowed")

    def _compute(self, obs):
        self._check(obs)
        return {"actions": expected_actions(obs, self.horizon, self.dim)}

    def infer(self, obs):
        with self._lock:
            self.batch_sizes.append(1)
        time.sleep(self.delay_s + self.per_item_s)
        return self._compute(obs)

    def infer_batch(self, obs_list):
        with self._lock:
            self.batch_sizes.append(len(obs_list))
        time.sleep(self.delay_s + self.per_item_s * len(obs_list))
        return [self._compute(o) for o in obs_list]

    def reset(self):
        self.resets += 1
