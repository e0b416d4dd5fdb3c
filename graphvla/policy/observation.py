"""The one observation validator: checks one value against the input port it feeds.

`check(name, decl, value)` refuses what does not fit the port declaration `decl` with an
ObservationError that starts with `name` (the policy passes "observation 'PORT'", the server
the client's key) and says what was expected; what fits comes back in a canonical layout:

- image: uint8 [V, H, W, C] or float32 [V, C, H, W] (uint8 CHW and float HWC are transposed;
  one HWC/CHW frame stands for a one-view port, or for one view with `one_view=True`);
  float images and states must be finite;
- text: a str (UTF-8 bytes and 0-d string arrays are decoded);
- state / action: float32 of `expected_shape`; mask: bool; tokens: int64.

`to_tensor(decl, value)` then makes the tensor the graph takes, uint8 frames through the same
`to_float_chw` the training data uses (graphvla/data/images.py), so served and trained pixels
are the same floats. `convert` is both in one call (Policy.infer_batch); the server's
ObservationMapper calls `check` per client key and leaves the tensors to the policy.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.images import to_float_chw


class ObservationError(ValueError):
    """An observation that does not match the graph's inference inputs."""


def expected_shape(decl: dict) -> list:
    kind = decl["kind"]
    if kind == "image":
        h, w = decl["size"]
        return [decl.get("views", 1), decl.get("channels", 3), h, w]
    if kind == "state":
        return [decl["dim"]] if decl.get("history", 1) == 1 else [decl["history"], decl["dim"]]
    if kind == "action":
        return [decl["horizon"], decl["dim"]]
    if kind in ("mask", "tokens"):
        return list(decl["shape"])
    return []


def describe(decl: dict, *, one_view: bool = False) -> str:
    """What a value for this port looks like (for one view of an image port with one_view)."""
    kind = decl["kind"]
    if kind == "text":
        return "a string"
    if kind == "image":
        v, c, h, w = expected_shape(decl)
        if one_view:
            return f"uint8 [{h}, {w}, {c}] (HWC) or float32 [{c}, {h}, {w}] in [0, 1]"
        if v == 1:
            return (f"uint8 [{h}, {w}, {c}] (or [1, {h}, {w}, {c}]) or float32 [{c}, {h}, {w}] "
                    f"(or [1, {c}, {h}, {w}]) in [0, 1]")
        return f"{v} views stacked: uint8 [{v}, {h}, {w}, {c}] or float32 [{v}, {c}, {h}, {w}] in [0, 1]"
    if kind == "state":
        return f"float {expected_shape(decl)} (state)"
    return f"{kind} of shape {expected_shape(decl)}"


def check(name: str, decl: dict, value, *, one_view: bool = False):
    """The value in its canonical layout (module docstring), or ObservationError naming `name`.
    Arrays may stay read-only views of the caller's: `to_tensor` copies."""
    kind = decl["kind"]
    if kind == "text":
        return _text(name, value)
    arr = _array(name, decl, value, one_view)
    if kind == "image":
        return _image(name, decl, arr, one_view)
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise ObservationError(f"{name}: expected {describe(decl)}, got dtype {arr.dtype}")
    want = expected_shape(decl)
    if kind == "mask":
        if arr.dtype != np.bool_ and arr.dtype.kind not in "iu":
            raise ObservationError(f"{name}: expected a boolean mask of shape {want}, got dtype {arr.dtype}")
        arr = arr.astype(bool, copy=False)
    elif kind == "tokens":
        if arr.dtype.kind not in "iu":
            raise ObservationError(f"{name}: expected integer tokens of shape {want}, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
    else:
        if arr.dtype.kind not in "fiub":
            raise ObservationError(f"{name}: expected numbers of shape {want}, got dtype {arr.dtype}")
        arr = arr.astype(np.float32, copy=False)
    if list(arr.shape) != want:
        raise ObservationError(f"{name}: expected shape {want}, got {list(arr.shape)}")
    if kind == "state" and not np.all(np.isfinite(arr)):
        raise ObservationError(f"{name}: state contains NaN or inf")
    return arr


def to_tensor(decl: dict, value):
    """A value `check` returned -> the tensor (or str) the graph takes (a copy)."""
    if decl["kind"] == "text":
        return value
    if decl["kind"] == "image" and value.dtype == np.uint8:
        return torch.from_numpy(to_float_chw(value))
    return torch.from_numpy(np.array(value, order="C"))  # a copy: client arrays may be read-only views


def convert(port: str, decl: dict, value):
    """One unbatched observation value -> the tensor (or str) the graph takes."""
    return to_tensor(decl, check(f"observation '{port}'", decl, value))


# --- per kind --------------------------------------------------------------------------------

def _text(name, value) -> str:
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "SU":
        value = value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise ObservationError(f"{name}: expected a UTF-8 string, got undecodable bytes") from None
    if not isinstance(value, str):
        raise ObservationError(f"{name}: expected a string, got {_describe(value)}")
    return value


def _array(name, decl, value, one_view) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple, int, float, np.generic)) and not isinstance(value, (str, bytes)):
        try:
            return np.asarray(value)
        except ValueError:  # ragged nesting
            raise ObservationError(f"{name}: expected {describe(decl, one_view=one_view)}, "
                                   f"got a list that is not an array") from None
    raise ObservationError(f"{name}: expected {describe(decl, one_view=one_view)}, got {_describe(value)}")


def _image(name, decl, arr, one_view) -> np.ndarray:
    def bad():
        return ObservationError(f"{name}: expected {describe(decl, one_view=one_view)}, got {_describe(arr)}")

    if not (arr.dtype == np.uint8 or arr.dtype.kind == "f"):
        raise bad()
    views, c, h, w = expected_shape(decl)
    views = 1 if one_view else views
    frames = arr[None] if arr.ndim == 3 and views == 1 else arr
    if frames.ndim != 4 or frames.shape[0] != views:
        raise bad()
    hwc = frames.shape[1:] == (h, w, c)
    chw = frames.shape[1:] == (c, h, w)
    if not (hwc or chw):
        raise bad()
    if arr.dtype == np.uint8:
        if not hwc:
            frames = frames.transpose(0, 2, 3, 1)
    else:
        if not chw:
            frames = frames.transpose(0, 3, 1, 2)
        frames = frames.astype(np.float32, copy=False)
        if not np.all(np.isfinite(frames)):
            raise ObservationError(f"{name}: image contains NaN or inf")
    return frames[0] if one_view else frames


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return type(value).__name__
