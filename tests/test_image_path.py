"""One image path: the same camera frame becomes byte-identical pixels whether it is recorded,
loaded as a training item, built into a Meta-World eval request, transformed by a client
adapter, or checked by the server and converted by the Policy, including frames of another
size than the port (resized once, by graphvla.data.images.prepare_frame) and flipped frames."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import require_metaworld

import graphvla
from graphvla.client.adapters import Adapter
from graphvla.compiler.compile import compile_graph
from graphvla.data.api import open_source
from graphvla.data.frames import ActionDataset, bind
from graphvla.data.images import image_array, prepare_frame, to_float_chw
from graphvla.data.lerobot_write import LeRobotWriter
from graphvla.data.metaworld_record import _rollout
from graphvla.data.ports import stream_ports
from graphvla.runners.eval.metaworld import RequestBuilder
from graphvla.policy.observation import ObservationError, check, convert
from graphvla.policy.policy import Policy
from graphvla.runners.serve.observation import ObservationMapper

torch.set_num_threads(1)

PORT = (64, 64)  # graphs/tiny/mlp.yaml's image port
CAMERA = "observation.images.cam"
KEY_MAP = {"observation/image": "images", "observation/state": "state", "prompt": "instruction"}
FRAMES = [(64, 64), (96, 96), (40, 40), (80, 120)]  # the port size, larger, smaller, another aspect
UNDO = {None: lambda f: f, "both": lambda f: f[::-1, ::-1], "vertical": lambda f: f[::-1]}


@pytest.fixture(scope="module")
def policy():
    """The tiny MLP graph (state of 4 dims, as Meta-World eval provides) whose inference graph is
    replaced by a probe that keeps the tensors the Policy hands it."""
    cg = compile_graph(str(Path(graphvla.__file__).parent / "graphs" / "tiny" / "mlp.yaml"),
                       ["inputs.state.dim=4"], device="cpu")
    p = Policy(cg)
    p.seen = []

    def probe(**batch):
        p.seen.append(batch)
        return {"actions": torch.zeros(len(batch["images"]), 8, 4)}

    cg.infer.forward = probe  # the module the Policy calls stays; only what it computes is replaced
    return p


def frame(shape, seed=0):
    """A camera frame with structure at every scale (noise on smooth gradients)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([255 * y / h, 255 * x / w, 127 + 100 * np.sin((x + y) / 5)], axis=-1)
    return np.clip(smooth + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


class _Env:
    """Two steps of an env whose camera shows `frames`, for the recorder's own loop."""

    def __init__(self, frames):
        self.frames, self.t = list(frames), 0

    def step(self, action):
        self.t += 1
        return np.zeros(39, np.float32), 0.0, False, self.t >= len(self.frames), {"success": 0.0}


def _fake_mw(env):
    return SimpleNamespace(
        reset_env=lambda e, seed: (np.zeros(39, np.float32), {}), max_steps=lambda e: len(e.frames),
        expert_action=lambda task, obs: np.zeros(4, np.float32), render=lambda e: e.frames[e.t],
        robot_state=lambda obs: np.asarray(obs[:4], dtype=np.float32))


def recorded(frames, size: int) -> np.ndarray:
    """What the recorder keeps of these camera frames when recording at `size`."""
    env = _Env(frames)
    out, _ = _rollout(env, "reach-v3", 0, "cam", _fake_mw(env), size)
    return out["observation.images.cam"]


def training_items(root, frames, policy) -> list:
    """Dataset samples (ActionDataset items, the training path) of a LeRobot folder holding `frames`."""
    writer = LeRobotWriter(root, fps=10, features={CAMERA: ("image", frames[0].shape),
                                                   "observation.state": ("float32", (4,)),
                                                   "action": ("float32", (4,))})
    n = len(frames)
    writer.add_episode({CAMERA: np.stack(frames), "observation.state": np.zeros((n, 4), np.float32),
                        "action": np.zeros((n, 4), np.float32)}, "reach the goal")
    writer.finalize()
    source = open_source(root)
    ports = stream_ports(policy.cg.spec)["action"]
    ds = ActionDataset(source, ports, bind(source, ports))
    return [ds[i]["images"] for i in range(len(ds))]


def served(policy, request: dict) -> torch.Tensor:
    """The image tensor the graph gets for a client request: server checks, then Policy.infer."""
    obs = ObservationMapper(policy.metadata["inputs"], KEY_MAP)(request)
    policy.infer(obs)
    return policy.seen[-1]["images"][0]


def same_bytes(a, b) -> bool:
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("flip", list(UNDO), ids=lambda f: f"flip-{f}")
@pytest.mark.parametrize("shape", FRAMES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_path_gives_the_same_pixels(policy, tmp_path, shape, flip):
    """`flip`: the simulator renders the frame flipped (as robosuite does); the adapter declares
    the flip that undoes it, every other path sees the upright frame."""
    upright = [frame(shape, seed) for seed in (0, 1)]
    want = [prepare_frame(f, PORT) for f in upright]  # uint8 [64, 64, 3]
    want_float = [torch.from_numpy(to_float_chw(w)[None]) for w in want]  # float32 [1, 3, 64, 64]
    assert want[0].shape == (*PORT, 3)
    if shape == PORT:
        assert all(same_bytes(w, f) for w, f in zip(want, upright))  # no resampling at the port size

    # recorder: frames kept at the port size are the one path's pixels
    kept = recorded(upright, PORT[0])
    assert all(same_bytes(k, w) for k, w in zip(kept, want))

    # training: a dataset of the raw frames (resized when loaded), and one of the recorded frames
    for name, stored in (("raw", upright), ("recorded", list(kept))):
        items = training_items(tmp_path / name, stored, policy)
        assert all(same_bytes(i, w) for i, w in zip(items, want_float)), name

    # evaluation: the Meta-World request builder, then the server and the Policy
    builder = RequestBuilder({**policy.metadata, "key_map": KEY_MAP})
    state = np.arange(39, dtype=np.float32) / 39
    for f, w, wf in zip(upright, want, want_float):
        request = builder("reach-v3", state, f)
        assert same_bytes(request["observation/image"], w)
        assert same_bytes(served(policy, request), wf)

    # client adapter: undoes the render's flip, resizes to the port size
    adapter = Adapter({"images": {"observation/image": {"flip": flip or "none", "resize": list(PORT)}}})
    for f, w, wf in zip(upright, want, want_float):
        rendered = np.ascontiguousarray(UNDO[flip](f))  # the flips are their own inverses
        request = adapter.prepare({"observation/image": rendered, "observation/state": state[:4], "prompt": "x"})
        assert same_bytes(request["observation/image"], w)
        assert same_bytes(served(policy, request), wf)
        assert same_bytes(convert("images", policy.inputs["images"], request["observation/image"]), wf)


def test_a_real_render_takes_the_same_path(policy, tmp_path):
    from graphvla.sim import metaworld as mw

    require_metaworld()  # under CI=true a simulator that cannot render fails this test
    env = mw.make_env("reach-v3", seed=3, size=80)
    try:
        f = mw.render(env)
    finally:
        env.close()
    want = image_array(f, PORT)
    assert same_bytes(recorded([f], PORT[0])[0], prepare_frame(f, PORT))
    assert same_bytes(training_items(tmp_path / "d", [f], policy)[0][0], want)
    request = RequestBuilder({**policy.metadata, "key_map": KEY_MAP})("reach-v3", np.zeros(39, np.float32), f)
    assert same_bytes(served(policy, request)[0], want)


def test_served_layouts_convert_like_training(policy):
    """uint8 HWC, uint8 CHW and float CHW of one frame reach the graph as the training floats."""
    f = prepare_frame(frame((64, 64), 5), PORT)
    want = torch.from_numpy(image_array(f, PORT)[None])
    decl = policy.inputs["images"]
    for value in (f, f[None], np.ascontiguousarray(f.transpose(2, 0, 1)), image_array(f, PORT)):
        assert same_bytes(convert("images", decl, value), want)
        state = np.zeros(4, np.float32)
        assert same_bytes(served(policy, {"observation/image": value, "observation/state": state, "prompt": "x"}), want)


# --- prepare_frame itself ------------------------------------------------------------------------

def test_prepare_frame_flips_then_crops_then_resizes():
    from PIL import Image

    f = frame((30, 40), 2)
    assert prepare_frame(f) is f and prepare_frame(f, (30, 40)) is f  # nothing to do: the frame itself
    np.testing.assert_array_equal(prepare_frame(f, flip="vertical"), f[::-1])
    np.testing.assert_array_equal(prepare_frame(f, flip="horizontal"), f[:, ::-1])
    np.testing.assert_array_equal(prepare_frame(f, flip="both"), f[::-1, ::-1])
    np.testing.assert_array_equal(prepare_frame(f, flip="both", crop=(2, 3, 10, 20)), f[::-1, ::-1][2:12, 3:23])
    out = prepare_frame(f, (16, 24), flip="vertical", crop=(2, 3, 20, 30))
    pil = Image.fromarray(np.ascontiguousarray(f[::-1][2:22, 3:33])).resize((24, 16), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(out, np.asarray(pil))
    assert out.flags["C_CONTIGUOUS"] and prepare_frame(f, flip="both").flags["C_CONTIGUOUS"]


def test_prepare_frame_resizes_any_channel_count_band_by_band():
    from PIL import Image

    rgba = np.concatenate([frame((20, 20), 3), frame((20, 20), 4)[..., :1]], axis=-1)
    for img in (rgba, rgba[..., :1], rgba[..., :3]):
        out = prepare_frame(img, (9, 13))
        assert out.shape == (9, 13, img.shape[2]) and out.dtype == np.uint8
        for c in range(img.shape[2]):  # RGBA is not alpha-premultiplied: each band on its own
            band = Image.fromarray(np.ascontiguousarray(img[..., c])).resize((13, 9), Image.Resampling.BILINEAR)
            np.testing.assert_array_equal(out[..., c], np.asarray(band))


def test_prepare_frame_refuses_what_it_cannot_do():
    f = frame((8, 8))
    with pytest.raises(ValueError, match="flip must be one of none, vertical, horizontal, both, got 'upside'"):
        prepare_frame(f, flip="upside")
    with pytest.raises(ValueError, match=r"crop \[4, 4, 5, 2\] \(top, left, height, width\) does not fit in a 8x8"):
        prepare_frame(f, crop=(4, 4, 5, 2))
    with pytest.raises(ValueError, match=r"resizing takes uint8 H x W x C frames, got float32 \[8, 8, 3\]"):
        prepare_frame(f.astype(np.float32), (4, 4))
    with pytest.raises(ValueError, match=r"a frame must be H x W x C, got shape \[8, 8\]"):
        prepare_frame(f[..., 0], (4, 4))
    with pytest.raises(ValueError, match=r"an image size is \[height, width\]"):
        prepare_frame(f, (4,))
    np.testing.assert_array_equal(prepare_frame(f.astype(np.float32), flip="both"), f[::-1, ::-1])  # no resize


def test_the_validator_names_the_caller_and_refuses_nan():
    decl = {"kind": "image", "views": 1, "size": [4, 4]}
    bad = np.full((3, 4, 4), np.nan, np.float32)
    with pytest.raises(ObservationError, match="'cam': image contains NaN or inf"):
        check("'cam'", decl, bad)
    with pytest.raises(ObservationError, match=r"observation 'images': expected uint8 \[4, 4, 3\]"):
        convert("images", decl, np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(ObservationError, match=r"'cam': expected uint8 \[4, 4, 3\] \(HWC\) or float32 \[3, 4, 4\]"):
        check("'cam'", {**decl, "views": 2}, np.zeros((4, 4), np.uint8), one_view=True)
    with pytest.raises(ObservationError, match=r"'s': expected shape \[4\], got \[1, 4\]"):
        check("'s'", {"kind": "state", "dim": 4}, np.zeros((1, 4)))
