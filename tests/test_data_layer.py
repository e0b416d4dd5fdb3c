"""The data layer on a small recorded Meta-World dataset (2 tasks x 2 episodes, 64x64): reading
LeRobot v2.1 and v3.0, chunks and masks, stats, shards, mixtures, the sampler, malformed data,
normalization and the LLaVA stream."""
from __future__ import annotations

import io
import json
import shutil
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import graph_text, require_metaworld

from graphvla.data.api import collate, load_data, open_source
from graphvla.data.lerobot import DatasetError, open_lerobot
from graphvla.data.lerobot_write import LeRobotWriter
from graphvla.data.normalize import Normalizer
from graphvla.data.sampler import StreamSampler
from graphvla.data.shards import pack
from graphvla.spec.loader import load_spec

H = 8


def spec_text(*overrides, state_dim=4, action_dim=4, size=64, history=None):
    """tiny/mlp at these sizes, with an optional action mask input, plus `overrides`."""
    return graph_text("tiny/mlp", "name=data-test", f"inputs.images.size=[{size}, {size}]",
                      f"inputs.state={{kind: state, dim: {state_dim}{f', history: {history}' if history else ''}}}",
                      f"inputs.actions={{kind: action, dim: {action_dim}, horizon: {H}, train_only: true}}",
                      f"inputs.actions_mask={{kind: mask, shape: [{H}], train_only: true, optional: true}}",
                      "blocks.vision.with.width=32", "blocks.language.with.width=32", "blocks.fuse.with.width=32",
                      "blocks.head.with.hidden=32", *overrides)


def make_spec(tmp_path, *overrides, name="spec.yaml", **kw):
    p = tmp_path / name
    p.write_text(spec_text(*overrides, **kw))
    return load_spec(p)


@pytest.fixture(scope="session")
def mw_root(tmp_path_factory):
    require_metaworld()
    from graphvla.data.metaworld_record import tiny_metaworld

    return tiny_metaworld(tmp_path_factory.getbasetemp())


@pytest.fixture
def spec(tmp_path):
    return make_spec(tmp_path)


