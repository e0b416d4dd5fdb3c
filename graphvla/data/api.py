"""The data layer's contract with the trainer: `load_data(data, spec) -> DataBundle`, `collate`.

    bundle = load_data("data/metaworld-mt10.yaml", spec)      # or a LeRobot folder, or a shard folder
    ds = bundle.streams["action"]                              # map-style; items keyed by input ports
    sampler = bundle.sampler("action", seed=0, rank=r, world_size=w)
    loader = DataLoader(ds, batch_size=32, sampler=sampler, collate_fn=collate)
    norm = Normalizer.from_spec(bundle.stats, spec)
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import hub
from .config import Entry, read_data_config
from .frames import ActionDataset, bind
from .lerobot import DatasetError, FrameSource, open_lerobot
from .ports import as_spec, stream_ports
from .sampler import StreamSampler
from .shards import is_shard_dir, open_shards
from .stats import pooled_stats


@dataclass
class DataBundle:
    streams: dict  # stream name -> map-style dataset
    stats: dict  # state/action port -> {'mean','std','min','max','q01','q99'}
    warnings: list = field(default_factory=list)

    def sampler(self, stream: str, *, seed: int, rank: int = 0, world_size: int = 1) -> StreamSampler:
        if stream not in self.streams:
            raise KeyError(f"no data for stream '{stream}' (streams: {', '.join(self.streams)})")
        return StreamSampler(self.streams[stream], seed=seed, rank=rank, world_size=world_size)


class MixtureDataset(torch.utils.data.Dataset):
    """Several datasets of one stream behind one index space; the sampler applies `weights`."""

    def __init__(self, parts: list, weights: list, names: list | None = None):
        self.parts, self.weights = list(parts), [float(w) for w in weights]
        self.names = names or [str(i) for i in range(len(parts))]
        self.part_sizes = [len(p) for p in self.parts]
        self._starts = list(np.cumsum([0] + self.part_sizes[:-1]))

    def __len__(self) -> int:
        return sum(self.part_sizes)

    def locate(self, i: int) -> tuple[int, int]:
        k = bisect.bisect_right(self._starts, i) - 1
        return k, i - self._starts[k]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range (mixture has {len(self)})")
        k, j = self.locate(i)
        return self.parts[k][j]


def collate(samples: list[dict]) -> dict:
    """Stack tensors, keep strings as lists; a key that is None in every sample stays None."""
    if not samples:
        raise ValueError("collate() needs at least one sample")
    out = {}
    for k in samples[0]:
        vals = [s.get(k) for s in samples]
        if all(v is None for v in vals):
            out[k] = None
        elif any(v is None for v in vals):
            raise ValueError(f"input '{k}' is missing in some samples of the batch but not in others")
        elif torch.is_tensor(vals[0]):
            out[k] = _stack(vals)
        elif isinstance(vals[0], np.ndarray):
            out[k] = torch.from_numpy(np.stack(vals))
        else:
            out[k] = list(vals)
    return out


def _stack(vals: list) -> torch.Tensor:
    """torch.stack, done by numpy for plain CPU tensors: torch's parallel copy spins its
    intra-op threads, which on a busy machine made a [32, 1, 3, 128, 128] batch take ~0.8 s
    instead of ~15 ms (measured with 2 cores shared by several processes)."""
    if all(v.device.type == "cpu" and not v.requires_grad for v in vals):
        try:
            return torch.from_numpy(np.stack([v.numpy() for v in vals]))
        except (TypeError, RuntimeError):  # dtypes numpy lacks (bfloat16)
            pass
    return torch.stack(vals)


def open_source(path) -> FrameSource:
    """A LeRobot folder (v2.1/v3.0) or a shard folder from `graphvla data pack`; `path` may be a
    Hugging Face dataset id `org/name[@revision]` (read through the Hub cache, graphvla/hub.py)."""
    path = hub.resolve(path, repo_type="dataset")
    return open_shards(path) if is_shard_dir(path) else open_lerobot(path)


def select_split(source: FrameSource, split: str | None) -> FrameSource:
    """Keep the episodes of info.json `splits[split]` ('a:b' episode range)."""
    splits = (source.info or {}).get("splits") or {}
    if split is None or (split == "train" and not splits):
        return source
    if split not in splits:
        raise DatasetError(f"{source.root}: no split '{split}' (meta/info.json splits: {', '.join(splits) or 'none'})")
    lo, _, hi = str(splits[split]).partition(":")
    eps = sorted(source.episodes)[int(lo or 0): int(hi) if hi else None]
    if not eps:
        raise DatasetError(f"{source.root}: split '{split}' ({splits[split]}) selects no episode")
    if eps == sorted(source.episodes):
        return source
    rows = np.concatenate([np.arange(*source.episodes[e]) for e in eps])
    episodes, start = {}, 0
    for e in eps:
        s, t = source.episodes[e]
        episodes[e] = (start, start + t - s)
        start += t - s
    pick = lambda a: a[rows]  # noqa: E731
    return FrameSource(root=source.root, version=source.version, fps=source.fps, features=source.features,
                       columns={k: pick(v) for k, v in source.columns.items()},
                       episode_index=pick(source.episode_index), frame_index=pick(source.frame_index),
                       timestamp=pick(source.timestamp), task_index=pick(source.task_index), tasks=source.tasks,
                       episodes=episodes, image_refs={k: [v[r] for r in rows] for k, v in source.image_refs.items()},
                       video_refs={k: ([f[r] for r in rows], o[rows]) for k, (f, o) in source.video_refs.items()},
                       strings={k: [v[r] for r in rows] for k, v in source.strings.items()}, info=source.info)


def load_data(data, spec, *, split: str = "train") -> DataBundle:
    """Datasets for every training stream of `spec`, checked against its input ports, plus the
    normalization statistics of its state/action ports."""
    from .vlm import LlavaDataset

    spec = as_spec(spec)
    ports = stream_ports(spec)
    entries = read_data_config(data)
    by_stream: dict[str, list[Entry]] = {}
    for e in entries:
        by_stream.setdefault(e.stream, []).append(e)
    warnings = [f"{by_stream[s][0].where}: the graph has no '{s}' stream (its streams: {', '.join(ports)}); ignored"
                for s in by_stream if s not in ports]
    missing = [s for s in ports if s not in by_stream]
    if missing:
        raise DatasetError(f"{data}: no data for the graph's stream(s) {', '.join(missing)} "
                           f"(data covers: {', '.join(by_stream) or 'nothing'})")
    streams, robot_parts = {}, []
    for stream, sp in ports.items():
        parts = []
        group = by_stream[stream]
        for e in group:
            if e.kind == "vlm":
                parts.append(LlavaDataset(e.path, sp, e.keys, e.image_root))
                continue
            source = select_split(open_source(e.path), split)
            pad = e.pad if e.pad is not None else len(group) > 1
            binding = bind(source, sp, e.keys, pad=pad, embodiment=e.embodiment, where=e.where)
            ds = ActionDataset(source, sp, binding)
            parts.append(ds)
            robot_parts.append(ds)
        streams[stream] = parts[0] if len(parts) == 1 else MixtureDataset(parts, [e.weight for e in group],
                                                                          [str(e.path) for e in group])
    return DataBundle(streams, port_stats(robot_parts), warnings)


def port_stats(parts: list[ActionDataset]) -> dict:
    """Statistics per state/action port over every robot dataset, each dimension over the datasets
    that have it (data/stats.py pooled_stats): a narrower robot's zero padding is not data."""
    values: dict = {}
    widths: dict = {}
    for ds in parts:
        for port, col in ds.binding.vectors.items():
            values.setdefault(port, []).append(ds.source.columns[col])
            widths[port] = ds.ports.ports[port].dim
    return {port: pooled_stats(v, widths[port]) for port, v in values.items()}
