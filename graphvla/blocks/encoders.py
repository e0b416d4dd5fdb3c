"""Small from-scratch encoders that train on CPU: a patch-CNN image encoder and a byte-level
text encoder. They stand in for large backbones in tests and tiny graphs."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..processors.block import bind
from ..processors.text import ByteTokens, byte_tokenize as bytes_of, trim_padding
from .base import Block, InPort, OutPort, ParamError, PortError, StepPorts
from .registry import register


@register
class ImageEncoder(Block):
    type_name = "encoder.image"
    description = "Patch-CNN image encoder: [B, V, C, H, W] -> tokens [B, V*N, D] and a pooled vector."
    in_ports = {"images": InPort("image", ndim=5, doc="images [B, V, C, H, W]")}
    out_ports = {"hidden": OutPort("hidden", doc="patch tokens [B, V*N, D]"), "pooled": OutPort("hidden", doc="[B, D]")}
    params_schema = {
        "type": "object",
        "properties": {
            "width": {"type": "integer", "minimum": 1, "default": 128},
            "patch": {"type": "integer", "minimum": 1, "default": 16},
            "layers": {"type": "integer", "minimum": 0, "default": 2, "description": "3x3 conv layers after the patch embedding"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("images", 5)
        _, views, channels, h, w = inputs["images"].shape
        p, d = self.params["patch"], self.params["width"]
        if h % p or w % p:
            raise PortError("images", f"image size {h}x{w} is not divisible by the patch size {p} (with.patch)")
        self.patch_embed = nn.Conv2d(channels, d, kernel_size=p, stride=p)
        self.convs = nn.ModuleList(nn.Conv2d(d, d, 3, padding=1) for _ in range(self.params["layers"]))
        self.norm = nn.LayerNorm(d)
        n = (h // p) * (w // p)
        self.pos = nn.Parameter(torch.randn(1, views * n, d) * 0.02)

    def forward(self, images):
        b, v, c, h, w = images.shape
        x = self.patch_embed(images.reshape(b * v, c, h, w) * 2 - 1)
        for conv in self.convs:
            x = x + F.gelu(conv(F.gelu(x)))
        x = x.flatten(2).transpose(1, 2).reshape(b, -1, x.shape[1])  # [B, V*N, D]
        x = self.norm(x + self.pos)
        return {"hidden": x, "pooled": x.mean(dim=1)}


def byte_tokenize(texts, max_len: int, device):
    """processors.text.byte_tokenize on `device`, for blocks that still tokenize in forward
    (backbone.world_model); ids already made (a [B, L] integer tensor, as an exported graph takes
    them) pass through."""
    if isinstance(texts, torch.Tensor):
        return texts.to(device)
    return bytes_of(texts, max_len).to(device)


@register
class TextEncoder(Block):
    type_name = "encoder.text"
    description = "Byte-level text encoder (no tokenizer files): strings -> tokens [B, L, D], mask, pooled."
    in_ports = {"text": InPort("text", doc="list of B strings")}
    out_ports = {
        "hidden": OutPort("hidden", doc="[B, L, D]"),
        "mask": OutPort("mask", doc="[B, L], True on real bytes"),
        "pooled": OutPort("hidden", doc="[B, D] masked mean"),
    }
    params_schema = {
        "type": "object",
        "properties": {
            "width": {"type": "integer", "minimum": 1, "default": 128},
            "layers": {"type": "integer", "minimum": 0, "default": 1},
            "heads": {"type": "integer", "minimum": 1, "default": 4},
            "max_length": {"type": "integer", "minimum": 1, "default": 96},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        d = self.params["width"]
        if d % self.params["heads"]:
            raise ParamError("heads", f"width {d} is not divisible by heads {self.params['heads']}")
        self.embed = nn.Embedding(257, d, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, self.params["max_length"], d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, self.params["heads"], 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(self.params["layers"]))
        self.norm = nn.LayerNorm(d)

    # the bytes are made by the processor step (processors/text.py ByteTokens), in the DataLoader
    # workers and in front of the policy; forward takes them as `ids`
    def step_ports(self, wired):
        return StepPorts(("text",), {"ids": OutPort("tokens", doc="[B, L] UTF-8 bytes + 1, 0 = padding")})

    def processor_step(self, node=None, sources=None):
        return bind(ByteTokens, self, node, sources, ("text",), ("ids",), self.params["max_length"])

    def meta_forward(self, text):
        return self.forward(bytes_of(text, self.params["max_length"]))

    def forward(self, ids):
        ids = trim_padding(ids).to(self.embed.weight.device)
        mask = ids != 0
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
        x = self.norm(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1)
        return {"hidden": x, "mask": mask, "pooled": pooled}


@register
class KeypointEncoder(Block):
    type_name = "encoder.keypoints"
    description = ("Small CNN with spatial-softmax keypoints (image -> K expected (x, y) positions per view), "
                   "optionally FiLM-conditioned on a vector (e.g. the instruction), with random-shift augmentation "
                   "while training.")
    in_ports = {
        "images": InPort("image", ndim=5, doc="images [B, V, C, H, W] in [0, 1]"),
        "condition": InPort(("hidden", "state"), optional=True, ndim=2, doc="[B, D] vector the features are FiLM-ed by"),
    }
    out_ports = {
        "hidden": OutPort("hidden", doc="feature-map tokens [B, V*N, C]"),
        "pooled": OutPort("hidden", doc="keypoints [B, V*K*2] (x, y in [-1, 1]) and, per view, a mean feature [B, V*C]"),
    }
    params_schema = {
        "type": "object",
        "properties": {
            "channels": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2,
                         "default": [16, 32, 32, 32],
                         "description": "3x3 conv widths; the first two halve the resolution"},
            "keypoints": {"type": "integer", "minimum": 1, "default": 32},
            "shift": {"type": "integer", "minimum": 0, "default": 4,
                      "description": "random-shift augmentation in pixels while training (0: off)"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("images", 5)
        _, self.views, channels, h, w = inputs["images"].shape
        widths = list(self.params["channels"])
        if h % 4 or w % 4:
            raise PortError("images", f"image size {h}x{w} must be divisible by 4 (two stride-2 convs)")
        convs, norms, c_in = [], [], channels
        for i, c in enumerate(widths):
            convs.append(nn.Conv2d(c_in, c, 3, stride=2 if i < 2 else 1, padding=1))
            norms.append(nn.GroupNorm(min(8, c), c))
            c_in = c
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        self.width = c_in
        self.film = identity_film(inputs["condition"].dim, c_in) if "condition" in inputs else None
        k = self.params["keypoints"]
        self.to_keypoints = nn.Conv2d(c_in, k, 1)
        # shape [1], not a 0-d scalar: ZeRO and FSDP cannot shard 0-d parameters
        self.log_temperature = nn.Parameter(torch.zeros(1))
        self._register_load_state_dict_pre_hook(_scalar_temperature_as_1d)
        fh, fw = h // 4, w // 4
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, fh), torch.linspace(-1, 1, fw), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()], dim=-1), persistent=False)  # [N, 2]

    def forward(self, images, condition=None):
        b, v, c, h, w = images.shape
        x = images.reshape(b * v, c, h, w)
        if self.training and self.params["shift"] > 0:
            x = random_shift(x, self.params["shift"])
        x = x * 2 - 1
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv(x))
            if i == last and self.film is not None and condition is not None:
                x = apply_film(self.film, x, condition, v)
            x = F.gelu(x)
        logits = self.to_keypoints(x).flatten(2) * torch.exp(-self.log_temperature)  # [B*V, K, N]
        keypoints = torch.softmax(logits, dim=-1) @ self.grid  # [B*V, K, 2]
        tokens = x.flatten(2).transpose(1, 2)  # [B*V, N, C]
        pooled = torch.cat([keypoints.flatten(1), tokens.mean(dim=1)], dim=-1).reshape(b, -1)
        return {"hidden": tokens.reshape(b, -1, self.width), "pooled": pooled}


def identity_film(condition_dim: int, channels: int) -> nn.Linear:
    """A FiLM layer (a scale and a bias per channel from a condition vector) that starts at identity."""
    film = nn.Linear(condition_dim, 2 * channels)
    nn.init.zeros_(film.weight)
    nn.init.zeros_(film.bias)
    return film


def apply_film(film: nn.Linear, x, condition, views: int):
    """x [B*V, C, H, W] scaled by (1 + gamma) and shifted by beta, both from condition [B, D]."""
    gamma, beta = film(condition).repeat_interleave(views, dim=0).chunk(2, dim=-1)
    return x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]


def random_shift(x, s: int):
    """Pad [N, C, H, W] by s edge pixels and crop back at a random offset per image (DrQ's augmentation)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    dy = torch.randint(0, 2 * s + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * s + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # [n, h]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])  # [n, w]
    idx = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _scalar_temperature_as_1d(state_dict, prefix, *args):
    """Checkpoints written before log_temperature became [1] hold it as a 0-d tensor."""
    key = prefix + "log_temperature"
    if key in state_dict and state_dict[key].dim() == 0:
        state_dict[key] = state_dict[key].reshape(1)
