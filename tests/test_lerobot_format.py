"""The datasets GraphVLA writes are LeRobot's (v2.1 and v3.0), checked without LeRobot: the parquet
schema carries `datasets`' Image feature, every feature has names, both stats files hold camera
statistics in LeRobot's (3, 1, 1) shape, frames are embedded (nothing resolves from the working
directory), the v3.0 layout is consistent, reading back gives what was written, older path-only
recordings still read, and a feature LeRobot cannot represent is refused by key with nothing
written. scripts/check_lerobot.sh runs LeRobot itself on a fresh recording."""
from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import require_metaworld, require_module
from PIL import Image

from graphvla.data.lerobot import DatasetError, open_lerobot, read_episode_records
from graphvla.data.lerobot_write import IMAGE_PATH, FeatureError, LeRobotWriter

CAM = "observation.images.front"
FEATURES = {
    CAM: ("image", (12, 10, 3)),
    "observation.state": ("float32", (3,), ["x", "y", "gripper"]),
    "action": ("float32", (2,)),
    "next.reward": ("float32", (1,)),
    "next.success": ("bool", (1,)),
    "language_instruction": ("string", (1,)),
}
INDEX = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def episodes(seed: int = 0):
    """Three episodes (lengths 4, 6, 5) over two tasks, random values and frames."""
    rng = np.random.default_rng(seed)
    out = []
    for e, n in enumerate((4, 6, 5)):
        out.append(({
            CAM: rng.integers(0, 256, (n, 12, 10, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=(n, 3)).astype(np.float32),
            "action": rng.normal(size=(n, 2)).astype(np.float32),
            "next.reward": rng.normal(size=(n, 1)).astype(np.float32),
            "next.success": (np.arange(n) == n - 1)[:, None],
            "language_instruction": [f"step {t}" for t in range(n)],
        }, f"task {e % 2}", {"seed": 10 + e, "scene": [float(e), 0.5]}))
    return out


def write(root, version, size_mb=100.0):
    w = LeRobotWriter(root, fps=10, features=FEATURES, robot_type="test", version=version,
                      data_files_size_in_mb=size_mb)
    for frames, task, extra in episodes():
        w.add_episode(frames, task, extra)
    w.finalize({"graphvla": {"note": "test"}})
    return root


@pytest.fixture(params=["v2.1", "v3.0"])
def dataset(request, tmp_path):
    return request.param, write(tmp_path / request.param, request.param)


def data_files(root):
    return sorted(root.glob("data/chunk-*/*.parquet"))


def test_parquet_schema_declares_the_image_feature(dataset):
    version, root = dataset
    seq = "Sequence" if version == "v2.1" else "List"
    files = data_files(root)
    assert files
    for f in files:
        schema = pq.read_schema(f)
        hf = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
        assert hf[CAM] == {"_type": "Image"}
        assert hf["observation.state"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 3, "_type": seq}
        assert hf["next.reward"] == {"dtype": "float32", "_type": "Value"}
        assert hf["next.success"] == {"dtype": "bool", "_type": "Value"}
        assert hf["timestamp"] == {"dtype": "float32", "_type": "Value"}
        assert schema.field(CAM).type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        assert schema.field("observation.state").type == pa.list_(pa.float32(), 3)
        assert schema.field("next.reward").type == pa.float32() and schema.field("index").type == pa.int64()
        cells = pq.read_table(f).column(CAM).to_pylist()
        assert all(c["bytes"][:8] == b"\x89PNG\r\n\x1a\n" for c in cells)  # embedded PNG frames


def test_every_feature_has_names(dataset):
    _, root = dataset
    feats = json.loads((root / "meta" / "info.json").read_text())["features"]
    assert feats[CAM] == {"dtype": "image", "shape": [12, 10, 3], "names": ["height", "width", "channels"]}
    assert feats["observation.state"]["names"] == ["x", "y", "gripper"]
    assert feats["action"]["names"] == ["action_0", "action_1"]
    assert feats["next.reward"]["names"] == ["reward_0"]
    for k, f in feats.items():
        if k in INDEX:  # LeRobot's own default features carry names: null
            assert f["names"] is None and f["shape"] == [1]
        else:
            assert isinstance(f["names"], list) and f["names"], k


def _image_stats_of(frames):
    x = np.concatenate([f.reshape(-1, 3) for f in frames]).astype(np.float64) / 255
    return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}


