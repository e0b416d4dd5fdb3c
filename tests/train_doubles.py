"""Synthetic training data for the trainer tests: a map-style dataset shaped for TINY_SPEC whose
actions are a learnable function of state and task, and its normalization statistics.

Nothing here stands in for graphvla.data: the tests build the real DataBundle, StreamSampler,
Normalizer and collate, and an import error in the data layer fails them."""
from __future__ import annotations

import math

import numpy as np
import torch

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


TINY_SPEC = """
graphvla: 1
name: tiny-train
inputs:
  images:      {kind: image, views: 1, size: [16, 16]}
  instruction: {kind: text}
  state:       {kind: state, dim: 4}
  actions:     {kind: action, dim: 3, horizon: 4, train_only: true}
blocks:
  vision:
    type: encoder.image
    in: {images: inputs.images}
    with: {width: 16, patch: 8, layers: 1}
  language:
    type: encoder.text
    in: {text: inputs.instruction}
    with: {width: 16, layers: 1, heads: 2, max_length: 32}
  fuse:
    type: glue.fuse
    in: {a: vision.hidden, b: language.pooled, c: inputs.state}
    with: {width: 16}
  head:
    type: head.mlp
    in: {context: fuse.hidden, state: inputs.state, target: inputs.actions}
    with: {hidden: 32}
    train: {lr: 3.0e-3}
losses:
  action: {from: head.loss, weight: 1.0}
outputs:
  actions: head.actions
trainer:
  max_steps: 40
  batch_size: 8
  lr: 3.0e-3
  warmup_steps: 4
  log_every: 5
  save_every: 10
  keep_last: 2
  normalization: {state: mean_std, actions: mean_std}
"""


def tiny_spec(*edits: tuple[str, str]) -> str:
    """TINY_SPEC with each (old, new) text edit applied, so a test's graph shows only how it
    differs from the shared one; an edit whose text is not there fails instead of doing nothing."""
    text = TINY_SPEC
    for old, new in edits:
        if old not in text:
            raise ValueError(f"tiny_spec: {old!r} is not in TINY_SPEC")
        text = text.replace(old, new)
    return text
