"""The one image path: every frame a policy sees goes through `prepare_frame` (and, where the
graph takes floats, `to_float_chw`), whether it is recorded, loaded for training, built into an
evaluation request, transformed by a client adapter or converted by the policy server.

`prepare_frame(frame, size, flip=, crop=)` flips, then crops, then resizes one HxWxC frame and
returns it in the same dtype. Resizing is Pillow's bilinear filter (`Image.resize(...,
BILINEAR)`: pixel centres aligned, the filter widened by the scale factor when shrinking, so a
downscale averages every source pixel instead of skipping some), on uint8 frames only. A frame
already at `size` is passed through untouched, which is the usual case: Meta-World data is
recorded at the port size and evaluation renders at it.

`to_float_chw` turns uint8 [..., H, W, C] into float32 [..., C, H, W] in [0, 1] (x / 255 in
float32, correctly rounded). Plain numpy on purpose: per-sample work in data-loader workers
should not spin up torch threads, and the client imports this module without torch.

The VLM processor's own preprocessing (graphvla/blocks/backbones) is the model's, not this.
"""
from __future__ import annotations

import numpy as np

FLIPS = ("none", "vertical", "horizontal", "both")


def prepare_frame(frame: np.ndarray, size=None, *, flip: str | None = None, crop=None) -> np.ndarray:
    """One HxWxC frame, flipped, cropped and resized, in that order.

    size: (H, W) to resize to (None or the frame's own size: no resampling).
    flip: 'vertical' (rows), 'horizontal' (columns), 'both' (= rotate 180) or None/'none'.
    crop: (top, left, height, width) in pixels of the flipped frame, or None.
    Returns a C-contiguous array of the input's dtype (the input itself when nothing changes).
    Raises ValueError naming what is wrong."""
    frame = np.asarray(frame)
    if frame.ndim != 3:
        raise ValueError(f"a frame must be H x W x C, got shape {list(frame.shape)}")
    frame = _flip(frame, flip)
    if crop is not None:
        frame = _crop(frame, crop)
    if size is not None:
        h, w = _size(size)
        if frame.shape[:2] != (h, w):
            frame = _resize(frame, h, w)
    return np.ascontiguousarray(frame)


def to_float_chw(frames: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W, C] -> float32 [..., C, H, W] in [0, 1] (a new array)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 3:
        raise ValueError(f"expected uint8 [..., H, W, C], got {frames.dtype} {list(frames.shape)}")
    chw = np.moveaxis(frames, -1, -3)
    out = np.empty(chw.shape, dtype=np.float32)
    np.divide(chw, np.float32(255), out=out)
    return out


def image_array(frame: np.ndarray, size) -> np.ndarray:
    """What a training item holds for one view: HxWxC uint8 -> CxHxW float32 in [0, 1] at `size`."""
    return to_float_chw(prepare_frame(frame, size))


def image_tensor(frame: np.ndarray, size):
    """`image_array` as a torch tensor."""
    import torch

    return torch.from_numpy(image_array(frame, size))


def check_flip(flip) -> str:
    """The flip name, or ValueError listing the choices."""
    name = "none" if flip is None else flip
    if name not in FLIPS:
        raise ValueError(f"flip must be one of {', '.join(FLIPS)}, got '{flip}'")
    return name


def _flip(frame: np.ndarray, flip) -> np.ndarray:
    name = check_flip(flip)
    if name == "vertical":
        return frame[::-1]
    if name == "horizontal":
        return frame[:, ::-1]
    if name == "both":
        return frame[::-1, ::-1]
    return frame


def _size(size) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"an image size is [height, width], got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"an image size must be positive, got [{h}, {w}]")
    return h, w


def _crop(frame: np.ndarray, crop) -> np.ndarray:
    try:
        top, left, h, w = (int(c) for c in crop)
    except (TypeError, ValueError):
        raise ValueError(f"crop is [top, left, height, width], got {crop!r}") from None
    H, W = frame.shape[:2]
    if top < 0 or left < 0 or h < 1 or w < 1 or top + h > H or left + w > W:
        raise ValueError(f"crop [{top}, {left}, {h}, {w}] (top, left, height, width) does not fit "
                         f"in a {H}x{W} frame")
    return frame[top: top + h, left: left + w]


def _resize(frame: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pillow bilinear; RGB frames in one call, other channel counts band by band (the same
    arithmetic per channel, without Pillow's alpha premultiplication of RGBA)."""
    if frame.dtype != np.uint8:
        raise ValueError(f"resizing takes uint8 H x W x C frames, got {frame.dtype} {list(frame.shape)}")
    from PIL import Image

    bilinear = Image.Resampling.BILINEAR
    if frame.shape[2] == 3:
        return np.asarray(Image.fromarray(frame).resize((w, h), bilinear))
    bands = [np.asarray(Image.fromarray(np.ascontiguousarray(frame[..., c])).resize((w, h), bilinear))
             for c in range(frame.shape[2])]
    return np.stack(bands, axis=-1)