def raw_frames(root):
    """The dataset read independently with pandas: one DataFrame of all episodes."""
    files = sorted(root.glob("data/chunk-*/episode_*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def assert_items_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if torch.is_tensor(a[k]):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


# -- reading and chunking -------------------------------------------------------------------------

def test_reader_round_trip_frames_chunks_and_masks(mw_root, spec):
    df = raw_frames(mw_root)
    ds = load_data(mw_root, spec).streams["action"]
    assert len(ds) == len(df)
    episodes = [json.loads(line) for line in (mw_root / "meta" / "episodes.jsonl").read_text().splitlines()]
    tasks = {json.loads(line)["task_index"]: json.loads(line)["task"] for line in (mw_root / "meta" / "tasks.jsonl").read_text().splitlines()}
    start = 0
    for ep in episodes:
        n = ep["length"]
        for t in (0, n - 3, n - 1):  # inside, near the end, the last frame
            i = start + t
            item = ds[i]
            row = df.iloc[i]
            assert np.allclose(item["state"].numpy(), np.stack(row["observation.state"]))
            assert item["instruction"] == tasks[row["task_index"]] == ep["tasks"][0]
            valid = min(H, n - t)
            expected = np.stack([np.asarray(a) for a in df["action"].iloc[i: i + valid]])
            assert torch.equal(item["actions_mask"], torch.arange(H) < valid)
            assert np.allclose(item["actions"][:valid].numpy(), expected)
            # steps past the episode end repeat its last action (masked out of the loss)
            assert torch.equal(item["actions"][valid:], item["actions"][valid - 1].expand(H - valid, -1))
            png = io.BytesIO(row["observation.images.corner"]["bytes"])  # embedded in the parquet
            from PIL import Image

            pixels = torch.from_numpy(np.array(Image.open(png).convert("RGB"))).permute(2, 0, 1).float() / 255
            assert item["images"].shape == (1, 3, 64, 64) and torch.equal(item["images"][0], pixels)
        start += n
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["images"].shape == (3, 1, 3, 64, 64) and batch["actions"].shape == (3, H, 4)
    assert batch["instruction"] == [ds[0]["instruction"]] * 3 and batch["actions_mask"].dtype == torch.bool


def test_state_history_from_timestamps(mw_root, tmp_path):
    ds = load_data(mw_root, make_spec(tmp_path, history=3)).streams["action"]
    df = raw_frames(mw_root)
    states = np.stack(df["observation.state"].map(np.asarray))
    assert ds[0]["state"].shape == (3, 4)
    assert np.allclose(ds[0]["state"].numpy(), states[[0, 0, 0]])  # before the start: the first frame
    assert np.allclose(ds[5]["state"].numpy(), states[[3, 4, 5]])
    n0 = int(json.loads((mw_root / "meta" / "episodes.jsonl").read_text().splitlines()[0])["length"])
    assert np.allclose(ds[n0 + 1]["state"].numpy(), states[[n0, n0, n0 + 1]])  # never crosses into the previous episode


def test_images_resized_to_the_port(mw_root, tmp_path):
    ds = load_data(mw_root, make_spec(tmp_path, size=32)).streams["action"]
    img = ds[3]["images"]
    assert img.shape == (1, 3, 32, 32) and 0 <= img.min() and img.max() <= 1 and img.std() > 0.05


def write_v3(src_root, out):
    """Convert the v2.1 test dataset to LeRobot v3.0: one data file holding every episode (images
    embedded as bytes), episode metadata and tasks in parquet."""
    src = open_lerobot(src_root)
    df = raw_frames(src_root)
    (out / "data" / "chunk-000").mkdir(parents=True)
    (out / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    cols = {}
    for k in df.columns:
        if k == "observation.images.corner":
            cols[k] = pa.array([{"bytes": v["bytes"], "path": None} for v in df[k]],
                               type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        else:
            cols[k] = pa.array(df[k].tolist())
    pq.write_table(pa.table(cols), out / "data" / "chunk-000" / "file-000.parquet")
    eps = [{"episode_index": e, "tasks": [src.tasks[int(src.task_index[s])]], "length": t - s,
            "data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": s, "dataset_to_index": t}
           for e, (s, t) in src.episodes.items()]
    pd.DataFrame(eps).to_parquet(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    pd.DataFrame({"task_index": list(src.tasks)}, index=pd.Index(list(src.tasks.values()), name="task")).to_parquet(
        out / "meta" / "tasks.parquet")
    info = dict(src.info, codebase_version="v3.0", data_path="data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
                video_path="videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4")
    (out / "meta" / "info.json").write_text(json.dumps(info))


def test_v3_reader_matches_v21(mw_root, spec, tmp_path):
    v3 = tmp_path / "v3"
    write_v3(mw_root, v3)
    src = open_lerobot(v3)
    assert src.version == "v3.0"
    a, b = load_data(mw_root, spec).streams["action"], load_data(v3, spec).streams["action"]
    assert len(a) == len(b)
    for i in (0, 10, 46, 47, 120, len(a) - 1):
        assert_items_equal(a[i], b[i])


# -- stats, shards ----------------------------------------------------------------------------------

def test_stats_match_numpy(mw_root, spec):
    df = raw_frames(mw_root)
    stats = load_data(mw_root, spec).stats
    for port, key in (("state", "observation.state"), ("actions", "action")):
        x = np.stack(df[key].map(np.asarray)).astype(np.float64)
        s = stats[port]
        assert np.allclose(s["mean"], x.mean(0), atol=1e-6) and np.allclose(s["std"], x.std(0), atol=1e-6)
        assert np.allclose(s["min"], x.min(0)) and np.allclose(s["max"], x.max(0))
        assert np.allclose(s["q01"], np.quantile(x, 0.01, axis=0)) and np.allclose(s["q99"], np.quantile(x, 0.99, axis=0))


def test_stats_command_prints_json(mw_root, tmp_path):
    from click.testing import CliRunner

    from graphvla.cli import main

    r = CliRunner().invoke(main, ["data", "stats", str(mw_root), "--keys", "action"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    x = np.stack(raw_frames(mw_root)["action"].map(np.asarray))
    assert np.allclose(out["action"]["mean"], x.mean(0), atol=1e-6)
    r = CliRunner().invoke(main, ["data", "stats", str(mw_root), "--keys", "nope"])
    assert r.exit_code == 1 and "nope" in r.output
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text())
    r = CliRunner().invoke(main, ["data", "stats", str(mw_root), "--spec", str(spec)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == json.loads(json.dumps(load_data(mw_root, load_spec(spec)).stats))


def test_shards_yield_the_same_samples_as_the_folder(mw_root, spec, tmp_path):
    index = pack(open_source(mw_root), tmp_path / "shards", max_frames=100)
    assert len(index["shards"]) == 3
    a, b = load_data(mw_root, spec), load_data(tmp_path / "shards", spec)
    assert len(a.streams["action"]) == len(b.streams["action"])
    for i in range(0, len(a.streams["action"]), 7):
        assert_items_equal(a.streams["action"][i], b.streams["action"][i])
    assert a.stats == b.stats
    import webdataset as wds  # the tars are plain webdataset shards

    first = next(iter(wds.WebDataset(str(tmp_path / "shards" / "shard-000000.tar"), shardshuffle=False)))
    facts = json.loads(first["frame.json"])
    assert facts["frame_index"] == 0 and np.allclose(facts["action"], a.streams["action"][0]["actions"][0].numpy())


# -- mixtures ----------------------------------------------------------------------------------------

def narrow_dataset(root, episodes=3, length=12, state_dim=3, action_dim=2, size=32, seed=0):
    """A synthetic LeRobot v2.1 dataset of another embodiment (narrower state and action)."""
    rng = np.random.default_rng(seed)
    w = LeRobotWriter(root, fps=10, robot_type="other", features={
        "observation.images.corner": ("image", (size, size, 3)),
        "observation.state": ("float32", (state_dim,)), "action": ("float32", (action_dim,))})
    for e in range(episodes):
        w.add_episode({"observation.images.corner": rng.integers(0, 255, (length, size, size, 3), dtype=np.uint8),
                       "observation.state": rng.normal(size=(length, state_dim)),
                       "action": rng.normal(size=(length, action_dim)) + 5.0}, "wave the arm")
    w.finalize()
    return root


def test_mixture_pads_widths_with_masks(mw_root, tmp_path):
    other = narrow_dataset(tmp_path / "other")
    spec = make_spec(tmp_path, "inputs.actions_dim_mask={kind: mask, shape: [4], train_only: true, optional: true}",
                     "inputs.embodiment={kind: text}", "blocks.fuse.in.d=tag.pooled",
                     "blocks.tag={type: encoder.text, in: {text: inputs.embodiment}, with: {width: 32}}")
    mix = tmp_path / "mix.yaml"
    mix.write_text(textwrap.dedent(f"""\
        datasets:
          - {{path: {mw_root}, weight: 3, embodiment: sawyer}}
          - {{path: {other}, weight: 1, embodiment: other}}
        """))
    bundle = load_data(mix, spec)
    ds = bundle.streams["action"]
    n_mw = len(open_lerobot(mw_root))
    assert len(ds) == n_mw + 36 and ds.part_sizes == [n_mw, 36] and ds.weights == [3.0, 1.0]
    a, b = ds[0], ds[n_mw + 5]
    assert a["actions_dim_mask"].tolist() == [True] * 4 and a["embodiment"] == "sawyer"
    assert b["actions_dim_mask"].tolist() == [True, True, False, False] and b["embodiment"] == "other"
    assert b["actions"].shape == (H, 4) and torch.all(b["actions"][:, 2:] == 0) and torch.all(b["state"][3:] == 0) and torch.all(b["state"][:3] != 0)
    assert b["images"].shape == (1, 3, 64, 64)  # 32x32 frames resized to the port
    # statistics per dimension over the datasets that have it: the narrower one's padding is not data
    mw_a = np.stack(raw_frames(mw_root)["action"].map(np.asarray))
    other_a = np.stack(raw_frames(other)["action"].map(np.asarray))
    expected = np.concatenate([np.concatenate([mw_a[:, :2], other_a]).mean(0), mw_a[:, 2:].mean(0)])
    assert np.allclose(bundle.stats["actions"]["mean"], expected, atol=1e-6)
    # normalized batch: padded dims stay 0 (masks respected) and real dims are finite
    norm = Normalizer.from_spec(bundle.stats, spec)
    batch = norm.normalize(collate([ds[n_mw + i] for i in range(4)]))
    assert torch.all(batch["actions"][..., 2:] == 0) and torch.isfinite(batch["actions"]).all()
    # the sampler draws the parts by weight (3:1)
    it = iter(bundle.sampler("action", seed=1))
    draws = np.array([next(it) for _ in range(4000)])
    share = (draws < n_mw).mean()
    assert 0.70 < share < 0.80, share
    # a narrower dataset alone (no mixture, no pad) is refused naming both sides
    with pytest.raises(DatasetError, match=r"'observation.state' has width 3 but state port 'state' declares dim: 4"):
        load_data(other, spec)


# -- sampler -----------------------------------------------------------------------------------------

class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def take(sampler, k):
    it = iter(sampler)
    return [next(it) for _ in range(k)]


def test_sampler_deterministic_sharded_and_resumable():
    ds = _Sized(10)
    assert take(StreamSampler(ds, seed=3), 25) == take(StreamSampler(ds, seed=3), 25)
    assert take(StreamSampler(ds, seed=3), 10) != take(StreamSampler(ds, seed=4), 10)
    first = take(StreamSampler(ds, seed=0), 10)
    assert sorted(first) == list(range(10))  # an epoch visits each index once
    r0, r1, r2 = (take(StreamSampler(ds, seed=0, rank=r, world_size=3), 3) for r in range(3))
    assert len(set(r0) | set(r1) | set(r2)) == 9  # disjoint shards of one epoch
    assert r0 + r1 + r2 != first and sorted(r0 + r1 + r2) == sorted(first[:9])
    s = StreamSampler(ds, seed=5, rank=1, world_size=2)
    full = take(s, 17)
    s2 = StreamSampler(ds, seed=5, rank=1, world_size=2)
    take(s2, 7)
    state = json.loads(json.dumps(s2.state_dict()))
    s3 = StreamSampler(ds, seed=5, rank=1, world_size=2)
    s3.load_state_dict(state)
    assert take(s3, 10) == full[7:]
    with pytest.raises(ValueError, match="seed"):
        StreamSampler(ds, seed=6).load_state_dict(state)


# -- malformed datasets ---------------------------------------------------------------------------------

@pytest.fixture
def broken(mw_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(mw_root, root)
    return root


def test_missing_data_file_is_named(broken, spec):
    victim = broken / "data" / "chunk-000" / "episode_000002.parquet"
    victim.unlink()
    with pytest.raises(FileNotFoundError, match="episode_000002.parquet"):
        load_data(broken, spec)


def test_missing_info_and_image_are_named(broken, spec):
    path = broken / "data" / "chunk-000" / "episode_000001.parquet"
    table = pq.read_table(path)
    cells = table.column("observation.images.corner").to_pylist()
    cells[3] = {"bytes": b"not a png", "path": cells[3]["path"]}
    i = table.column_names.index("observation.images.corner")
    pq.write_table(table.set_column(i, "observation.images.corner", pa.array(cells, type=table.schema.field(i).type)), path)
    ds = load_data(broken, spec).streams["action"]
    n0 = len(pd.read_parquet(broken / "data" / "chunk-000" / "episode_000000.parquet"))
    with pytest.raises(DatasetError, match=r"observation.images.corner \(embedded image, row "):
        ds[n0 + 3]
    (broken / "meta" / "info.json").unlink()
    with pytest.raises(FileNotFoundError, match="info.json"):
        load_data(broken, spec)


def test_nan_values_are_named(broken, spec):
    path = broken / "data" / "chunk-000" / "episode_000001.parquet"
    df = pd.read_parquet(path)
    a = [np.asarray(v, dtype=np.float32) for v in df["action"]]
    a[4] = a[4].copy()
    a[4][2] = np.nan
    df["action"] = a
    df.to_parquet(path)
    with pytest.raises(DatasetError, match=r"episode_000001.parquet: column 'action' has a non-finite value .* frame 4"):
        load_data(broken, spec)


def test_empty_episode_is_named(broken, spec):
    path = broken / "data" / "chunk-000" / "episode_000003.parquet"
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(DatasetError, match="episode_000003.parquet: episode 3 has no frames"):
        load_data(broken, spec)


def test_wrong_widths_and_keys_are_refused(mw_root, tmp_path):
    with pytest.raises(DatasetError, match=r"'observation.state' has width 4 but state port 'state' declares dim: 5"):
        load_data(mw_root, make_spec(tmp_path, state_dim=5))
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"datasets:\n  - {{path: {mw_root}, keys: {{state: observation.joints}}}}\n")
    with pytest.raises(DatasetError, match=r"'observation.joints'.*numeric keys: observation.state"):
        load_data(cfg, make_spec(tmp_path))
    cfg.write_text(f"datasets:\n  - {{path: {mw_root}, wieght: 2}}\n")
    with pytest.raises(ValueError, match=r"datasets\[0\]: unknown key 'wieght' \(did you mean 'weight'\?\)"):
        load_data(cfg, make_spec(tmp_path))


def test_wrong_declared_width_in_parquet(broken, spec):
    info = json.loads((broken / "meta" / "info.json").read_text())
    info["features"]["action"]["shape"] = [5]
    (broken / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"episode_000000.parquet: column 'action' has width 4 but meta/info.json declares shape \[5\]"):
        load_data(broken, spec)


# -- normalization --------------------------------------------------------------------------------------

def test_normalizer_modes_round_trip_and_checks(mw_root, spec, tmp_path):
    bundle = load_data(mw_root, spec)
    batch = collate([bundle.streams["action"][i] for i in range(0, 200, 9)])
    for mode in ("mean_std", "min_max", "q01_q99", "identity"):
        norm = Normalizer(bundle.stats, {"actions": mode, "state": mode})
        out = norm.normalize(batch)
        restored = norm.unnormalize("actions", out["actions"])
        m = batch["actions_mask"].unsqueeze(-1)
        assert torch.allclose(restored * m, batch["actions"] * m, atol=1e-5), mode
        assert np.allclose(norm.unnormalize("state", out["state"].numpy()), batch["state"].numpy(), atol=1e-5)
        assert torch.equal(out["images"], batch["images"])  # only state/action ports change
        if mode == "min_max":
            assert out["state"].min() >= -1 - 1e-5 and out["state"].max() <= 1 + 1e-5
    all_x = np.stack(raw_frames(mw_root)["observation.state"].map(np.asarray))
    z = Normalizer(bundle.stats).normalize_array("state", all_x)
    assert np.allclose(z.mean(0), 0, atol=1e-4) and np.allclose(z.std(0), 1, atol=1e-3)
    norm = Normalizer.from_spec(bundle.stats, spec)
    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert torch.equal(again.normalize(batch)["actions"], norm.normalize(batch)["actions"])
    norm.check_compatible(spec)
    with pytest.raises(ValueError, match=r"statistics of 'state' have width 4 but the graph's state port 'state' declares dim: 6"):
        norm.check_compatible(make_spec(tmp_path, name="s6.yaml", state_dim=6))
    with pytest.raises(ValueError, match="mode 'zscore'"):
        Normalizer(bundle.stats, {"actions": "zscore"})


# -- co-training (LLaVA JSON) ------------------------------------------------------------------------------

COTRAIN = ("inputs.vlm_images={kind: image, views: 1, size: [32, 32]}", "inputs.vlm_prompt={kind: text}",
           "inputs.vlm_answer={kind: text, train_only: true}",
           "blocks.vlm={type: backbone.hf_vlm, in: {images: inputs.vlm_images, text: inputs.vlm_prompt, "
           "target_text: inputs.vlm_answer}, with: {tiny: qwen3_vl}}",
           "losses.vlm={from: vlm.lm_loss, stream: vlm}")


def test_llava_stream_for_cotraining(mw_root, tmp_path):
    from PIL import Image

    base = spec_text(*COTRAIN)
    spec_path = tmp_path / "cotrain.yaml"
    spec_path.write_text(base)
    spec = load_spec(spec_path)
    img_dir = tmp_path / "vqa"
    img_dir.mkdir()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(img_dir / "a.png")
    (tmp_path / "vqa.json").write_text(json.dumps([
        {"id": "1", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Grey."},
            {"from": "human", "value": "Is it bright?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "2", "conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "hi"}]},
    ]))
    cfg = tmp_path / "data.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        datasets:
          - {{path: {mw_root}}}
        vlm:
          - json: vqa.json
            image_root: vqa
            keys: {{vlm_images: image, vlm_prompt: prompt, vlm_answer: answer}}
        """))
    bundle = load_data(cfg, spec)
    assert set(bundle.streams) == {"action", "vlm"}
    vlm = bundle.streams["vlm"]
    assert len(vlm) == 3
    first, second, text_only = vlm[0], vlm[1], vlm[2]
    assert first["vlm_prompt"] == "What colour is it?" and first["vlm_answer"] == "Grey."
    assert second["vlm_prompt"] == "What colour is it?\nGrey.\nIs it bright?" and second["vlm_answer"] == "Yes."
    assert first["vlm_images"].shape == (1, 3, 32, 32) and torch.allclose(first["vlm_images"], torch.tensor(200 / 255))
    assert torch.all(text_only["vlm_images"] == 0)
    assert "vlm_images" not in bundle.streams["action"][0]  # each stream gets its own ports
    batch = collate([first, text_only])
    assert batch["vlm_prompt"] == ["What colour is it?", "Say hi"] and batch["vlm_images"].shape == (2, 1, 3, 32, 32)
    cfg.write_text(f"datasets:\n  - {{path: {mw_root}}}\n")
    with pytest.raises(DatasetError, match=r"no data for the graph's stream\(s\) vlm"):
        load_data(cfg, spec)


# -- shipped data YAMLs ---------------------------------------------------------------------------------------

def test_shipped_data_yamls(mw_root, tmp_path):
    """data/*.yaml parse, and metaworld-mt10.yaml / mixture.yaml load for the tiny OFT graph once
    their folders exist (relative paths resolve against the YAML's own folder)."""
    from pathlib import Path

    from graphvla.data.config import read_data_config

    repo = Path(__file__).resolve().parents[1]
    streams = {n: sorted({e.stream for e in read_data_config(repo / "data" / n)}) for n in
               ("metaworld-mt10.yaml", "mixture.yaml", "cotrain.yaml")}
    assert streams == {"metaworld-mt10.yaml": ["action"], "mixture.yaml": ["action"], "cotrain.yaml": ["action", "vlm"]}
    (tmp_path / "data").mkdir()
    (tmp_path / "runs" / "data").mkdir(parents=True)
    (tmp_path / "runs" / "data" / "metaworld-mt10").symlink_to(mw_root)
    narrow_dataset(tmp_path / "runs" / "data" / "other-robot")
    for name in ("metaworld-mt10.yaml", "mixture.yaml"):
        shutil.copy(repo / "data" / name, tmp_path / "data" / name)
    tiny = repo / "graphvla" / "graphs" / "tiny" / "querytf.yaml"
    single = load_data(tmp_path / "data" / "metaworld-mt10.yaml", tiny)
    item = single.streams["action"][0]
    assert item["images"].shape == (1, 3, 128, 128) and item["actions"].shape == (8, 4) and item["state"].shape == (4,)
    mix = load_data(tmp_path / "data" / "mixture.yaml", tiny).streams["action"]
    assert mix.weights == [3.0, 1.0] and mix[len(mix) - 1]["actions"][:, 2:].abs().sum() == 0


def test_dataloader_workers_give_the_same_batches(mw_root, spec, tmp_path):
    """Folder and shard readers in DataLoader worker processes (file handles per process)."""
    pack(open_source(mw_root), tmp_path / "shards")
    for data in (mw_root, tmp_path / "shards"):
        ds = load_data(data, spec).streams["action"]
        idx = list(range(0, len(ds), 5))
        batches = []
        for workers in (0, 2):
            loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=idx, num_workers=workers, collate_fn=collate)
            batches.append(list(loader))
        for a, b in zip(*batches):
            assert_items_equal(a, b)


def test_time_shifted_image_ports_for_world_models(mw_root, tmp_path):
    """`future_images` defaults to the frame after the action chunk, `history` to the frames
    before t (both clamped to the episode); a data YAML can set the offsets."""
    spec_path = tmp_path / "wm.yaml"
    spec_path.write_text(graph_text(  # tiny/worldmodel-flowdit at 64x64 with a two-frame history port
        "tiny/worldmodel-flowdit", "name=wm-data", "inputs.images.size=[64, 64]", "inputs.future_images.size=[64, 64]",
        "inputs.history={kind: image, views: 2, size: [64, 64]}", "blocks.wm.in.history=inputs.history",
        "blocks.wm.with={width: 32, layers: 1, heads: 2, patch: 16, future_res: 4}"))
    ds = load_data(mw_root, spec_path).streams["action"]
    src = open_lerobot(mw_root)
    frame = lambda row: torch.from_numpy(src.image("observation.images.corner", row).transpose(2, 0, 1) / np.float32(255))  # noqa: E731
    s, e = src.episodes[1]
    for i in (s, s + 1, s + 20, e - 3, e - 1):
        item = ds[i]
        assert torch.equal(item["future_images"][0], frame(min(i + H, e - 1)))
        assert torch.equal(item["history"][0], frame(max(i - 2, s))) and torch.equal(item["history"][1], frame(max(i - 1, s)))
        assert torch.equal(item["images"][0], frame(i))
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"datasets:\n  - path: {mw_root}\n    keys: {{history: {{camera: observation.images.corner, offsets: [-4, -2]}}}}\n")
    item = load_data(cfg, spec_path).streams["action"][s + 10]
    assert torch.equal(item["history"][0], frame(s + 6)) and torch.equal(item["history"][1], frame(s + 8))
    cfg.write_text(f"datasets:\n  - path: {mw_root}\n    keys: {{history: {{camera: observation.images.corner, offsets: [-1]}}}}\n")
    with pytest.raises(DatasetError, match=r"image port 'history' declares views: 2 but the dataset gives 1: observation.images.corner@-1"):
        load_data(cfg, spec_path)


def test_text_ports_from_task_string_column_or_constant(tmp_path):
    """A per-frame text column (dtype string) or a fixed text can feed a text port; anything
    else is refused naming the port and the text keys there are."""
    rng = np.random.default_rng(0)
    w = LeRobotWriter(tmp_path / "ds", fps=10, features={
        "observation.images.corner": ("image", (16, 16, 3)), "observation.state": ("float32", (4,)),
        "action": ("float32", (4,)), "language_instruction": ("string", (1,))})
    w.add_episode({"observation.images.corner": rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8),
                   "observation.state": rng.normal(size=(3, 4)), "action": rng.normal(size=(3, 4)),
                   "language_instruction": ["lift", "lift it", "lift it up"]}, "the episode task")
    w.finalize()
    spec = make_spec(tmp_path, size=16)
    cfg = tmp_path / "d.yaml"
    cfg.write_text("datasets:\n  - {path: ds, keys: {instruction: language_instruction}}\n")
    ds = load_data(cfg, spec).streams["action"]
    assert [ds[i]["instruction"] for i in range(3)] == ["lift", "lift it", "lift it up"]
    pack(open_source(tmp_path / "ds"), tmp_path / "shards")
    cfg.write_text("datasets:\n  - {path: shards, keys: {instruction: language_instruction}}\n")
    assert load_data(cfg, spec).streams["action"][2]["instruction"] == "lift it up"
    assert load_data(tmp_path / "ds", spec).streams["action"][1]["instruction"] == "the episode task"
    cfg.write_text("datasets:\n  - {path: ds, keys: {instruction: {text: pick the cube}}}\n")
    assert load_data(cfg, spec).streams["action"][0]["instruction"] == "pick the cube"
    cfg.write_text("datasets:\n  - {path: ds, keys: {instruction: prompt}}\n")
    with pytest.raises(DatasetError, match=r"text port 'instruction' wants 'prompt'.*text keys: language_instruction"):
        load_data(cfg, spec)


class _Mix(_Sized):
    def __init__(self, parts, weights):
        super().__init__(sum(parts))
        self.part_sizes, self.weights = parts, weights


def test_mixture_sampler_weights_and_coverage():
    ds = _Mix([10, 90], [1, 1])  # a small part weighted like a big one is repeated, in full passes
    s = StreamSampler(ds, seed=2)
    draws = np.array(take(s, 300))
    small = draws[draws < 10]
    assert len(small) == 150  # 50 per epoch of 100: the weights hold exactly per epoch
    for p in range(15):  # every pass over the small part is a permutation of it
        assert sorted(small[10 * p: 10 * p + 10]) == list(range(10))
    big = draws[draws >= 10]
    assert len(set(big[:90].tolist())) == 90  # the big part: no repeats before a full pass
    s2 = StreamSampler(ds, seed=2)
    take(s2, 137)
    s3 = StreamSampler(ds, seed=2)
    s3.load_state_dict(s2.state_dict())
    assert take(s3, 163) == draws[137:].tolist()
