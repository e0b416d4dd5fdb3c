"""Writing LeRobot datasets that LeRobot itself opens as they are: v2.1 (LeRobot 0.3.x) or v3.0
(LeRobot >= 0.4). docs/data.md ("LeRobot compatibility") lists what each version holds.

v2.1  meta/info.json  meta/tasks.jsonl  meta/episodes.jsonl  meta/episodes_stats.jsonl  meta/stats.json
      data/chunk-000/episode_000000.parquet             (one file per episode)
v3.0  meta/info.json  meta/tasks.parquet  meta/episodes/chunk-000/file-000.parquet  meta/stats.json
      data/chunk-000/file-000.parquet                   (many episodes per file, a new file past
                                                         `data_files_size_in_mb`)

What makes the folders LeRobot's (each point is a way LeRobot failed on the older recordings):
- Camera frames are PNG bytes embedded in the parquet, in Hugging Face `datasets`' Image column
  ({bytes, path} struct), and the parquet schema carries `datasets`' feature metadata (the
  `huggingface` key) so the column loads as an Image, not as a dict. The struct's path is the
  frame's name relative to the dataset root; nothing is read from it, so the folder can be moved.
- Vectors are fixed-size lists, features of shape [1] scalars, as LeRobot's own
  `get_hf_features_from_features` declares them.
- Every feature has `names` (cameras ["height", "width", "channels"], which LeRobot reads to find
  the channel axis); the five index columns keep LeRobot's own `null`.
- Both stats files hold camera statistics in LeRobot's shape: per channel, (3, 1, 1), of the
  frames scaled to [0, 1], next to every vector's and index column's.
A feature LeRobot cannot represent is refused before anything is written, with its key named.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from ..fileio import TMP_PREFIX, write_text_atomic
from .stats import dataset_stats_from_episodes

VERSIONS = ("v2.1", "v3.0")
CODEBASE_VERSION = "v2.1"  # the default
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
IMAGE_PATH = "images/{image_key}/episode_{episode_index:06d}/frame_{frame_index:06d}.png"
V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_TASKS_PATH = "meta/tasks.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
VIDEO_CODEC = {"codec": "h264", "encoder": "libx264", "pix_fmt": "yuv420p", "options": {"crf": "18", "g": "2", "bf": "0"}}
DATA_FILE_SIZE_MB = 100  # LeRobot 0.4's default size of one data file
VIDEO_FILE_SIZE_MB = 500
INDEX_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64",
                  "index": "int64", "task_index": "int64"}
NUMERIC_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                  "uint8", "uint16", "uint32", "uint64", "bool")
IMAGE_NAMES = ["height", "width", "channels"]


def check_format(version: str) -> str:
    """`version` if the writer writes it, else ValueError listing the choices."""
    if version not in VERSIONS:
        raise ValueError(f"LeRobot format '{version}' is not written (choose {' or '.join(VERSIONS)})")
    return version


class FeatureError(ValueError):
    """A feature LeRobot cannot represent; the message names the key."""


def check_feature(key, dtype, shape, names=None) -> dict:
    """The info.json entry of one feature, or FeatureError naming `key` and what LeRobot needs."""
    where = f"feature '{key}'"
    if not isinstance(key, str) or not key:
        raise FeatureError(f"feature key {key!r}: a LeRobot feature key is a non-empty string")
    if "/" in key:
        raise FeatureError(f"{where}: LeRobot feature keys cannot contain '/' (it separates the statistics "
                           "columns of meta/episodes); use '.' as LeRobot's keys do")
    if key in INDEX_FEATURES:
        raise FeatureError(f"{where}: '{key}' is one of LeRobot's index columns "
                           f"({', '.join(INDEX_FEATURES)}); the writer makes it")
    try:
        shape = [int(s) for s in shape]
    except (TypeError, ValueError):
        raise FeatureError(f"{where}: shape must be a list of integers, got {shape!r}") from None
    if not shape or any(s < 1 for s in shape):
        raise FeatureError(f"{where}: shape must be positive sizes, got {shape}")
    if dtype == "image":
        if len(shape) != 3 or shape[2] != 3:
            raise FeatureError(f"{where}: a LeRobot image is [height, width, 3] (RGB), got shape {shape}")
        names = IMAGE_NAMES if names is None else list(names)
        if names != IMAGE_NAMES:
            raise FeatureError(f"{where}: image names must be {IMAGE_NAMES} (LeRobot reads the channel axis "
                               f"from them), got {names}")
    elif dtype == "string":
        if shape != [1]:
            raise FeatureError(f"{where}: a string feature has shape [1], got {shape}")
        names = [key] if names is None else list(names)
    elif dtype in NUMERIC_DTYPES:
        if len(shape) != 1:
            raise FeatureError(f"{where}: GraphVLA writes numeric features as vectors (shape [D]); "
                               f"shape {shape} would be a LeRobot Array{len(shape)}D, which its readers here "
                               "do not take: flatten it")
        names = [f"{key.rsplit('.', 1)[-1]}_{i}" for i in range(shape[0])] if names is None else list(names)
        if len(names) != shape[0] or not all(isinstance(n, str) and n for n in names):
            raise FeatureError(f"{where}: names must be {shape[0]} non-empty strings (one per dim), got {names}")
    elif dtype == "video":
        raise FeatureError(f"{where}: declare cameras as 'image'; the writer's `video=True` (graphvla data "
                           "metaworld --video) stores them as video")
    else:
        raise FeatureError(f"{where}: dtype '{dtype}' cannot be represented in a LeRobot dataset "
                           f"(use image, string or one of {', '.join(NUMERIC_DTYPES)})")
    return {"dtype": dtype, "shape": shape, "names": names}


def hf_feature(feature: dict, version: str) -> dict:
    """Hugging Face `datasets`' description of one column (what the parquet schema metadata holds):
    v2.1 is read by datasets 3.x ("Sequence"), v3.0 by datasets 4.x ("List")."""
    dtype, shape = feature["dtype"], feature["shape"]
    if dtype == "image":
        return {"_type": "Image"}
    value = {"dtype": dtype, "_type": "Value"}
    if list(shape) == [1]:
        return value
    return {"feature": value, "length": int(shape[0]), "_type": "Sequence" if version == "v2.1" else "List"}


def arrow_type(feature: dict):
    import pyarrow as pa

    dtype, shape = feature["dtype"], feature["shape"]
    if dtype == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if dtype == "string":
        return pa.string()
    item = pa.from_numpy_dtype(np.dtype(dtype))
    return item if list(shape) == [1] else pa.list_(item, int(shape[0]))


class LeRobotWriter:
    """Collects episodes and writes them as a LeRobot folder of `version` v2.1 or v3.0.

    features: key -> (dtype, shape) or (dtype, shape, names): per-frame vectors ('float32', (4,)),
    scalars (shape (1,)), strings ('string', (1,)) and cameras ('image', (H, W, 3)). Every feature
    is checked before the folder is made."""

    def __init__(self, root, fps: int, features: dict, robot_type: str = "unknown", version: str = CODEBASE_VERSION,
                 data_files_size_in_mb: float = DATA_FILE_SIZE_MB, video: bool = False):
        self.version = check_format(version)
        self.root = Path(root)
        self.fps = int(fps)
        self.robot_type = robot_type
        self.features = {k: check_feature(k, *spec) for k, spec in features.items()}
        if video:
            for k, f in self.features.items():
                if f["dtype"] == "image":
                    if f["shape"][0] % 2 or f["shape"][1] % 2:
                        raise FeatureError(f"feature '{k}': {VIDEO_CODEC['codec']} video ({VIDEO_CODEC['pix_fmt']}) needs "
                                           f"an even height and width, got {f['shape'][:2]}")
                    f["dtype"] = "video"
                    f["info"] = {"video.height": f["shape"][0], "video.width": f["shape"][1],
                                 "video.codec": VIDEO_CODEC["codec"], "video.pix_fmt": VIDEO_CODEC["pix_fmt"],
                                 "video.is_depth_map": False, "video.fps": int(fps), "video.channels": 3,
                                 "has_audio": False}
        for k, dt in INDEX_FEATURES.items():
            self.features[k] = {"dtype": dt, "shape": [1], "names": None}
        if (self.root / "meta" / "info.json").exists():
            raise ValueError(f"{self.root} already holds a dataset (meta/info.json); choose a new folder")
        self.schema = self._schema()
        self.tasks: dict[str, int] = {}
        self.episodes: list[dict] = []
        self.episode_stats: list[dict] = []
        self.total_frames = 0
        self.data_file_bytes = float(data_files_size_in_mb) * 1024 * 1024
        self._file = (0, 0)  # v3.0: (chunk, file) being written
        self._writer = None  # v3.0: the open ParquetWriter and its temporary path
        self._file_bytes = 0
        self._videos: dict = {}  # v3.0: camera -> its open VideoFile (every episode back to back)
        (self.root / "meta").mkdir(parents=True, exist_ok=True)

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "image"]

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    def _columns(self) -> list[str]:
        return [k for k in self.features if k not in self.video_keys]

    def _schema(self):
        import pyarrow as pa

        hf = {k: hf_feature(self.features[k], self.version) for k in self._columns()}
        fields = [pa.field(k, arrow_type(self.features[k])) for k in self._columns()]
        return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": hf}})})

    # -- episodes ------------------------------------------------------------------------------

    def add_episode(self, frames: dict, task: str, extra: dict | None = None) -> int:
        """frames: key -> array with one row per frame (images uint8 [T, H, W, 3]).
        extra: JSON-able facts kept with the episode (e.g. the env seed)."""
        import pyarrow as pa

        ep = len(self.episodes)
        lengths = {k: len(v) for k, v in frames.items()}
        n = next(iter(lengths.values()), 0)
        if n == 0 or any(v != n for v in lengths.values()):
            raise ValueError(f"episode {ep}: every key needs the same, non-zero number of frames, got {lengths}")
        unknown = sorted(set(frames) - set(self.features))
        if unknown:
            raise KeyError(f"episode {ep}: '{unknown[0]}' is not a declared feature ({', '.join(self._data_keys())})")
        cols: dict = {}
        stats: dict = {}
        for key in self._data_keys():
            f = self.features[key]
            if key not in frames:
                raise KeyError(f"episode {ep}: missing feature '{key}'")
            if f["dtype"] in ("image", "video"):
                imgs = np.asarray(frames[key])
                if imgs.dtype != np.uint8 or list(imgs.shape[1:]) != f["shape"]:
                    raise ValueError(f"episode {ep}: '{key}' must be uint8 frames of shape {f['shape']}, "
                                     f"got {imgs.dtype} {list(imgs.shape[1:])}")
                if f["dtype"] == "video":
                    cols[key] = imgs  # encoded by _emit
                else:
                    cols[key] = pa.array([{"bytes": _png(img), "path": None} for img in imgs], type=arrow_type(f))
                stats[key] = image_stats(imgs)
            elif f["dtype"] == "string":
                cols[key] = pa.array([str(v) for v in frames[key]], type=pa.string())
            else:
                arr = np.asarray(frames[key], dtype=f["dtype"]).reshape(n, -1)
                if arr.shape[1] != f["shape"][0]:
                    raise ValueError(f"episode {ep}: '{key}' has width {arr.shape[1]}, declared {f['shape']}")
                cols[key] = _vector_column(arr, f)
                stats[key] = vector_stats(arr.astype(np.float64))
        return self._emit(cols, n, task, extra, stats)

    def add_episode_table(self, table, task: str, extra: dict | None, stats: dict) -> int:
        """Append an episode another LeRobotWriter wrote (its parquet `table` and episode stats),
        as it is: frames, bytes and values unchanged; episode, index and task columns renumbered."""
        missing = [k for k in self._data_keys() if k not in table.column_names]
        if missing:
            raise ValueError(f"episode table lacks the feature '{missing[0]}'")
        cols = {k: table.column(k).combine_chunks() for k in self._data_keys()}
        for k in self.video_keys:  # PNG frames of an image dataset, encoded into this one's video
            cols[k] = np.stack([_unpng(c["bytes"]) for c in cols[k].to_pylist()])
        stats = {k: v for k, v in stats.items() if k not in INDEX_FEATURES}
        return self._emit(cols, table.num_rows, task, extra, stats)

    def _data_keys(self) -> list[str]:
        return [k for k in self.features if k not in INDEX_FEATURES]

    def _emit(self, cols: dict, n: int, task: str, extra, stats: dict) -> int:
        import pyarrow as pa

        ep = len(self.episodes)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        for key in self.image_keys:  # the frame's name relative to the root (bytes are what is read)
            data = cols[key].field("bytes")
            paths = pa.array([IMAGE_PATH.format(image_key=key, episode_index=ep, frame_index=t) for t in range(n)])
            cols[key] = pa.StructArray.from_arrays([data, paths], fields=list(arrow_type(self.features[key])))
        index = {
            "timestamp": np.arange(n, dtype=np.float32) / np.float32(self.fps),
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, ep, dtype=np.int64),
            "index": np.arange(self.total_frames, self.total_frames + n, dtype=np.int64),
            "task_index": np.full(n, task_index, dtype=np.int64),
        }
        for k, v in index.items():
            cols[k] = pa.array(v)
            stats[k] = vector_stats(v.astype(np.float64).reshape(n, 1))
        table = pa.table([cols[k] for k in self._columns()], schema=self.schema)
        meta = {"episode_index": ep, "tasks": [task], "length": n}
        if self.version == "v2.1":
            _write_parquet(table, self.root / DATA_PATH.format(episode_chunk=ep // CHUNKS_SIZE, episode_index=ep))
            for key in self.video_keys:
                video = VideoFile(self.root / VIDEO_PATH.format(episode_chunk=ep // CHUNKS_SIZE, video_key=key,
                                                                episode_index=ep), self.fps, self.features[key])
                video.write(cols[key])
                video.close()
        else:
            meta.update(self._append_v3(table))
            meta["dataset_from_index"] = self.total_frames
            meta["dataset_to_index"] = self.total_frames + n
            for key in self.video_keys:
                if key not in self._videos:
                    self._videos[key] = VideoFile(self.root / V3_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0),
                                                  self.fps, self.features[key])
                t0 = self._videos[key].write(cols[key])
                meta.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                             f"videos/{key}/from_timestamp": t0, f"videos/{key}/to_timestamp": t0 + n / self.fps})
        self.episodes.append({**meta, **(extra or {})})
        self.episode_stats.append({"episode_index": ep, "stats": {k: stats[k] for k in self.features if k in stats}})
        self.total_frames += n
        return ep

    def _append_v3(self, table) -> dict:
        import pyarrow.parquet as pq

        if self._writer is not None and self._file_bytes + table.nbytes > self.data_file_bytes:
            self._close_file()
            chunk, file = self._file
            self._file = (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)
        if self._writer is None:
            final = self.root / V3_DATA_PATH.format(chunk_index=self._file[0], file_index=self._file[1])
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
            self._writer = (pq.ParquetWriter(tmp, self.schema), tmp, final)
            self._file_bytes = 0
        self._writer[0].write_table(table)
        self._file_bytes += table.nbytes
        return {"data/chunk_index": self._file[0], "data/file_index": self._file[1]}

    def _close_file(self) -> None:
        if self._writer is not None:
            w, tmp, final = self._writer
            w.close()
            os.replace(tmp, final)
            self._writer = None

    # -- metadata ------------------------------------------------------------------------------

    def finalize(self, extra_info: dict | None = None) -> dict:
        """Write the metadata (meta/info.json last: a folder without it is an unfinished recording)."""
        n_ep = len(self.episodes)
        if n_ep == 0:
            raise ValueError(f"{self.root}: no episode was added; nothing to finalize")
        meta = self.root / "meta"
        stats = dataset_stats_from_episodes(self.episode_stats)
        info = {
            "codebase_version": self.version,
            "robot_type": self.robot_type,
            "total_episodes": n_ep,
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
        }
        if self.version == "v2.1":
            info.update({"total_videos": n_ep * len(self.video_keys),
                         "total_chunks": max(1, (n_ep + CHUNKS_SIZE - 1) // CHUNKS_SIZE),
                         "chunks_size": CHUNKS_SIZE, "fps": self.fps, "splits": {"train": f"0:{n_ep}"},
                         "data_path": DATA_PATH, "video_path": VIDEO_PATH if self.video_keys else None,
                         "image_path": IMAGE_PATH})
            _write_jsonl(meta / "tasks.jsonl", [{"task_index": i, "task": t} for t, i in self.tasks.items()])
            _write_jsonl(meta / "episodes.jsonl", self.episodes)
            _write_jsonl(meta / "episodes_stats.jsonl", self.episode_stats)
        else:
            self._close_file()
            for video in self._videos.values():
                video.close()
            info.update({"chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": self.data_file_bytes / 2 ** 20,
                         "video_files_size_in_mb": VIDEO_FILE_SIZE_MB, "fps": self.fps,
                         "splits": {"train": f"0:{n_ep}"}, "data_path": V3_DATA_PATH,
                         "video_path": V3_VIDEO_PATH if self.video_keys else None})
            self._write_v3_meta()
        info["features"] = self.features
        info.update(extra_info or {})
        _write_json(meta / "stats.json", stats)
        _write_json(meta / "info.json", info)
        return info

    def _write_v3_meta(self) -> None:
        import pandas as pd
        import pyarrow as pa

        tasks = pd.DataFrame({"task_index": list(self.tasks.values())}, index=list(self.tasks))
        tmp = self.root / "meta" / f"{TMP_PREFIX}tasks.parquet-{uuid.uuid4().hex[:8]}"
        tasks.to_parquet(tmp)
        os.replace(tmp, self.root / V3_TASKS_PATH)
        rows = []
        for e, s in zip(self.episodes, self.episode_stats):
            row = dict(e)
            row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
            for key, st in s["stats"].items():
                for name, value in st.items():
                    row[f"stats/{key}/{name}"] = value
            rows.append(row)
        _write_parquet(pa.Table.from_pylist(rows), self.root / V3_EPISODES_PATH.format(chunk_index=0, file_index=0))


class VideoFile:
    """One camera's frames encoded into an mp4 (H.264, yuv420p, a keyframe every 2 frames as
    LeRobot encodes for random access), frame i at time i / fps. Written under a temporary name and
    renamed into place when closed."""

    def __init__(self, path: Path, fps: int, feature: dict):
        import av

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")
        self.container = av.open(str(self.tmp), "w", format="mp4")
        self.stream = self.container.add_stream(VIDEO_CODEC["encoder"], rate=int(fps), options=VIDEO_CODEC["options"])
        self.stream.height, self.stream.width = feature["shape"][0], feature["shape"][1]
        self.stream.pix_fmt = VIDEO_CODEC["pix_fmt"]
        self.fps, self.frames = int(fps), 0

    def write(self, frames: np.ndarray) -> float:
        """Append frames; returns the time of the first one in the file (seconds)."""
        import av

        start = self.frames / self.fps
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = self.frames
            self.frames += 1
            for packet in self.stream.encode(vf):
                self.container.mux(packet)
        return start

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)


def _unpng(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _png(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _vector_column(arr: np.ndarray, feature: dict):
    import pyarrow as pa

    t = arrow_type(feature)
    if list(feature["shape"]) == [1]:
        return pa.array(arr[:, 0], type=t)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), type=t.value_type), int(feature["shape"][0]))


def vector_stats(x: np.ndarray) -> dict:
    """LeRobot's per-episode statistics of [N, D] values (lists, JSON-able)."""
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [int(len(x))]}


def image_stats(frames: np.ndarray) -> dict:
    """LeRobot's per-episode statistics of uint8 [N, H, W, 3] frames: per channel, of the values
    scaled to [0, 1], each of shape (3, 1, 1) (over every frame and pixel, not a sample)."""
    x = frames.reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
    shaped = lambda v: v.reshape(-1, 1, 1).tolist()  # noqa: E731
    return {"min": shaped(x.min(0)), "max": shaped(x.max(0)), "mean": shaped(x.mean(0)), "std": shaped(x.std(0)),
            "count": [int(len(frames))]}


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _write_json(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def _write_jsonl(path: Path, rows) -> None:
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
