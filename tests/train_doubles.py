"""Synthetic training data for the trainer tests: a map-style dataset shaped for TINY_SPEC whose
actions are a learnable function of state and task, and its normalization statistics.

Nothing here stands in for graphvla.data: the tests build the real DataBundle, StreamSampler,
Normalizer and collate, and an import error in the data layer fails them."""
from __future__ import annotations

import math

import numpy as np
import torch
import yaml

from graphvla.data.stats import compute_stats as stats_of_rows

TASKS = ["reach the red cube", "open the drawer", "push the button"]


class SyntheticActions(torch.utils.data.Dataset):
    """Samples whose action chunk is a fixed smooth function of the state and the task, so a
    model can learn it (losses must fall). action_port names the port the chunk fills."""

    def __init__(self, n=64, *, views=1, size=16, state_dim=4, horizon=4, action_dim=3, action_port="actions",
                 seed=0, nan_at=None):
        g = torch.Generator().manual_seed(seed)
        self.n, self.action_port, self.nan_at = n, action_port, nan_at
        self.images = torch.rand(n, views, 3, size, size, generator=g)
        self.state = torch.randn(n, state_dim, generator=g)
        self.task = torch.randint(0, len(TASKS), (n,), generator=g)
        w = torch.randn(state_dim, horizon * action_dim, generator=g) / math.sqrt(state_dim)
        bias = torch.randn(len(TASKS), horizon * action_dim, generator=g)
        self.actions = (torch.tanh(self.state @ w) + bias[self.task]).view(n, horizon, action_dim) * 2 + 1

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        actions = self.actions[i].clone()
        if self.nan_at is not None and i == self.nan_at:
            actions[0, 0] = float("nan")
        return {"images": self.images[i], "instruction": TASKS[int(self.task[i])], "state": self.state[i],
                self.action_port: actions}


def port_stats(dataset, ports) -> dict:
    """Normalization statistics of `ports` over every sample of `dataset`, by the data layer's
    compute_stats. Rows holding a NaN (SyntheticActions(nan_at=...)) are left out, as a recorder
    would never write them: the NaN must reach the loss, not the statistics."""
    stats = {}
    for p in ports:
        x = torch.stack([dataset[i][p] for i in range(len(dataset))]).flatten(0, -2).double().numpy()
        stats[p] = stats_of_rows(x[np.isfinite(x).all(-1)])
    return stats


# The trainer tests' graph: tiny/mlp, made small enough to train 40 steps in seconds, with a
# trainer section. Its text (TINY_SPEC) is what tests write into run folders and spec files.
TINY_OVERRIDES = (
    "name=tiny-train", "inputs.images.size=[16, 16]", "inputs.state.dim=4",
    "inputs.actions={kind: action, dim: 3, horizon: 4, train_only: true}",
    "blocks.vision.with={width: 16, patch: 8, layers: 1}",
    "blocks.language.with={width: 16, layers: 1, heads: 2, max_length: 32}",
    "blocks.fuse.with.width=16", "blocks.head.with.hidden=32", "blocks.head.train.lr=3.0e-3",
    "trainer={max_steps: 40, batch_size: 8, lr: 3.0e-3, warmup_steps: 4, log_every: 5, save_every: 10, "
    "keep_last: 2, normalization: {state: mean_std, actions: mean_std}}",
)


def tiny_spec(*overrides: str) -> str:
    """The YAML text of the trainer tests' graph (tiny/mlp + TINY_OVERRIDES) with more `--set`
    overrides applied, so a test's graph shows only how it differs from the shared one. Leaf maps
    are written in flow style ("with: {hidden: 32}"), so a test may also fill in a placeholder
    it set (blocks.head.type=HEAD) by text."""
    from graphvla.spec.loader import load_spec

    data = load_spec("tiny/mlp", [*TINY_OVERRIDES, *overrides], validate=False).data
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


TINY_SPEC = tiny_spec()