def _episode_stats(root, version):
    if version == "v2.1":
        return [json.loads(x)["stats"] for x in (root / "meta" / "episodes_stats.jsonl").read_text().splitlines()]
    rows = pq.read_table(next(root.glob("meta/episodes/chunk-000/file-000.parquet"))).to_pylist()
    out = []
    for r in rows:
        st: dict = {}
        for col, v in r.items():
            if col.startswith("stats/"):
                _, key, name = col.split("/")  # stats/<key>/<statistic>: keys hold no '/'
                st.setdefault(key, {})[name] = v
        out.append(st)
    return out


def test_image_statistics_in_both_stats_files(dataset):
    version, root = dataset
    eps = episodes()
    per_episode = _episode_stats(root, version)
    assert len(per_episode) == 3
    for (frames, _, _), st in zip(eps, per_episode):
        cam = st[CAM]
        want = _image_stats_of([frames[CAM]])
        for name in ("min", "max", "mean", "std"):
            got = np.asarray(cam[name])
            assert got.shape == (3, 1, 1) and 0 <= got.min() and got.max() <= 1
            assert np.allclose(got[:, 0, 0], want[name], atol=1e-12), name
        assert cam["count"] == [len(frames[CAM])]
        assert set(st) == set(FEATURES) - {"language_instruction"} | set(INDEX)
        assert np.allclose(st["action"]["mean"], frames["action"].mean(0), atol=1e-6)
    stats = json.loads((root / "meta" / "stats.json").read_text())
    want = _image_stats_of([f[CAM] for f, _, _ in eps])
    for name in ("min", "max", "mean", "std"):
        got = np.asarray(stats[CAM][name])
        assert got.shape == (3, 1, 1) and np.allclose(got[:, 0, 0], want[name], atol=1e-12), name
    assert stats[CAM]["count"] == [15]
    actions = np.concatenate([f["action"] for f, _, _ in eps])
    assert np.allclose(stats["action"]["std"], actions.std(0), atol=1e-6)
    assert stats["index"]["max"] == [14] and stats["episode_index"]["mean"] == pytest.approx([(0 * 4 + 6 + 2 * 5) / 15])


def test_frames_travel_with_the_folder_and_paths_are_relative(dataset, tmp_path, monkeypatch):
    version, root = dataset
    for f in data_files(root):
        for c in pq.read_table(f).column(CAM).to_pylist():
            assert not c["path"].startswith("/") and c["path"].startswith(f"images/{CAM}/episode_")
    first = pq.read_table(data_files(root)[0]).column(CAM).to_pylist()[1]["path"]
    assert first == IMAGE_PATH.format(image_key=CAM, episode_index=0, frame_index=1)
    assert not (root / "images").exists()  # nothing outside the parquet is needed
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, moved)
    shutil.rmtree(root)
    monkeypatch.chdir(tmp_path / "elsewhere")
    src = open_lerobot(moved)
    assert np.array_equal(src.image(CAM, 5), episodes()[1][0][CAM][1])


