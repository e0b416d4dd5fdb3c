"""`encoder.resnet`: a ResNet-18 or ResNet-34 image encoder written in torch (no torchvision), whose
layer4 feature map comes out, with the normalization layer LeRobot's policies put in it.

The architecture is He et al. 2016's basic-block ResNet as torchvision builds it: a 7x7 stride-2
stem conv, a 3x3 stride-2 max pool, four stages of basic blocks (64, 128, 256, 512 channels; stride
2 and a 1x1 projection shortcut at the start of stages 2-4). `width` 16 or 32 narrows every stage
by the same factor (a GraphVLA-sized network, not the published one; no torchvision weights fit it). Module names follow torchvision's
(`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`, ...), so a torchvision or LeRobot state
dict loads under the block's prefix without renaming.

`norm` picks the normalization after each conv:
  frozen_batch_norm  batch norm with fixed statistics and affine parameters, all buffers, eps 1e-5:
                     y = (x - running_mean) * weight / sqrt(running_var + eps) + bias (ACT's backbone,
                     torchvision's FrozenBatchNorm2d);
  batch_norm         nn.BatchNorm2d (trainable, running statistics updated while training);
  group_norm         nn.GroupNorm(channels // 16, channels) (Diffusion Policy's backbone, which
                     replaces every batch norm with it).

Input: images [B, V, 3, H, W] in [0, 1], normalized per view by `normalize` ('imagenet', 'none',
or explicit per-channel `{mean, std}`, one triple for every view or one per view; an import of a
LeRobot policy writes its image statistics here). The feature map of every view comes out as
`features` [B, V, C, h, w] (h = ceil(H / 32)), as tokens `hidden` [B, V*h*w, C] and mean-pooled
`pooled` [B, V*C]. `weights`: 'none' (initialized, for training from scratch or for a checkpoint
to fill) or a .safetensors file (or a folder / Hub id holding one) under torchvision's names.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, InPort, OutPort, ParamError, PortError, parameters_are_placeholders
from ..registry import register

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)
NORMS = ("frozen_batch_norm", "batch_norm", "group_norm")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
GROUP_SIZE = 16  # group_norm: channels per group
WIDTH_PARAM = {"enum": [16, 32, 64], "default": 64,
               "description": "stem and first-stage channels; the stages have width x 1, 2, 4, 8 (64: the "
                              "published ResNet, 512 channels out; 16 or 32: a narrower network, for small CPUs)"}


class FrozenBatchNorm2d(nn.Module):
    """Batch norm whose statistics and affine parameters are fixed buffers (loaded, never trained)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # a trained BatchNorm2d's counter: not used
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "frozen_batch_norm":
        return FrozenBatchNorm2d(channels)
    if kind == "batch_norm":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(channels // GROUP_SIZE, channels)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; a strided 1x1 conv + norm on the shortcut when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm_layer(norm, c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """The convolutional trunk up to layer4 (no pooling, no classifier): [N, 3, H, W] -> [N, 8 x width, h, w]."""

    def __init__(self, depth: int = 18, norm: str = "frozen_batch_norm", width: int = 64):
        super().__init__()
        widths = tuple(w * width // WIDTHS[0] for w in WIDTHS)  # 64: torchvision's 64/128/256/512
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = norm_layer(norm, widths[0])
        c_in = widths[0]
        for i, (repeats, width) in enumerate(zip(DEPTHS[depth], widths)):
            blocks = [BasicBlock(c_in if j == 0 else width, width, 2 if (j == 0 and i > 0) else 1, norm)
                      for j in range(repeats)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c_in = width
        self.channels = c_in

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _triples(value, views: int, key: str) -> list[list[float]]:
    """One [3] list per view from a [3] list or a [V][3] list."""
    if value and not isinstance(value[0], (list, tuple)):
        value = [value] * views
    if len(value) != views or any(len(v) != 3 for v in value):
        raise ParamError(key, f"needs 3 floats (one per RGB channel) or {views} such triples (one per view), "
                              f"got {value}")
    return [[float(x) for x in v] for v in value]


TRIPLES = {"oneOf": [{"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
                     {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 3,
                                                 "maxItems": 3}, "minItems": 1}]}


@register
class ResNetEncoder(Block):
    type_name = "encoder.resnet"
    description = ("ResNet-18/34 in torch (no torchvision): layer4 feature map per view, with frozen batch norm "
                   "(ACT), batch norm or group norm (Diffusion Policy).")
    in_ports = {"images": InPort("image", ndim=5, doc="images [B, V, 3, H, W] in [0, 1], RGB")}
    out_ports = {
        "features": OutPort("hidden", doc="layer4 feature map per view [B, V, C, h, w] (C = 8 x width: 512)"),
        "hidden": OutPort("hidden", doc="the feature maps as tokens [B, V*h*w, C], view by view, row-major"),
        "pooled": OutPort("hidden", doc="per view, the mean feature [B, V*C]"),
    }
    params_schema = {
        "type": "object",
        "properties": {
            "depth": {"enum": sorted(DEPTHS), "default": 18},
            "width": WIDTH_PARAM,
            "norm": {"enum": list(NORMS), "default": "frozen_batch_norm",
                     "description": "after each conv: frozen_batch_norm (ACT), batch_norm, or group_norm with "
                                    "channels // 16 groups (Diffusion Policy)"},
            "normalize": {"oneOf": [{"enum": ["imagenet", "none"]},
                                    {"type": "object", "properties": {"mean": TRIPLES, "std": TRIPLES},
                                     "required": ["mean", "std"], "additionalProperties": False}],
                          "default": "imagenet",
                          "description": "input normalization (x - mean) / std per channel: ImageNet's, none, or "
                                         "{mean, std}: one triple for all views or one per view"},
            "weights": {"type": "string", "default": "none",
                        "description": "'none' (initialized here; a checkpoint fills it), or a .safetensors file "
                                       "under torchvision's names, or a folder / Hub id holding one"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("images", 5)
        shape = inputs["images"].shape
        if shape is not None and shape[2] != 3:
            raise PortError("images", f"ResNet takes RGB images (3 channels), got {shape[2]}")
        views = shape[1] if shape is not None else 1
        p = self.params
        self.net = ResNet(p["depth"], p["norm"], p["width"])
        norm = p["normalize"]
        if norm == "none":
            mean, std = [[0.0] * 3] * views, [[1.0] * 3] * views
        elif norm == "imagenet":
            mean, std = [list(IMAGENET[0])] * views, [list(IMAGENET[1])] * views
        else:
            mean, std = _triples(norm["mean"], views, "normalize.mean"), _triples(norm["std"], views, "normalize.std")
            if any(s <= 0 for v in std for s in v):
                raise ParamError("normalize.std", f"every std must be > 0, got {norm['std']}")
        self.register_buffer("mean", torch.tensor(mean).view(1, views, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, views, 3, 1, 1), persistent=False)
        if p["weights"] != "none" and not ctx.meta and not parameters_are_placeholders():
            self._load(Path(ctx.resolve_path(p["weights"], "weights")))

    def _load(self, path: Path):
        from safetensors.torch import load_file

        if path.is_dir():
            found = sorted(path.glob("*.safetensors"))
            if len(found) != 1:
                raise ParamError("weights", f"{path} must hold exactly one .safetensors file, found "
                                            f"{[f.name for f in found] or 'none'}")
            path = found[0]
        if not path.is_file():
            raise ParamError("weights", f"weights file {path} not found ('none' or a .safetensors file)")
        state = {k: v for k, v in load_file(str(path)).items()
                 if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
        ours = self.net.state_dict()
        missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
        wrong = [f"{k} {list(v.shape)} != {list(ours[k].shape)}" for k, v in state.items()
                 if k in ours and v.shape != ours[k].shape]
        if missing or unexpected or wrong:
            raise ParamError("weights", f"{path} is not a resnet{self.params['depth']} state dict (torchvision names): "
                                        f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")
        self.net.load_state_dict(state, strict=False)

    def forward(self, images):
        b, v, c, h, w = images.shape
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        x = self.net(x.reshape(b * v, c, h, w))  # [B*V, C, h', w']
        fh, fw = x.shape[-2:]
        features = x.reshape(b, v, self.net.channels, fh, fw)
        tokens = features.flatten(3).transpose(2, 3).reshape(b, v * fh * fw, self.net.channels)
        return {"features": features, "hidden": tokens, "pooled": features.mean(dim=(3, 4)).reshape(b, -1)}
