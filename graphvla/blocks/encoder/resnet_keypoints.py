"""`encoder.resnet_keypoints`: camera images over several observation steps -> one feature vector
per step, as Diffusion Policy encodes them (Chi et al. 2023; the configuration of LeRobot's
DiffusionRgbEncoder, graphs/lerobot/diffusion.yaml): per image a crop, a ResNet trunk up to layer4
(encoder/resnet.py, group norm by default), spatial-softmax keypoints (a 1x1 conv to `keypoints`
channels, a softmax over each channel's map, the expected (x, y) on a [-1, 1] grid), then
Linear(2K, 2K) and ReLU.

Input: images [B, V, 3, H, W] with V = `cameras` x observation steps, camera-major (view
c * steps + s is camera c at step s, the oldest step first: what a data YAML's
`{camera: [KEYS], offsets: [-1, 0]}` binds, graphvla/data/frames.py), raw in [0, 1] and normalized
here (`normalize`: 'none', or per-camera {mean, std} applied before the crop). Output `features` [B, S, cameras * 2K]:
per step, the cameras' features one after the other. `separate_encoders` gives every camera its own
trunk and keypoint layers (LeRobot's use_separate_rgb_encoder_per_camera); otherwise one encoder
sees every image.

Crop: `crop` [h, w] (null: none). At inference, and in training unless `random_crop`, the center crop
(top = round((H - h) / 2), Python's rounding); in training with `random_crop`, one random window per
encoder and batch (torch's global generator), as torchvision's RandomCrop draws it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, InPort, OutPort, ParamError, PortError
from ..registry import register
from .resnet import DEPTHS, NORMS, TRIPLES, WIDTH_PARAM, ResNet, _triples


def trunk_size(n: int) -> int:
    """Side of ResNet's layer4 map for an input side n: the stem conv and max pool, then three stride-2 stages."""
    n = (n + 2 * 3 - 7) // 2 + 1
    n = (n + 2 - 3) // 2 + 1
    for _ in range(3):
        n = (n + 2 - 3) // 2 + 1
    return n


class SpatialKeypoints(nn.Module):
    """[N, C, h, w] -> [N, 2K]: per keypoint channel the softmax-weighted mean (x, y) on a [-1, 1] grid."""

    def __init__(self, channels: int, keypoints: int, h: int, w: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, keypoints, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, h, dtype=torch.float64),
                                torch.linspace(-1.0, 1.0, w, dtype=torch.float64), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float(), persistent=False)

    def forward(self, x):
        k = self.proj(x)
        n, c = k.shape[:2]
        weights = F.softmax(k.reshape(n * c, -1), dim=-1)
        return (weights @ self.grid.to(weights.dtype)).reshape(n, 2 * c)


class ImageEncoder(nn.Module):
    def __init__(self, depth: int, norm: str, keypoints: int, h: int, w: int, width: int = 64):
        super().__init__()
        self.trunk = ResNet(depth, norm, width)
        self.keypoints = SpatialKeypoints(self.trunk.channels, keypoints, trunk_size(h), trunk_size(w))
        self.out = nn.Linear(2 * keypoints, 2 * keypoints)

    def forward(self, x):
        return F.relu(self.out(self.keypoints(self.trunk(x))))


@register
class ResNetKeypointsEncoder(Block):
    type_name = "encoder.resnet_keypoints"
    description = ("Per observation step and camera: crop, ResNet trunk (group norm), spatial-softmax keypoints, "
                   "linear + ReLU (Diffusion Policy's image encoder, as LeRobot builds it).")
    in_ports = {"images": InPort("image", ndim=5, doc="[B, cameras * steps, 3, H, W], camera-major, oldest step first")}
    out_ports = {"features": OutPort("hidden", doc="[B, steps, cameras * 2 * keypoints]")}
    params_schema = {
        "type": "object",
        "properties": {
            "cameras": {"type": "integer", "minimum": 1, "default": 1,
                        "description": "cameras (the views are cameras x observation steps, camera-major)"},
            "depth": {"enum": sorted(DEPTHS), "default": 18},
            "width": WIDTH_PARAM,
            "norm": {"enum": list(NORMS), "default": "group_norm"},
            "keypoints": {"type": "integer", "minimum": 1, "default": 32},
            "crop": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 1}, "minItems": 2,
                     "maxItems": 2, "default": None, "description": "[h, w] crop (null: the whole image)"},
            "random_crop": {"type": "boolean", "default": True,
                            "description": "training crops a random window (inference: the center)"},
            "separate_encoders": {"type": "boolean", "default": False, "description": "one encoder per camera"},
            "normalize": {"oneOf": [{"enum": ["none"]},
                                    {"type": "object", "properties": {"mean": TRIPLES, "std": TRIPLES},
                                     "required": ["mean", "std"], "additionalProperties": False}],
                          "default": "none",
                          "description": "(x - mean) / std per channel before the crop: none, or {mean, std} with "
                                         "one triple for all cameras or one per camera"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("images", 5)
        p = self.params
        _, views, channels, h, w = inputs["images"].shape
        if channels != 3:
            raise PortError("images", f"takes RGB images (3 channels), got {channels}")
        self.cameras = p["cameras"]
        if views % self.cameras:
            raise ParamError("cameras", f"the images have {views} views, not a multiple of {self.cameras} cameras "
                                        f"(views = cameras x observation steps)")
        self.steps = views // self.cameras
        self.crop = tuple(p["crop"]) if p["crop"] else None
        if self.crop and (self.crop[0] > h or self.crop[1] > w):
            raise ParamError("crop", f"{list(self.crop)} does not fit in the {h}x{w} images")
        ch, cw = self.crop or (h, w)
        n = self.cameras if p["separate_encoders"] else 1
        self.encoders = nn.ModuleList(ImageEncoder(p["depth"], p["norm"], p["keypoints"], ch, cw, p["width"]) for _ in range(n))
        if p["normalize"] == "none":
            mean, std = [[0.0] * 3] * self.cameras, [[1.0] * 3] * self.cameras
        else:
            mean = _triples(p["normalize"]["mean"], self.cameras, "normalize.mean")
            std = _triples(p["normalize"]["std"], self.cameras, "normalize.std")
            if any(s <= 0 for v in std for s in v):
                raise ParamError("normalize.std", f"every std must be > 0, got {p['normalize']['std']}")
        self.register_buffer("mean", torch.tensor(mean).view(1, self.cameras, 1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, self.cameras, 1, 3, 1, 1), persistent=False)

    def _crop(self, x):
        if self.crop is None:
            return x
        (h, w), (ch, cw) = x.shape[-2:], self.crop
        if self.training and self.params["random_crop"] and x.device.type != "meta":  # meta: shapes only
            top = int(torch.randint(0, h - ch + 1, size=(1,)).item())
            left = int(torch.randint(0, w - cw + 1, size=(1,)).item())
        else:
            top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return x[..., top:top + ch, left:left + cw]

    def forward(self, images):
        b = images.shape[0]
        s, n = self.steps, self.cameras
        x = images.reshape(b, n, s, *images.shape[2:])
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if len(self.encoders) == 1:  # per step, the cameras' features one after the other
            x = x.transpose(1, 2).reshape(b * s * n, *x.shape[3:])
            return {"features": self.encoders[0](self._crop(x)).reshape(b, s, -1)}
        per_camera = [enc(self._crop(x[:, c].reshape(b * s, *x.shape[3:]))).reshape(b, s, -1)
                      for c, enc in enumerate(self.encoders)]
        return {"features": torch.cat(per_camera, dim=-1)}
