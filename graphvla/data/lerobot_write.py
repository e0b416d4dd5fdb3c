"""Writing a LeRobot v2.1 dataset: one parquet file per episode, camera frames as PNG files.

Layout (what `LeRobotDataset` v2.1 and our reader expect):
    meta/info.json  meta/episodes.jsonl  meta/tasks.jsonl  meta/episodes_stats.jsonl  meta/stats.json
    data/chunk-000/episode_000000.parquet
    images/<image key>/episode_000000/frame_000000.png
Image columns in the parquet hold {'bytes': None, 'path': 'images/...png'} like LeRobot's image
features, so readers find the file from the row.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..fileio import write_text_atomic

CODEBASE_VERSION = "v2.1"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
IMAGE_PATH = "images/{image_key}/episode_{episode_index:06d}/frame_{frame_index:06d}.png"


def _feature(dtype: str, shape, names=None) -> dict:
    return {"dtype": dtype, "shape": list(shape), "names": names}


class LeRobotWriter:
    """Collects episodes and writes them as a LeRobot v2.1 folder.

    features: key -> (dtype, shape) for the per-frame vectors ('float32', (4,)) and images
    ('image', (H, W, 3))."""

    def __init__(self, root, fps: int, features: dict, robot_type: str = "unknown"):
        self.root = Path(root)
        self.fps = int(fps)
        self.robot_type = robot_type
        self.features = {k: _feature(dt, shape) for k, (dt, shape) in features.items()}
        for k, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                      ("index", "int64"), ("task_index", "int64")):
            self.features[k] = _feature(dt, (1,))
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []
        self.episode_stats: list[dict] = []
        self.total_frames = 0
        if (self.root / "meta" / "info.json").exists():
            raise ValueError(f"{self.root} already holds a dataset (meta/info.json); choose a new folder")
        (self.root / "meta").mkdir(parents=True, exist_ok=True)

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "image"]

    def add_episode(self, frames: dict, task: str, extra: dict | None = None) -> int:
        """frames: key -> array with one row per frame (images uint8 [T, H, W, 3]).
        extra: JSON-able facts kept in episodes.jsonl (e.g. the env seed)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from PIL import Image

        ep = len(self.episodes)
        lengths = {k: len(v) for k, v in frames.items()}
        n = next(iter(lengths.values()))
        if n == 0 or any(v != n for v in lengths.values()):
            raise ValueError(f"episode {ep}: every key needs the same, non-zero number of frames, got {lengths}")
        task_index = self.tasks.setdefault(task, len(self.tasks))
        cols: dict = {}
        for key, f in self.features.items():
            if key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
                continue
            if key not in frames:
                raise KeyError(f"episode {ep}: missing feature '{key}'")
            if f["dtype"] == "image":
                paths = []
                for t, img in enumerate(frames[key]):
                    rel = IMAGE_PATH.format(image_key=key, episode_index=ep, frame_index=t)
                    (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(self.root / rel, compress_level=1)
                    paths.append({"bytes": None, "path": rel})
                cols[key] = pa.array(paths, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
            elif f["dtype"] == "string":
                cols[key] = pa.array([str(v) for v in frames[key]], type=pa.string())
            else:
                arr = np.asarray(frames[key], dtype=f["dtype"]).reshape(n, -1)
                cols[key] = pa.array(list(arr), type=pa.list_(pa.from_numpy_dtype(arr.dtype)))
        cols["timestamp"] = pa.array(np.arange(n, dtype=np.float32) / self.fps)
        cols["frame_index"] = pa.array(np.arange(n, dtype=np.int64))
        cols["episode_index"] = pa.array(np.full(n, ep, dtype=np.int64))
        cols["index"] = pa.array(np.arange(self.total_frames, self.total_frames + n, dtype=np.int64))
        cols["task_index"] = pa.array(np.full(n, task_index, dtype=np.int64))
        path = self.root / DATA_PATH.format(episode_chunk=ep // CHUNKS_SIZE, episode_index=ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
        self.episodes.append({"episode_index": ep, "tasks": [task], "length": n, **(extra or {})})
        self.episode_stats.append({"episode_index": ep, "stats": {
            k: vector_stats(np.asarray(frames[k], dtype=np.float64).reshape(n, -1))
            for k, f in self.features.items() if k in frames and f["dtype"] not in ("image", "string")}})
        self.total_frames += n
        return ep

    def finalize(self, extra_info: dict | None = None) -> dict:
        from .stats import dataset_stats_from_episodes

        n_ep = len(self.episodes)
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": n_ep,
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "total_videos": 0,
            "total_chunks": max(1, (n_ep + CHUNKS_SIZE - 1) // CHUNKS_SIZE),
            "chunks_size": CHUNKS_SIZE,
            "fps": self.fps,
            "splits": {"train": f"0:{n_ep}"},
            "data_path": DATA_PATH,
            "video_path": None,
            "image_path": IMAGE_PATH,
            "features": self.features,
            **(extra_info or {}),
        }
        meta = self.root / "meta"
        _write_json(meta / "info.json", info)
        _write_jsonl(meta / "tasks.jsonl", [{"task_index": i, "task": t} for t, i in self.tasks.items()])
        _write_jsonl(meta / "episodes.jsonl", self.episodes)
        _write_jsonl(meta / "episodes_stats.jsonl", self.episode_stats)
        _write_json(meta / "stats.json", dataset_stats_from_episodes(self.episode_stats))
        return info


def vector_stats(x: np.ndarray) -> dict:
    """LeRobot's per-episode statistics of [N, D] values (lists, JSON-able)."""
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [int(len(x))]}


def _write_json(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def _write_jsonl(path: Path, rows) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