def test_reading_back_equals_what_was_written(dataset):
    version, root = dataset
    src = open_lerobot(root)
    eps = episodes()
    assert src.version == version and len(src) == 15 and src.fps == 10
    assert src.episodes == {0: (0, 4), 1: (4, 10), 2: (10, 15)}
    assert src.tasks == {0: "task 0", 1: "task 1"} and src.task_index.tolist() == [0] * 4 + [1] * 6 + [0] * 5
    for key in ("observation.state", "action", "next.reward"):
        assert np.array_equal(src.columns[key], np.concatenate([f[key] for f, _, _ in eps]).astype(np.float32))
    assert src.columns["next.success"].dtype == bool
    assert src.columns["next.success"][:, 0].tolist() == [t == n - 1 for n in (4, 6, 5) for t in range(n)]
    assert src.strings["language_instruction"][5] == "step 1"
    assert np.allclose(src.timestamp[4:10], np.arange(6) / 10)
    for row, (e, t) in [(0, (0, 0)), (9, (1, 5)), (14, (2, 4))]:
        assert np.array_equal(src.image(CAM, row), eps[e][0][CAM][t])
    data, ext = src.image_bytes(CAM, 3)
    assert ext == "png" and np.array_equal(np.asarray(Image.open(io.BytesIO(data))), eps[0][0][CAM][3])
    records = read_episode_records(root)
    assert [r["seed"] for r in records] == [10, 11, 12] and records[2]["scene"] == [2.0, 0.5]
    assert [r["length"] for r in records] == [4, 6, 5] and records[1]["tasks"] == ["task 1"]
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == version and info["total_frames"] == 15 and info["total_tasks"] == 2
    assert info["splits"] == {"train": "0:3"} and info["graphvla"] == {"note": "test"} and info["robot_type"] == "test"


