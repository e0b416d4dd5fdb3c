"""Cameras stored as video (LeRobot v2.1: one file per episode; v3.0: many episodes per file,
located by from_timestamp), decoded with PyAV. Lossless FFV1 makes the frames exact."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import require_module

from graphvla.data.api import load_data
from graphvla.data.lerobot import DatasetError, open_lerobot

from test_data_layer import assert_items_equal, make_spec, mw_root, raw_frames  # noqa: F401  (fixture)

CAM = "observation.images.corner"


def encode(path, frames, fps):
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    out = av.open(str(path), "w")
    stream = out.add_stream("ffv1", rate=int(fps))
    stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "bgr0"
    for i, f in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
        vf.pts = i
        for p in stream.encode(vf):
            out.mux(p)
    for p in stream.encode():
        out.mux(p)
    out.close()


def video_features(info, shape):
    feats = dict(info["features"])
    feats[CAM] = {"dtype": "video", "shape": shape, "names": ["height", "width", "channel"]}
    return feats


def to_v21_video(src_root, out):
    """The PNG dataset with its camera moved into one video per episode."""
    import pyarrow.parquet as pq

    shutil.copytree(src_root / "meta", out / "meta")
    src = open_lerobot(src_root)
    info = json.loads((src_root / "meta" / "info.json").read_text())
    info["features"] = video_features(info, info["features"][CAM]["shape"])
    info["video_path"] = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mkv"
    (out / "meta" / "info.json").write_text(json.dumps(info))
    for ep, (s, e) in src.episodes.items():
        rel = f"data/chunk-000/episode_{ep:06d}.parquet"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pq.read_table(src_root / rel).drop([CAM]), out / rel)
        encode(out / info["video_path"].format(episode_chunk=0, video_key=CAM, episode_index=ep),
               [src.image(CAM, i) for i in range(s, e)], src.fps)


def to_v30_video(src_root, out):
    """LeRobot v3.0: one data file and one video file holding every episode back to back."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = open_lerobot(src_root)
    df = raw_frames(src_root).drop(columns=[CAM])
    (out / "data" / "chunk-000").mkdir(parents=True)
    (out / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    pq.write_table(pa.table({k: pa.array(df[k].tolist()) for k in df.columns}), out / "data" / "chunk-000" / "file-000.parquet")
    frames, eps, t0 = [], [], 0.0
    for ep, (s, e) in src.episodes.items():
        frames += [src.image(CAM, i) for i in range(s, e)]
        eps.append({"episode_index": ep, "tasks": [src.tasks[int(src.task_index[s])]], "length": e - s,
                    "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": s, "dataset_to_index": e,
                    f"videos/{CAM}/chunk_index": 0, f"videos/{CAM}/file_index": 0,
                    f"videos/{CAM}/from_timestamp": t0, f"videos/{CAM}/to_timestamp": t0 + (e - s) / src.fps})
        t0 += (e - s) / src.fps
    encode(out / "videos" / CAM / "chunk-000" / "file-000.mkv", frames, src.fps)
    pd.DataFrame(eps).to_parquet(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pd.DataFrame({"task_index": list(src.tasks)}, index=pd.Index(list(src.tasks.values()), name="task")).to_parquet(
        out / "meta" / "tasks.parquet")
    info = json.loads((src_root / "meta" / "info.json").read_text())
    info.update(codebase_version="v3.0", features=video_features(info, info["features"][CAM]["shape"]),
                data_path="data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                video_path="videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mkv")
    (out / "meta" / "info.json").write_text(json.dumps(info))


@pytest.mark.parametrize("convert", [to_v21_video, to_v30_video], ids=["v2.1", "v3.0"])
def test_video_frames_match_the_pngs(mw_root, tmp_path, convert):  # noqa: F811
    require_module("av", "pip install av (a test dependency: pip install -e .[test])")
    out = tmp_path / "video"
    convert(mw_root, out)
    spec = make_spec(tmp_path)
    a, b = load_data(mw_root, spec).streams["action"], load_data(out, spec).streams["action"]
    assert len(a) == len(b)
    # random access in any order, across episode boundaries (v3.0: offsets into one file)
    for i in [0, 200, 5, 46, 47, 48, 120, 119, len(a) - 1, 3]:
        assert_items_equal(a[i], b[i])


def test_video_without_pyav_is_a_clear_error(mw_root, tmp_path, monkeypatch):  # noqa: F811
    require_module("av", "pip install av (a test dependency: pip install -e .[test])")
    out = tmp_path / "video"
    to_v21_video(mw_root, out)
    import builtins

    real_import = builtins.__import__

    def no_av(name, *args, **kwargs):
        if name == "av":
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    ds = load_data(out, make_spec(tmp_path)).streams["action"]
    with pytest.raises(DatasetError, match=r"episode_000000.mkv: this dataset stores cameras as video; .*pip install av"):
        ds[0]
    (out / "videos" / "chunk-000" / CAM / "episode_000001.mkv").unlink()
    monkeypatch.setattr(builtins, "__import__", real_import)
    n0 = open_lerobot(out).episodes[1][0]
    with pytest.raises(FileNotFoundError, match="episode_000001.mkv"):
        ds[n0]
    assert torch.is_tensor(ds[0]["images"])
