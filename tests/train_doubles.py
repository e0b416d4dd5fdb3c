"""Test doubles for the data layer (graphvla.data), shaped like its contract: a DataBundle of
synthetic map-style datasets keyed by port name, a deterministic sharded sampler with
state_dict/load_state_dict, collate, and a mean/std Normalizer. The trainer tests use the
real graphvla.data classes when they exist and these otherwise."""
from __future__ import annotations

import math

import pytest
import torch

TASKS = ["reach the red cube", "open the drawer", "push the button"]


class SyntheticActions(torch.utils.data.Dataset):
    """Samples whose action chunk is a fixed smooth function of the state and the task, so a
    model can learn it (losses must fall). action_port/extra name the ports to fill."""

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


class ShardedSampler:
    """Infinite, deterministic for a seed, sharded by rank: epoch e visits a permutation of
    the dataset and rank r takes every world_size-th index of it."""

    def __init__(self, n, *, seed, rank=0, world_size=1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world_size
        self.epoch, self.pos = 0, 0

    def _order(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return torch.randperm(self.n, generator=g)[self.rank:: self.world].tolist()

    def __iter__(self):
        while True:
            order = self._order()
            while self.pos < len(order):
                i = order[self.pos]
                self.pos += 1
                yield i
            self.epoch, self.pos = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state):
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def collate(samples):
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else list(vals)
    return out


def compute_stats(dataset, ports):
    stats = {}
    for p in ports:
        x = torch.stack([dataset[i][p] for i in range(len(dataset))]).flatten(0, -2)
        x = x[torch.isfinite(x).all(-1)]
        stats[p] = {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.amin(0).tolist(),
                    "max": x.amax(0).tolist(), "q01": x.quantile(0.01, 0).tolist(), "q99": x.quantile(0.99, 0).tolist()}
    return stats


class DataBundleDouble:
    def __init__(self, streams: dict, stats: dict):
        self.streams, self.stats = streams, stats

    def sampler(self, stream, *, seed, rank=0, world_size=1):
        return ShardedSampler(len(self.streams[stream]), seed=seed, rank=rank, world_size=world_size)


class NormalizerDouble:
    """mean_std / identity normalization of the ports named in modes."""

    def __init__(self, stats, modes):
        self.stats, self.modes = stats, dict(modes)
        for port, mode in self.modes.items():
            if mode != "identity" and port not in stats:
                raise ValueError(f"normalization: no statistics for port '{port}'")

    def _ms(self, port, x):
        s = self.stats[port]
        return torch.as_tensor(s["mean"], dtype=x.dtype), torch.as_tensor(s["std"], dtype=x.dtype).clamp(min=1e-6)

    def normalize(self, batch):
        out = dict(batch)
        for port, mode in self.modes.items():
            if mode == "mean_std" and port in out and out[port] is not None:
                mean, std = self._ms(port, out[port])
                out[port] = (out[port] - mean) / std
        return out

    def unnormalize(self, port, x):
        if self.modes.get(port) != "mean_std":
            return x
        mean, std = self._ms(port, torch.as_tensor(x))
        return torch.as_tensor(x) * std + mean

    def to_dict(self):
        return {"stats": self.stats, "modes": self.modes}

    @classmethod
    def from_dict(cls, d):
        return cls(d["stats"], d["modes"])

    def check_compatible(self, spec):
        for port in self.modes:
            decl = spec.inputs.get(port)
            if decl is None:
                raise ValueError(f"normalization names port '{port}', which the graph does not declare")
            width = decl.get("dim")
            if width is not None and port in self.stats and len(self.stats[port]["mean"]) != width:
                raise ValueError(f"normalization statistics of '{port}' have width {len(self.stats[port]['mean'])}, "
                                 f"the graph's port has dim {width}")


def real_data_layer():
    """(Normalizer, collate) from graphvla.data when it exists, else None."""
    try:
        from graphvla.data.api import collate as real_collate
        from graphvla.data.normalize import Normalizer
    except ImportError:
        return None
    return Normalizer, real_collate


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


@pytest.fixture(scope="session")
def metaworld_data(tmp_path_factory):
    """A small Meta-World recording (1 task x 2 episodes, 64x64) made with graphvla.data."""
    pytest.importorskip("graphvla.data.metaworld_record")
    from graphvla.sim.metaworld import render_problem

    problem = render_problem()
    if problem:
        pytest.skip(problem)
    from graphvla.data.metaworld_record import tiny_metaworld

    return tiny_metaworld(tmp_path_factory.mktemp("mw"), tasks=("reach-v3",), episodes=2, size=64)
