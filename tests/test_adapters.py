"""Benchmark adapters on recorded arrays: exact numerics of chunk execution, ACT temporal
ensembling, delta -> absolute, gripper mapping, image flips and resizing, YAML configs."""
from __future__ import annotations

import numpy as np
import pytest

from graphvla.client.adapters import (BENCHMARK_DIR, Adapter, AdapterConfigError, ChunkExecutor, TemporalEnsembler,
                                      delta_to_absolute, load_adapter, map_gripper)


def recorded_trajectory(T=40, A=7, seed=0):
    """A smooth 'recorded' action stream (what a perfect policy would predict)."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)[:, None]
    return (np.sin(t / 7.0 + rng.random(A)) + 0.1 * t / T).astype(np.float32)


def test_chunk_executor_executes_k_of_h_then_requeries():
    traj = recorded_trajectory()
    H, k = 8, 3
    queries, executed = [], []
    adapter = Adapter({"actions": {"execute": k}})
    for t in range(12):
        def query(obs, t=t):
            queries.append(t)
            return {"actions": traj[t:t + H]}
        executed.append(adapter.act({}, query))
    assert queries == [0, 3, 6, 9]
    np.testing.assert_array_equal(np.stack(executed), traj[:12])  # chunk starts line up with time


def test_chunk_executor_shorter_chunk_than_k():
    ex = ChunkExecutor(5)
    ex.add(np.arange(6).reshape(3, 2))
    assert [ex.next().tolist() for _ in range(3)] == [[0, 1], [2, 3], [4, 5]] and ex.needs_query()


def test_temporal_ensembling_matches_act_weights():
    H, A, decay = 4, 2, 0.5
    rng = np.random.default_rng(1)
    chunks = [rng.standard_normal((H, A)) for _ in range(6)]  # chunk i predicted at time i
    ens = TemporalEnsembler(decay)
    got = []
    for c in chunks:
        ens.add(c)
        got.append(ens.next())
    for t in range(6):
        preds = [chunks[s][t - s] for s in range(max(0, t - H + 1), t + 1)]  # oldest first
        w = np.exp(-decay * np.arange(len(preds)))
        np.testing.assert_allclose(got[t], (w[:, None] * np.stack(preds)).sum(0) / w.sum(), rtol=1e-6)


def test_temporal_ensembling_of_consistent_chunks_is_the_trajectory():
    traj = recorded_trajectory()
    adapter = Adapter({"actions": {"ensemble": {"decay": 0.01}}})
    out = [adapter.act({}, lambda o, t=t: {"actions": traj[t:t + 8]}) for t in range(20)]
    assert adapter.queries == 20
    np.testing.assert_allclose(np.stack(out), traj[:20], rtol=1e-6, atol=1e-6)


def test_delta_to_absolute_relative_and_cumulative():
    traj = recorded_trajectory(T=9, A=3)
    deltas = np.diff(traj, axis=0)  # step-to-step deltas
    np.testing.assert_allclose(delta_to_absolute(deltas, traj[0], [0, 1, 2], "cumulative"), traj[1:], atol=1e-5)
    rel = traj[1:] - traj[0]  # every step relative to the query-time state
    np.testing.assert_allclose(delta_to_absolute(rel, traj[0], [0, 1, 2], "relative"), traj[1:], atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        delta_to_absolute(rel, traj[0], [0, 1, 2], "sideways")


def test_adapter_delta_uses_the_state_at_query_time():
    adapter = Adapter({"actions": {"execute": 2, "delta": {"state_key": "observation/state", "dims": [0, 1],
                                                           "state_dims": [2, 3], "mode": "relative"}}})
    chunk = np.array([[1.0, 2.0, 0.5], [3.0, 4.0, 0.7]], np.float32)
    obs = {"observation/state": np.array([9, 9, 10, 20], np.float32)}
    a0 = adapter.act(obs, lambda o: {"actions": chunk})
    a1 = adapter.act({"observation/state": np.zeros(4, np.float32)}, lambda o: pytest.fail("no query expected"))
    np.testing.assert_array_equal(a0, np.array([11, 22, 0.5], np.float32))
    np.testing.assert_array_equal(a1, np.array([13, 24, 0.7], np.float32))  # same reference: the state when the chunk was asked for


@pytest.mark.parametrize("g, kw, expected", [
    (-1.0, {"src": (-1, 1), "dst": (0, 1)}, 0.0),
    (0.5, {"src": (-1, 1), "dst": (0, 1)}, 0.75),
    (0.5, {"src": (-1, 1), "dst": (0, 1), "invert": True}, 0.25),
    (0.2, {"src": (0, 1), "dst": (-1, 1), "binarize": True}, -1.0),
    (0.7, {"src": (0, 1), "dst": (-1, 1), "binarize": True}, 1.0),
    (0.3, {"src": (-1, 1), "dst": (-1, 1), "binarize": True, "threshold": 0.5}, -1.0),
    (0.3, {"src": (0, 1), "dst": (1, -1)}, 0.4),  # reversed target range
])
def test_gripper_mapping(g, kw, expected):
    a = np.array([0.1, 0.2, g], np.float32)
    out = map_gripper(a, index=-1, **kw)
    assert out[-1] == pytest.approx(expected, abs=1e-6)
    np.testing.assert_array_equal(out[:2], a[:2])


def _prepared(img, **spec):
    return Adapter({"images": {"cam": spec}}).prepare({"cam": img})["cam"]


def test_image_flips_and_resize():
    """Adapters transform images with graphvla.data.images.prepare_frame: Pillow bilinear, the
    resampling training uses (tests/test_image_path.py checks every path gives the same pixels)."""
    from PIL import Image

    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_prepared(img, flip="vertical"), img[::-1])
    np.testing.assert_array_equal(_prepared(img, flip="horizontal"), img[:, ::-1])
    np.testing.assert_array_equal(_prepared(img, flip="both"), np.rot90(img, 2))
    np.testing.assert_array_equal(_prepared(img, crop=[1, 2, 3, 4]), img[1:4, 2:6])
    big = rng.integers(0, 256, (12, 15, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(big).resize((5, 4), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(_prepared(big, resize=[4, 5]), pil)
    const = np.full((7, 9, 3), 77, np.uint8)
    np.testing.assert_array_equal(_prepared(const, resize=[224, 224]), np.full((224, 224, 3), 77, np.uint8))
    ramp = np.tile((20 * np.arange(10)).astype(np.uint8)[None, :, None], (4, 1, 3))
    up = _prepared(ramp, resize=[4, 20])  # bilinear keeps a linear ramp linear inside the border
    np.testing.assert_array_equal(np.diff(up[0, 1:-1, 0].astype(int)), 10)
    with pytest.raises(AdapterConfigError, match="flip"):
        Adapter({"images": {"cam": {"flip": "upside"}}})
    with pytest.raises(ValueError, match=r"images.cam: crop \[5, 0, 3, 3\].*does not fit in a 6x8 frame"):
        _prepared(img, crop=[5, 0, 3, 3])


def test_prepare_transforms_only_declared_images():
    from PIL import Image

    adapter = Adapter({"images": {"observation/image": {"flip": "both", "resize": [2, 2]}}})
    img = np.arange(16 * 3, dtype=np.uint8).reshape(4, 4, 3)
    out = adapter.prepare({"observation/image": img, "observation/wrist_image": img, "prompt": "x"})
    expected = np.asarray(Image.fromarray(np.ascontiguousarray(img[::-1, ::-1])).resize((2, 2), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out["observation/image"], expected)
    assert out["observation/wrist_image"] is img and out["prompt"] == "x"


def test_benchmark_configs_load_and_unknown_keys_are_named():
    names = sorted(p.stem for p in BENCHMARK_DIR.glob("*.yaml"))
    assert {"metaworld", "libero", "simplerenv"} <= set(names)
    for n in names:
        load_adapter(n)
    libero = load_adapter("libero")
    assert libero.images["observation/image"] == {"flip": "both", "resize": [224, 224]}
    assert isinstance(load_adapter("simplerenv").scheduler, TemporalEnsembler)
    assert load_adapter("metaworld", {"actions.execute": 2}).scheduler.execute == 2
    with pytest.raises(AdapterConfigError, match="unknown key 'exeucte'.*did you mean 'execute'"):
        Adapter({"actions": {"exeucte": 2}})
    with pytest.raises(FileNotFoundError, match="libero"):
        load_adapter("nosuchbench")


def test_libero_adapter_end_to_end_on_a_recorded_chunk():
    """LIBERO: gripper binarized to -1/+1, actions clipped, replanning every 5 steps."""
    adapter = load_adapter("libero")
    chunk = np.zeros((10, 7), np.float32)
    chunk[:, 0] = np.linspace(-2, 2, 10)  # beyond the clip range at both ends
    chunk[:, 6] = np.linspace(-0.9, 0.9, 10)
    out = np.stack([adapter.act({}, lambda o: {"actions": chunk}) for _ in range(5)])
    np.testing.assert_allclose(out[:, 0], np.clip(chunk[:5, 0], -1, 1))
    np.testing.assert_array_equal(out[:, 6], np.where(chunk[:5, 6] > 0, 1.0, -1.0))
    assert adapter.queries == 1