def test_v3_layout_is_consistent(tmp_path):
    root = write(tmp_path / "v3", "v3.0", size_mb=0.0005)  # ~500 bytes: one data file per episode
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] is None and info["chunks_size"] == 1000
    assert {"total_episodes", "total_frames", "total_tasks", "data_files_size_in_mb", "video_files_size_in_mb",
            "fps", "splits", "features"} <= set(info)
    assert not (root / "meta" / "episodes.jsonl").exists() and not (root / "meta" / "tasks.jsonl").exists()
    tasks = pd.read_parquet(root / "meta" / "tasks.parquet")
    assert tasks.index.tolist() == ["task 0", "task 1"] and tasks["task_index"].tolist() == [0, 1]
    eps = pd.read_parquet(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    assert eps["episode_index"].tolist() == [0, 1, 2] and eps["length"].tolist() == [4, 6, 5]
    assert eps["dataset_from_index"].tolist() == [0, 4, 10] and eps["dataset_to_index"].tolist() == [4, 10, 15]
    assert eps["data/file_index"].tolist() == [0, 1, 2] and set(eps["data/chunk_index"]) == {0}
    assert set(eps["meta/episodes/chunk_index"]) == {0} and set(eps["meta/episodes/file_index"]) == {0}
    assert [list(t) for t in eps["tasks"]] == [["task 0"], ["task 1"], ["task 0"]]
    assert len(data_files(root)) == 3
    for _, e in eps.iterrows():
        t = pq.read_table(root / info["data_path"].format(chunk_index=e["data/chunk_index"],
                                                          file_index=e["data/file_index"]))
        assert t.column("episode_index").to_pylist() == [e["episode_index"]] * e["length"]
        assert t.column("index").to_pylist() == list(range(e["dataset_from_index"], e["dataset_to_index"]))
    one = write(tmp_path / "v3-one", "v3.0")  # the default size: every episode in one file
    assert [p.name for p in data_files(one)] == ["file-000.parquet"]
    assert pq.read_metadata(data_files(one)[0]).num_rows == 15
    assert not list(root.rglob(".tmp-*"))


def test_episode_tables_are_copied_as_they_are(tmp_path):
    """What protocol recordings do when they merge per-task parts: v2.1 episodes into any format."""
    part = write(tmp_path / "part", "v2.1")
    for version in ("v2.1", "v3.0"):
        w = LeRobotWriter(tmp_path / f"merged-{version}", fps=10, features=FEATURES, version=version)
        meta = read_episode_records(part)
        stats = _episode_stats(part, "v2.1")
        for e in (2, 0):
            table = pq.read_table(part / "data" / "chunk-000" / f"episode_{e:06d}.parquet")
            w.add_episode_table(table, meta[e]["tasks"][0], {"seed": meta[e]["seed"]}, stats[e])
        w.finalize()
        a, b = open_lerobot(part), open_lerobot(tmp_path / f"merged-{version}")
        assert b.episodes == {0: (0, 5), 1: (5, 9)} and b.tasks == {0: "task 0"}
        assert np.array_equal(b.columns["action"], np.concatenate([a.columns["action"][10:15], a.columns["action"][0:4]]))
        assert b.image_bytes(CAM, 5) == a.image_bytes(CAM, 0)
        assert b.image_refs[CAM][0] == a.image_refs[CAM][10]
        assert [r["seed"] for r in read_episode_records(tmp_path / f"merged-{version}")] == [12, 10]
        merged_stats = json.loads((tmp_path / f"merged-{version}" / "meta" / "stats.json").read_text())
        assert merged_stats["index"]["max"] == [8] and merged_stats[CAM]["count"] == [9]


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
@pytest.mark.parametrize("key, spec, message", [
    ("observation/state", ("float32", (3,)), "feature 'observation/state': LeRobot feature keys cannot contain '/'"),
    ("observation.depth", ("complex64", (2,)), "feature 'observation.depth': dtype 'complex64' cannot be represented"),
    ("observation.images.rgbd", ("image", (8, 8, 4)), "feature 'observation.images.rgbd': a LeRobot image is"),
    ("observation.grid", ("float32", (2, 3)), "feature 'observation.grid': GraphVLA writes numeric features as vectors"),
    ("observation.state", ("float32", (3,), ["x", "y"]), "feature 'observation.state': names must be 3"),
    ("index", ("int64", (1,)), "feature 'index': 'index' is one of LeRobot's index columns"),
    ("observation.images.cam", ("video", (8, 8, 3)), "feature 'observation.images.cam': declare cameras as 'image'"),
])
def test_a_feature_lerobot_cannot_represent_is_refused_by_key(tmp_path, version, key, spec, message):
    root = tmp_path / "ds"
    with pytest.raises(FeatureError) as info:
        LeRobotWriter(root, fps=10, features={"action": ("float32", (2,)), key: spec}, version=version)
    assert message in str(info.value)
    assert not root.exists()  # nothing half-written


def test_unknown_format_and_wrong_frames_are_refused(tmp_path):
    with pytest.raises(ValueError, match="LeRobot format 'v4.0' is not written"):
        LeRobotWriter(tmp_path / "x", fps=10, features=FEATURES, version="v4.0")
    assert not (tmp_path / "x").exists()
    w = LeRobotWriter(tmp_path / "y", fps=10, features=FEATURES, version="v3.0")
    frames, task, _ = episodes()[0]
    with pytest.raises(ValueError, match=f"'{CAM}' must be uint8 frames of shape"):
        w.add_episode({**frames, CAM: frames[CAM].astype(np.float32)}, task)
    with pytest.raises(KeyError, match="'observation.extra' is not a declared feature"):
        w.add_episode({**frames, "observation.extra": frames["action"]}, task)
    with pytest.raises(ValueError, match="no episode was added"):
        w.finalize()
    assert not (tmp_path / "y" / "meta" / "info.json").exists()


def test_older_path_only_recordings_still_read(tmp_path):
    """GraphVLA recordings before the LeRobot-compatible writer: PNG files under images/ and
    {bytes: None, path} cells, no schema metadata."""
    root = write(tmp_path / "old", "v2.1")
    for f in data_files(root):
        t = pq.read_table(f)
        cells = []
        for c in t.column(CAM).to_pylist():
            (root / c["path"]).parent.mkdir(parents=True, exist_ok=True)
            (root / c["path"]).write_bytes(c["bytes"])
            cells.append({"bytes": None, "path": c["path"]})
        cols = {n: (pa.array(cells, type=t.schema.field(CAM).type) if n == CAM else t.column(n)) for n in t.column_names}
        pq.write_table(pa.table(cols), f)
    src = open_lerobot(root)
    assert isinstance(src.image_refs[CAM][9], str)
    assert np.array_equal(src.image(CAM, 9), episodes()[1][0][CAM][5])
    (root / src.image_refs[CAM][9]).unlink()
    with pytest.raises(FileNotFoundError, match="frame_000005.png"):
        src.image(CAM, 9)


def test_a_frame_with_neither_bytes_nor_path_is_named(tmp_path):
    root = write(tmp_path / "bad", "v2.1")
    f = root / "data" / "chunk-000" / "episode_000001.parquet"
    t = pq.read_table(f)
    cells = t.column(CAM).to_pylist()
    cells[2] = {"bytes": None, "path": None}
    i = t.column_names.index(CAM)
    pq.write_table(t.set_column(i, CAM, pa.array(cells, type=t.schema.field(i).type)), f)
    with pytest.raises(DatasetError, match=f"episode_000001.parquet: column '{CAM}' has a frame with neither .*frame 2"):
        open_lerobot(root)


def test_cli_records_v3(tmp_path):
    require_metaworld()
    from graphvla.cli import main
    from graphvla.data.metaworld_record import recorded_seeds

    out = tmp_path / "mw"
    r = CliRunner().invoke(main, ["data", "metaworld", "-o", str(out), "--tasks", "reach-v3", "--episodes", "1",
                                  "--size", "32", "--format", "v3.0"])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and (out / "meta" / "tasks.parquet").exists()
    assert info["features"]["observation.state"]["names"] == ["hand_x", "hand_y", "hand_z", "gripper"]
    assert recorded_seeds(out) == {"reach-v3": [0]}
    src = open_lerobot(out)
    assert src.image("observation.images.corner", 0).shape == (32, 32, 3)
    r = CliRunner().invoke(main, ["data", "metaworld", "-o", str(tmp_path / "x"), "--format", "v9"])
    assert r.exit_code != 0 and "v9" in r.output and not (tmp_path / "x").exists()
    require_module("av", "pip install av (the video encoder and reader)")
    r = CliRunner().invoke(main, ["data", "metaworld", "-o", str(tmp_path / "v"), "--tasks", "reach-v3", "--episodes", "1",
                                  "--size", "32", "--video"])
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "v" / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["features"]["observation.images.corner"]["dtype"] == "video"
    video = open_lerobot(tmp_path / "v")
    assert np.array_equal(video.columns["action"], src.columns["action"])  # same seed, same episode
    assert np.abs(video.image("observation.images.corner", 5).astype(int)
                  - src.image("observation.images.corner", 5).astype(int)).mean() < 8


def test_protocol_recording_merges_into_v3(tmp_path):
    """--protocol records v2.1 parts per task and merges them into the chosen format."""
    require_metaworld()
    from graphvla.data.protocol_record import record_protocol, recorded_scenes, recorded_scene_vectors
    from graphvla.sim import starvla_mt50 as P

    root = tmp_path / "data"
    with pytest.raises(ValueError, match="LeRobot format 'v2' is not written"):
        record_protocol(root, ["reach-v3"], episodes=1, size=32, progress=False, log=lambda m: None, format="v2")
    assert not (root / ".parts").exists()  # refused before anything was recorded
    s = record_protocol(root, ["reach-v3", "dial-turn-v3"], episodes=1, size=32, progress=False,
                        log=lambda m: None, format="v3.0")
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and not (root / ".parts").exists()
    assert info["features"]["observation.images.corner2"]["names"] == ["height", "width", "channels"]
    src = open_lerobot(root)
    assert len(src.episodes) == 2 and len(src) == s["frames"]
    assert src.image("observation.images.corner2", len(src) - 1).shape == (32, 32, 3)
    scenes = recorded_scenes(root)
    assert set(scenes) == {"reach-v3", "dial-turn-v3"}
    assert all(not v & set(P.eval_scenes(t)) for t, v in scenes.items())
    assert all(len(v) == 1 for v in recorded_scene_vectors(root).values())
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert np.asarray(stats["observation.images.corner2"]["mean"]).shape == (3, 1, 1)


def smooth_frames(n: int, t0: int = 0) -> np.ndarray:
    """Frames a video codec keeps close: gradients that move a little every frame."""
    y, x = np.mgrid[0:16, 0:24]
    return np.stack([np.stack([(x * 4 + t * 3) % 256, (y * 5 + t * 2) % 256, np.full_like(x, 40 + 10 * t)], -1)
                     for t in range(t0, t0 + n)]).astype(np.uint8)


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_cameras_as_video(tmp_path, version):
    require_module("av", "pip install av (the video encoder and reader)")
    feats = {CAM: ("image", (16, 24, 3)), "action": ("float32", (2,))}
    w = LeRobotWriter(tmp_path / "ds", fps=10, features=feats, version=version, video=True)
    eps = [smooth_frames(5), smooth_frames(7, 20)]
    actions = [np.arange(10, dtype=np.float32).reshape(5, 2), -np.arange(14, dtype=np.float32).reshape(7, 2)]
    for f, a in zip(eps, actions):
        w.add_episode({CAM: f, "action": a}, "move")
    info = w.finalize()
    root = tmp_path / "ds"
    cam = info["features"][CAM]
    assert cam["dtype"] == "video" and cam["names"] == ["height", "width", "channels"]
    assert cam["info"]["video.codec"] == "h264" and cam["info"]["video.fps"] == 10 and cam["info"]["video.height"] == 16
    for f in data_files(root):  # the camera lives in the videos, not the parquet
        schema = pq.read_schema(f)
        assert CAM not in schema.names and CAM not in json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    if version == "v2.1":
        assert info["total_videos"] == 2
        files = [root / info["video_path"].format(episode_chunk=0, video_key=CAM, episode_index=e) for e in (0, 1)]
    else:
        files = [root / info["video_path"].format(video_key=CAM, chunk_index=0, file_index=0)]
        e = pd.read_parquet(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
        assert e[f"videos/{CAM}/from_timestamp"].tolist() == [0.0, 0.5]
        assert e[f"videos/{CAM}/to_timestamp"].tolist() == [0.5, 1.2]
    assert all(f.is_file() for f in files) and not list(root.rglob(".tmp-*"))
    stats = json.loads((root / "meta" / "stats.json").read_text())
    assert np.allclose(np.asarray(stats[CAM]["mean"])[:, 0, 0], _image_stats_of(eps)["mean"])  # of the source frames
    src = open_lerobot(root)
    assert src.video_refs and not src.image_refs and src.episodes == {0: (0, 5), 1: (5, 12)}
    assert np.array_equal(src.columns["action"], np.concatenate(actions))
    want = np.concatenate(eps).astype(int)
    errors = [np.abs(src.image(CAM, r).astype(int) - want[r]).mean() for r in range(12)]
    assert max(errors) < 6, errors  # lossy, but each frame is its own (a neighbour differs by ~10)
    assert np.abs(src.image(CAM, 6).astype(int) - want[7]).mean() > 2 * max(errors)


def test_video_needs_even_sizes_and_merges_png_parts(tmp_path):
    require_module("av", "pip install av (the video encoder and reader)")
    with pytest.raises(FeatureError, match=f"feature '{CAM}': h264 video .* even height and width"):
        LeRobotWriter(tmp_path / "odd", fps=10, features={CAM: ("image", (15, 24, 3))}, video=True)
    assert not (tmp_path / "odd").exists()
    feats = {CAM: ("image", (16, 24, 3)), "action": ("float32", (2,))}
    part = LeRobotWriter(tmp_path / "part", fps=10, features=feats)
    part.add_episode({CAM: smooth_frames(6), "action": np.ones((6, 2), np.float32)}, "move")
    part.finalize()
    w = LeRobotWriter(tmp_path / "merged", fps=10, features=feats, version="v3.0", video=True)
    w.add_episode_table(pq.read_table(tmp_path / "part" / "data" / "chunk-000" / "episode_000000.parquet"), "move",
                        None, _episode_stats(tmp_path / "part", "v2.1")[0])
    w.finalize()
    src = open_lerobot(tmp_path / "merged")
    assert np.abs(src.image(CAM, 3).astype(int) - smooth_frames(6)[3].astype(int)).mean() < 6
