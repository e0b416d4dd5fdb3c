"""`graphvla data pack`: a LeRobot folder -> webdataset tar shards, and reading them back.

A shard folder holds
    shard-000000.tar ...   one webdataset sample per frame: <key>.<camera>.png (the stored bytes,
                           not re-encoded) and <key>.frame.json (episode, frame, task, numeric values)
    columns.npz            every numeric column and the index arrays, for instant opening
    strings.json           per-frame text columns (if the dataset has any)
    shards.json            dataset facts (fps, features, tasks, episodes) and where each frame's
                           image lies in which tar (offset, size), for random access
Plain webdataset pipelines can stream the tars; `open_shards` gives the same `FrameSource` as
the folder (so shards and folder yield identical items) by seeking into the tars."""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import write_text_atomic
from .lerobot import DatasetError, FrameSource

INDEX_FILE = "shards.json"


@dataclass(frozen=True)
class TarRef:
    """A frame stored as one member of a shard. FrameSource reads it through `read()`, so the
    LeRobot reader needs no import of this module."""

    shard: str  # absolute path of the tar
    offset: int
    size: int

    def read(self) -> bytes:
        return read_ref(self)


def pack(source: FrameSource, out, *, max_frames: int = 2000) -> dict:
    """Write `source` as shards of at most `max_frames` frames into `out`. Returns the index."""
    import webdataset as wds

    out = Path(out)
    if (out / INDEX_FILE).exists():
        raise ValueError(f"{out} already holds shards ({INDEX_FILE}); choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    n = len(source)
    names = []
    for s, start in enumerate(range(0, n, max_frames)):
        name = f"shard-{s:06d}.tar"
        names.append(name)
        with wds.TarWriter(str(out / name)) as w:
            for i in range(start, min(n, start + max_frames)):
                sample = {"__key__": f"{i:09d}", "frame.json": json.dumps(_frame_facts(source, i)).encode()}
                for k in source.image_keys:
                    data, ext = source.image_bytes(k, i)
                    sample[f"{k}.{ext}"] = data
                w.write(sample)
    images = _index_images(out, names, source.image_keys)
    np.savez(out / "columns.npz", **{f"col:{k}": v for k, v in source.columns.items()},
             episode_index=source.episode_index, frame_index=source.frame_index,
             timestamp=source.timestamp, task_index=source.task_index,
             **{f"img:{k}:{f}": v for k, d in images.items() for f, v in d.items()})
    (out / "strings.json").write_text(json.dumps(source.strings))
    index = {"format": "graphvla-shards", "version": 1, "source": str(source.root), "codebase_version": source.version,
             "fps": source.fps, "features": source.features, "frames": n, "shards": names,
             "tasks": {str(k): v for k, v in source.tasks.items()},
             "episodes": {str(k): list(v) for k, v in source.episodes.items()},
             "cameras": source.image_keys, "info": source.info}
    write_text_atomic(out / INDEX_FILE, json.dumps(index, indent=1))
    return index


def _frame_facts(source: FrameSource, i: int) -> dict:
    return {"episode_index": int(source.episode_index[i]), "frame_index": int(source.frame_index[i]),
            "timestamp": float(source.timestamp[i]), "task": source.task(i),
            **{k: v[i].tolist() for k, v in source.columns.items()}, **{k: v[i] for k, v in source.strings.items()}}


def _index_images(out: Path, names: list, cameras: list) -> dict:
    """camera -> {'shard': int[N], 'offset': int[N], 'size': int[N]} from the written tars."""
    rows: dict = {k: [] for k in cameras}
    for s, name in enumerate(names):
        with tarfile.open(out / name) as tf:
            for m in tf:
                key, _, ext = m.name.partition(".")
                cam = ext.rsplit(".", 1)[0]
                if cam in rows:
                    rows[cam].append((int(key), s, m.offset_data, m.size))
    res = {}
    for k, r in rows.items():
        r.sort()
        a = np.asarray(r, dtype=np.int64).reshape(-1, 4)
        res[k] = {"shard": a[:, 1], "offset": a[:, 2], "size": a[:, 3]}
    return res


def is_shard_dir(path) -> bool:
    return (Path(path) / INDEX_FILE).exists()


def open_shards(root) -> FrameSource:
    root = Path(root)
    idx_path = root / INDEX_FILE
    if not idx_path.exists():
        raise FileNotFoundError(f"{root} is not a shard folder: missing {idx_path}")
    index = json.loads(idx_path.read_text())
    cols_path = root / "columns.npz"
    if not cols_path.exists():
        raise FileNotFoundError(f"missing {cols_path} (written by graphvla data pack)")
    z = np.load(cols_path)
    for name in index["shards"]:
        if not (root / name).exists():
            raise FileNotFoundError(f"missing shard {root / name} (listed in {idx_path})")
    refs = {}
    for k in index["cameras"]:
        shard, off, size = z[f"img:{k}:shard"], z[f"img:{k}:offset"], z[f"img:{k}:size"]
        if len(shard) != index["frames"]:
            raise DatasetError(f"{idx_path}: camera '{k}' has {len(shard)} frames in the tars, expected {index['frames']}")
        paths = [str(root / n) for n in index["shards"]]
        refs[k] = [TarRef(paths[s], int(o), int(n)) for s, o, n in zip(shard.tolist(), off.tolist(), size.tolist())]
    columns = {k[4:]: z[k] for k in z.files if k.startswith("col:")}
    strings_path = root / "strings.json"
    strings = json.loads(strings_path.read_text()) if strings_path.exists() else {}
    return FrameSource(root=root, version=f"shards({index['codebase_version']})", fps=float(index["fps"]),
                       features=index["features"], columns=columns, episode_index=z["episode_index"],
                       frame_index=z["frame_index"], timestamp=z["timestamp"], task_index=z["task_index"],
                       tasks={int(k): v for k, v in index["tasks"].items()},
                       episodes={int(k): tuple(v) for k, v in index["episodes"].items()},
                       image_refs=refs, strings=strings, info=index.get("info", {}))


_handles: dict = {}


def read_ref(ref: TarRef) -> bytes:
    """The bytes of one tar member (one open handle per shard and process)."""
    k = (os.getpid(), ref.shard)
    f = _handles.get(k)
    if f is None:
        f = _handles[k] = open(ref.shard, "rb")
    f.seek(ref.offset)
    data = f.read(ref.size)
    if len(data) != ref.size:
        raise DatasetError(f"{ref.shard}: truncated member at offset {ref.offset}")
    return data
