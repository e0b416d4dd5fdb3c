"""Reading local LeRobot datasets (format v2.1 and v3.0) into a `FrameSource`.

A FrameSource holds every numeric column in memory ([N, D] float arrays, rows ordered by episode
then frame) and fetches camera frames on demand (PNG/JPEG bytes or files via Pillow, video frames
via PyAV). Everything above it (chunking, port mapping, stats, shards) works on this one shape.

v2.1: meta/info.json, meta/tasks.jsonl, meta/episodes.jsonl, data/chunk-XXX/episode_XXXXXX.parquet,
      images in the parquet ({'bytes','path'} structs) or videos/chunk-XXX/<key>/episode_XXXXXX.mp4
v3.0: meta/info.json, meta/tasks.parquet, meta/episodes/chunk-XXX/file-XXX.parquet,
      data/chunk-XXX/file-XXX.parquet (many episodes per file),
      videos/<key>/chunk-XXX/file-XXX.mp4 (many episodes per file, located by from_timestamp)
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
SUPPORTED = ("v2.0", "v2.1", "v3.0")


class DatasetError(ValueError):
    """A dataset that cannot be read as declared; the message names the file and key."""


@dataclass
class FrameSource:
    """Frames of one dataset. Row i is one frame; episodes are contiguous row ranges."""

    root: Path
    version: str
    fps: float
    features: dict  # key -> {'dtype', 'shape', ...} from info.json
    columns: dict  # numeric key -> float32/bool array [N, D]
    episode_index: np.ndarray  # [N]
    frame_index: np.ndarray  # [N]
    timestamp: np.ndarray  # [N] seconds within the episode
    task_index: np.ndarray  # [N]
    tasks: dict  # task_index -> instruction text
    episodes: dict  # episode index -> (start row, end row)
    image_refs: dict = field(default_factory=dict)  # image key -> bytes|path per row (ImageColumn or list)
    video_refs: dict = field(default_factory=dict)  # video key -> (list of file per row, offset seconds per row)
    strings: dict = field(default_factory=dict)  # string key -> list of str per row (e.g. per-frame instructions)
    info: dict = field(default_factory=dict)
    _videos: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.episode_index)

    @property
    def image_keys(self) -> list[str]:
        return sorted(list(self.image_refs) + list(self.video_refs))

    def width(self, key: str) -> int:
        return int(self.columns[key].shape[1])

    def episode_rows(self, row: int) -> tuple[int, int]:
        return self.episodes[int(self.episode_index[row])]

    def task(self, row: int) -> str:
        return self.tasks.get(int(self.task_index[row]), "")

    def image(self, key: str, row: int) -> np.ndarray:
        """HxWx3 uint8 frame of camera `key` at `row`."""
        if key in self.image_refs:
            return decode_image(self.image_refs[key][row], self.root, key, row)
        if key in self.video_refs:
            files, offsets = self.video_refs[key]
            return self._video(files[row]).frame_at(float(offsets[row]) + float(self.timestamp[row]))
        raise KeyError(f"{self.root}: no camera '{key}'; cameras: {', '.join(self.image_keys) or 'none'}")

    def image_bytes(self, key: str, row: int) -> tuple[bytes, str]:
        """The stored encoded frame and its extension (used by `pack` to copy without re-encoding)."""
        if key in self.image_refs:
            ref = self.image_refs[key][row]
            if isinstance(ref, (bytes, bytearray)):
                return bytes(ref), _sniff_ext(ref)
            if not isinstance(ref, str):  # a frame inside a webdataset shard (shards.TarRef)
                data = ref.read()
                return data, _sniff_ext(data)
            path = self.root / ref
            return path.read_bytes(), path.suffix.lstrip(".").lower() or "png"
        buf = io.BytesIO()
        from PIL import Image

        Image.fromarray(self.image(key, row)).save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), "png"

    def __getstate__(self):
        # Open video decoders stay behind when a DataLoader worker receives a pickled copy.
        return {**self.__dict__, "_videos": {}}

    def _video(self, path: Path):
        # One decoder per file and process (DataLoader workers fork: reopen in each).
        k = (os.getpid(), str(path))
        if k not in self._videos:
            self._videos[k] = VideoReader(path, self.fps)
        return self._videos[k]


def decode_image(ref, root: Path, key: str, row: int | None = None) -> np.ndarray:
    from PIL import Image

    if isinstance(ref, (bytes, bytearray)):
        src = io.BytesIO(ref)
        where = f"{root}: {key} (embedded image" + (f", row {row})" if row is not None else ")")
    elif not isinstance(ref, str):  # a frame inside a webdataset shard (shards.TarRef)
        src = io.BytesIO(ref.read())
        where = f"{ref.shard} at offset {ref.offset} ({key})"
    else:
        src = root / ref
        where = str(src)
        if not src.exists():
            raise FileNotFoundError(f"missing image file {src} (camera '{key}')")
    try:
        with Image.open(src) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001  (PIL raises many types for a bad file)
        raise DatasetError(f"cannot decode image {where}: {e}") from e


def _sniff_ext(data: bytes) -> str:
    return "jpg" if data[:3] == b"\xff\xd8\xff" else "png"


class VideoReader:
    """Random access to frames of an mp4/mkv by timestamp, with PyAV (decodes forward from the
    nearest keyframe; sequential reads reuse the open decoder)."""

    def __init__(self, path: Path, fps: float):
        try:
            import av
        except ImportError as e:
            raise DatasetError(f"{path}: this dataset stores cameras as video; reading it needs PyAV "
                               "(pip install av)") from e
        if not Path(path).exists():
            raise FileNotFoundError(f"missing video file {path}")
        self.path, self.fps = Path(path), fps
        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        self._frames: list = []  # decoded (time, rgb) since the last seek
        self._iter = None

    def frame_at(self, t: float) -> np.ndarray:
        tol = 0.5 / self.fps
        if not self._frames or t < self._frames[0][0] - tol or t > self._frames[-1][0] + 2.0:
            self._seek(t)
        while self._frames[-1][0] < t - tol:
            if not self._decode_one():
                break
        best = min(self._frames, key=lambda f: abs(f[0] - t))
        if abs(best[0] - t) > 2 * tol:
            raise DatasetError(f"{self.path}: no frame near t={t:.3f}s (closest {best[0]:.3f}s)")
        return best[1]

    def _seek(self, t: float) -> None:
        tb = self.stream.time_base
        self.container.seek(max(0, int(t / tb)), stream=self.stream, backward=True, any_frame=False)
        self._iter = self.container.decode(self.stream)
        self._frames = []
        self._decode_one()

    def _decode_one(self) -> bool:
        try:
            f = next(self._iter)
        except StopIteration:
            if not self._frames:
                raise DatasetError(f"{self.path}: no frames decoded")
            return False
        self._frames.append((float(f.pts * self.stream.time_base), f.to_ndarray(format="rgb24")))
        self._frames = self._frames[-64:]
        return True


# ---------------------------------------------------------------------------------------------

def open_lerobot(root) -> FrameSource:
    """Read a local LeRobot folder; raise FileNotFoundError/DatasetError naming the file and key."""
    root = Path(root)
    info_path = root / "meta" / "info.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{root} is not a LeRobot dataset: missing {info_path}")
    info = _read_json(info_path)
    version = str(info.get("codebase_version", ""))
    if version not in SUPPORTED:
        raise DatasetError(f"{info_path}: codebase_version '{version}' is not supported (read: {', '.join(SUPPORTED)})")
    for k in ("features", "fps", "data_path"):
        if k not in info:
            raise DatasetError(f"{info_path}: missing key '{k}'")
    if version == "v3.0":
        tables, episodes, tasks, video_files = _read_v3(root, info)
    else:
        tables, episodes, tasks, video_files = _read_v2(root, info)
    return _assemble(root, version, info, tables, episodes, tasks, video_files)


def _read_v2(root, info):
    import pyarrow.parquet as pq

    meta = root / "meta"
    tasks = {int(r["task_index"]): r["task"] for r in _read_jsonl(meta / "tasks.jsonl")}
    episodes = _read_jsonl(meta / "episodes.jsonl")
    if not episodes:
        raise DatasetError(f"{meta / 'episodes.jsonl'}: no episodes")
    chunks_size = int(info.get("chunks_size", 1000))
    video_keys = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    tables, eps, video_files = [], [], {k: [] for k in video_keys}
    for e in episodes:
        ep = int(e["episode_index"])
        if int(e.get("length", 1)) == 0:
            raise DatasetError(f"{meta / 'episodes.jsonl'}: episode {ep} is empty (length 0)")
        path = root / info["data_path"].format(episode_chunk=ep // chunks_size, episode_index=ep)
        if not path.exists():
            raise FileNotFoundError(f"missing data file {path} (episode {ep} of {meta / 'episodes.jsonl'})")
        t = pq.read_table(path)
        if t.num_rows == 0:
            raise DatasetError(f"{path}: episode {ep} has no frames")
        tables.append((path, t))
        eps.append(ep)
        for k in video_keys:
            vp = root / info["video_path"].format(episode_chunk=ep // chunks_size, video_key=k, episode_index=ep)
            video_files[k].append((vp, 0.0, t.num_rows))
    return tables, eps, tasks, video_files


def _read_v3(root, info):
    import pandas as pd
    import pyarrow.parquet as pq

    meta = root / "meta"
    tpath = meta / "tasks.parquet"
    if not tpath.exists():
        raise FileNotFoundError(f"missing {tpath}")
    tdf = pd.read_parquet(tpath)
    texts = tdf["task"].tolist() if "task" in tdf.columns else [str(i) for i in tdf.index]
    tasks = {int(i): t for i, t in zip(tdf["task_index"].tolist(), texts)}
    ep_files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
    if not ep_files:
        raise FileNotFoundError(f"missing episode metadata: no {meta / 'episodes'}/chunk-*/file-*.parquet")
    edf = pd.concat([pd.read_parquet(p) for p in ep_files], ignore_index=True).sort_values("episode_index")
    if len(edf) == 0:
        raise DatasetError(f"{meta / 'episodes'}: no episodes")
    video_keys = [k for k, f in info["features"].items() if f.get("dtype") == "video"]
    files: dict = {}
    for _, e in edf.iterrows():
        ep = int(e["episode_index"])
        if int(e.get("length", 1)) == 0:
            raise DatasetError(f"{meta / 'episodes'}: episode {ep} is empty (length 0)")
        path = root / info["data_path"].format(chunk_index=int(e["data/chunk_index"]), file_index=int(e["data/file_index"]))
        if path not in files:
            if not path.exists():
                raise FileNotFoundError(f"missing data file {path} (episode {ep})")
            files[path] = pq.read_table(path)
    tables, eps, video_files = [], [], {k: [] for k in video_keys}
    import pyarrow.compute as pc

    for _, e in edf.iterrows():
        ep = int(e["episode_index"])
        path = root / info["data_path"].format(chunk_index=int(e["data/chunk_index"]), file_index=int(e["data/file_index"]))
        t = files[path]
        t = t.filter(pc.equal(t.column("episode_index"), ep))
        if t.num_rows == 0:
            raise DatasetError(f"{path}: episode {ep} has no frames")
        tables.append((path, t))
        eps.append(ep)
        for k in video_keys:
            vp = root / info["video_path"].format(video_key=k, chunk_index=int(e[f"videos/{k}/chunk_index"]),
                                                  file_index=int(e[f"videos/{k}/file_index"]))
            video_files[k].append((vp, float(e[f"videos/{k}/from_timestamp"]), t.num_rows))
    return tables, eps, tasks, video_files


def _assemble(root, version, info, tables, eps, tasks, video_files) -> FrameSource:
    features = info["features"]
    numeric = [k for k, f in features.items() if f.get("dtype") not in ("image", "video", "string") and k not in INDEX_COLUMNS]
    images = [k for k, f in features.items() if f.get("dtype") == "image"]
    string_keys = [k for k, f in features.items() if f.get("dtype") == "string"]
    strings = {k: [] for k in string_keys}
    cols = {k: [] for k in numeric}
    refs = {k: [] for k in images}
    idx = {k: [] for k in INDEX_COLUMNS}
    episodes, start = {}, 0
    for (path, t), ep in zip(tables, eps):
        n = t.num_rows
        names = set(t.column_names)
        for k in numeric:
            if k not in names:
                raise DatasetError(f"{path}: missing column '{k}' (declared in meta/info.json features)")
            arr = _numeric(t.column(k), n, path, k)
            want = int(np.prod(features[k].get("shape") or [1]))
            if arr.shape[1] != want:
                raise DatasetError(f"{path}: column '{k}' has width {arr.shape[1]} but meta/info.json declares shape {features[k].get('shape')}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                bad = int(np.argwhere(~np.isfinite(arr))[0][0])
                raise DatasetError(f"{path}: column '{k}' has a non-finite value (NaN/inf) at frame {bad}")
            cols[k].append(arr)
        for k in string_keys:
            if k not in names:
                raise DatasetError(f"{path}: missing column '{k}' (declared in meta/info.json features)")
            strings[k].extend("" if v is None else str(v) for v in t.column(k).to_pylist())
        for k in images:
            if k not in names:
                raise DatasetError(f"{path}: missing image column '{k}'")
            refs[k].append(_image_column(t.column(k), path, k))
        for k in INDEX_COLUMNS:
            if k in names:
                idx[k].append(t.column(k).to_numpy().reshape(n, -1)[:, 0])
            elif k == "timestamp":
                idx[k].append(np.arange(n, dtype=np.float64) / float(info["fps"]))
            elif k == "frame_index":
                idx[k].append(np.arange(n))
            elif k == "task_index":
                idx[k].append(np.zeros(n, dtype=np.int64))
            elif k == "episode_index":
                idx[k].append(np.full(n, ep))
        if (np.asarray(idx["episode_index"][-1]) != ep).any():
            raise DatasetError(f"{path}: rows of another episode than {ep} (column 'episode_index')")
        episodes[ep] = (start, start + n)
        start += n
    columns = {k: np.concatenate(v).astype(np.float32 if np.concatenate(v).dtype.kind in "fiu" else bool)
               for k, v in cols.items()}
    refs = {k: ImageColumn(parts) for k, parts in refs.items()}
    video_refs = {}
    for k, per_ep in video_files.items():
        fl, off = [], []
        for vp, t0, n in per_ep:
            fl += [vp] * n
            off += [t0] * n
        video_refs[k] = (fl, np.asarray(off))
    ti = np.concatenate(idx["task_index"]).astype(np.int64)
    unknown = sorted(set(ti.tolist()) - set(tasks))
    if unknown:
        raise DatasetError(f"{root}: frames use task_index {unknown[:5]} not listed in the tasks file")
    return FrameSource(root=root, version=version, fps=float(info["fps"]), features=features, columns=columns,
                       episode_index=np.concatenate(idx["episode_index"]).astype(np.int64),
                       frame_index=np.concatenate(idx["frame_index"]).astype(np.int64),
                       timestamp=np.concatenate(idx["timestamp"]).astype(np.float64),
                       task_index=ti, tasks=tasks, episodes=episodes, image_refs=refs, video_refs=video_refs,
                       strings=strings, info=info)


def _numeric(col, n, path, key) -> np.ndarray:
    import pyarrow as pa

    col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        if col.null_count:
            raise DatasetError(f"{path}: column '{key}' has missing (null) values")
        flat = col.flatten().to_numpy(zero_copy_only=False)
        if n and len(flat) % n:
            raise DatasetError(f"{path}: column '{key}' has rows of different widths")
        return flat.reshape(n, -1)
    if col.null_count:
        raise DatasetError(f"{path}: column '{key}' has missing (null) values")
    return col.to_numpy(zero_copy_only=False).reshape(n, -1)


class ImageColumn:
    """The frames of one camera, row by row, as stored: embedded image bytes, or a file path relative
    to the dataset root (older GraphVLA recordings). Kept as Arrow arrays (one per episode table),
    not as Python objects: memory is the encoded frames, shared by forked DataLoader workers."""

    def __init__(self, parts: list):
        self.parts = parts  # [(bytes array or None, path array or None)]
        self.ends = np.cumsum([len(b if b is not None else p) for b, p in parts]) if parts else np.zeros(0, int)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, row):
        row = int(row)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"frame row {row} out of range ({len(self)} frames)")
        i = int(np.searchsorted(self.ends, row, side="right"))
        j = row - (int(self.ends[i - 1]) if i else 0)
        data, path = self.parts[i]
        if data is not None and data[j].is_valid:
            return data[j].as_py()
        return path[j].as_py()


def _image_column(col, path, key) -> tuple:
    """(bytes array, path array) of an image column: a {bytes, path} struct, binary or string."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    if pa.types.is_struct(col.type):
        names = [col.type.field(i).name for i in range(col.type.num_fields)]
        data = col.field("bytes") if "bytes" in names else None
        paths = col.field("path") if "path" in names else None
        if data is not None and len(data):  # an empty bytes value counts as missing
            data = pc.if_else(pc.greater(pc.binary_length(data), 0), data, pa.nulls(len(data), data.type))
    elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        data, paths = col, None
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        data, paths = None, col
    else:
        raise DatasetError(f"{path}: image column '{key}' has type {col.type} (expected image bytes or a path)")
    have = np.zeros(len(col), dtype=bool)
    for a in (data, paths):
        if a is not None:
            have |= a.is_valid().to_numpy(zero_copy_only=False)
    if not have.all():
        raise DatasetError(f"{path}: column '{key}' has a frame with neither image bytes nor a path "
                           f"(frame {int(np.argmin(have))})")
    return data, paths


def read_episode_records(root) -> list[dict]:
    """The episodes' metadata rows (episode_index, tasks, length and whatever the recorder kept,
    e.g. seed, env_task, variant, scene), from meta/episodes.jsonl (v2.x) or meta/episodes/*.parquet
    (v3.0, without the per-episode statistics columns); [] when the folder has neither."""
    root = Path(root)
    jsonl = root / "meta" / "episodes.jsonl"
    if jsonl.is_file():
        return _read_jsonl(jsonl)
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        return []
    import pyarrow.parquet as pq

    rows = []
    for f in files:
        t = pq.read_table(f)
        t = t.select([c for c in t.column_names if not c.startswith("stats/")])
        rows += t.to_pylist()
    return sorted(rows, key=lambda r: int(r["episode_index"]))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from e


def _read_jsonl(path: Path) -> list:
    if not path.exists():
        raise FileNotFoundError(f"missing {path}")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{i}: invalid JSON ({e})") from e
    return rows
