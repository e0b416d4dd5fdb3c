"""`backbone.world_model`: a small world model that trains from scratch on CPU.

The frame history (the `images` views taken as time steps, oldest first, optionally preceded by
a separate `history` port) is cut into patches and encoded into latents. A causal transformer
runs over [instruction tokens; frame 1 latents; ...; frame K latents; future queries]: each
frame sees the instruction and the frames before it (block-causal), and the future queries see
everything. The heads read `hidden` / `layers` / `mask`; the future queries predict the next
observation (its low-resolution pixels per patch, `future`, predicted as a change from the last
frame), with `future_loss` when the
`future_images` target is wired: the auxiliary objective that makes a world-model VLA.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, InPort, OutPort, ParamError, PortError, StepPorts
from ...processors.block import bind
from ...processors.text import ByteTokens, byte_tokenize, trim_padding
from ..registry import register


@register
class WorldModel(Block):
    type_name = "backbone.world_model"
    description = "Frame history -> patch latents -> causal transformer with the instruction; predicts the next frame."
    in_ports = {
        "images": InPort("image", ndim=5, doc="frames [B, K, C, H, W] in [0, 1], oldest first (views as time)"),
        "text": InPort("text", doc="instruction"),
        "history": InPort("image", optional=True, ndim=5, doc="earlier frames [B, K', C, H, W], put before `images`"),
        "future_images": InPort("image", optional=True, target=True, ndim=5,
                                doc="the next observation [B, 1, C, H, W] (the target of `future`)"),
    }
    out_ports = {
        "hidden": OutPort("hidden", doc="last layer [B, T, D]"),
        "layers": OutPort("layers", doc="every layer [B, L, T, D]"),
        "mask": OutPort("mask", doc="[B, T]"),
        "latents": OutPort("latent", doc="patch latents of the frames [B, K*N, D]"),
        "future": OutPort("latent", doc="predicted next frame, low-res pixels per patch [B, N, C*r*r]"),
        "future_loss": OutPort("loss", train_only=True, doc="MSE of `future` against future_images"),
    }
    params_schema = {
        "type": "object",
        "properties": {
            "width": {"type": "integer", "minimum": 8, "default": 128},
            "layers": {"type": "integer", "minimum": 1, "default": 4},
            "heads": {"type": "integer", "minimum": 1, "default": 4},
            "patch": {"type": "integer", "minimum": 2, "default": 16, "description": "patch size in pixels"},
            "future_res": {"type": "integer", "minimum": 1, "default": 4,
                           "description": "each patch of the next frame is predicted at future_res x future_res pixels"},
            "max_text": {"type": "integer", "minimum": 1, "default": 64, "description": "instruction bytes kept"},
            "max_frames": {"type": "integer", "minimum": 1, "default": 8},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        p = self.params
        d, patch = p["width"], p["patch"]
        if d % p["heads"]:
            raise ParamError("heads", f"width {d} is not divisible by heads {p['heads']}")
        _, frames, channels, h, w = inputs["images"].shape
        if h % patch or w % patch:
            raise PortError("images", f"image size {h}x{w} is not divisible by with.patch={patch}")
        if patch % p["future_res"]:
            raise ParamError("future_res", f"with.patch={patch} is not divisible by future_res={p['future_res']}")
        if "history" in inputs:
            hh = inputs["history"].shape
            if tuple(hh[2:]) != (channels, h, w):
                raise PortError("history", f"history frames {list(hh[2:])} differ from images {[channels, h, w]}")
            frames += hh[1]
        if frames > p["max_frames"]:
            raise ParamError("max_frames", f"{frames} frames in, but with.max_frames={p['max_frames']}")
        if "future_images" in inputs and tuple(inputs["future_images"].shape[2:]) != (channels, h, w):
            raise PortError("future_images", f"future frames {list(inputs['future_images'].shape[2:])} differ from images")
        self.grid = (h // patch, w // patch)
        self.tokens_per_frame = self.grid[0] * self.grid[1]
        self.channels = channels
        self.patch_embed = nn.Conv2d(channels, d, kernel_size=patch, stride=patch)
        self.patch_pos = nn.Parameter(torch.randn(1, 1, self.tokens_per_frame, d) * 0.02)
        self.frame_pos = nn.Parameter(torch.randn(1, p["max_frames"], 1, d) * 0.02)
        self.start = nn.Parameter(torch.randn(1, 1, d) * 0.02)  # always-valid first token: no row attends to nothing
        self.text_embed = nn.Embedding(257, d, padding_idx=0)
        self.text_pos = nn.Parameter(torch.randn(1, p["max_text"], d) * 0.02)
        self.future_queries = nn.Parameter(torch.randn(1, self.tokens_per_frame, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, p["heads"], 4 * d, dropout=0.0, batch_first=True, norm_first=True,
                                           activation="gelu")
        self.blocks = nn.ModuleList(copy.deepcopy(layer) for _ in range(p["layers"]))
        self.norm = nn.LayerNorm(d)
        r = p["future_res"]
        self.future_head = nn.Linear(d, channels * r * r)

    def frames(self, images, history=None):
        return images if history is None else torch.cat([history, images], dim=1)

    def encode_frames(self, frames):
        """[B, K, C, H, W] -> patch latents [B, K, N, D] (with frame and patch positions)."""
        b, k, c, h, w = frames.shape
        x = self.patch_embed(frames.reshape(b * k, c, h, w) * 2 - 1)  # [B*K, D, gh, gw]
        x = x.flatten(2).transpose(1, 2).reshape(b, k, self.tokens_per_frame, -1)
        return x + self.patch_pos + self.frame_pos[:, :k]

    # the instruction's bytes are made by the processor step (processors/text.py ByteTokens) in
    # the preprocess pipeline; forward takes them as `ids`
    def step_ports(self, wired):
        return StepPorts(("text",), {"ids": OutPort("tokens", doc="[B, L] instruction bytes + 1, 0 = padding")})

    def processor_step(self, node=None, sources=None):
        return bind(ByteTokens, self, node, sources, ("text",), ("ids",), self.params["max_text"])

    def meta_forward(self, images, text, history=None, future_images=None):
        return self.forward(images, byte_tokenize(text, self.params["max_text"]), history, future_images)

    def forward(self, images, ids, history=None, future_images=None):
        frames = self.frames(images, history)
        b, k = frames.shape[:2]
        latents = self.encode_frames(frames)
        ids = trim_padding(ids).to(self.text_embed.weight.device)
        text_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=ids.device), ids != 0], dim=1)
        t = torch.cat([self.start.expand(b, -1, -1), self.text_embed(ids) + self.text_pos[:, : ids.shape[1]]], dim=1)
        n_text = t.shape[1]
        # future queries share the patch positions, so query i reads patch i's history
        queries = (self.future_queries + self.patch_pos[:, 0]).expand(b, -1, -1)
        x = torch.cat([t, latents.flatten(1, 2), queries], dim=1)
        attn = self.attention_mask(n_text, k, x.device)
        pad = torch.cat([~text_mask, torch.zeros(b, x.shape[1] - n_text, dtype=torch.bool, device=x.device)], dim=1)
        # a float mask (additive) for both, so padded instruction bytes and the causal structure combine
        mask = attn.unsqueeze(0) + pad.unsqueeze(1).float().masked_fill(pad.unsqueeze(1), float("-inf"))
        mask = mask.repeat_interleave(self.params["heads"], dim=0)
        states = []
        for block in self.blocks:
            x = block(x, src_mask=mask)
            states.append(x)
        states[-1] = self.norm(states[-1])
        n_ctx = x.shape[1] - self.tokens_per_frame
        hidden = states[-1][:, :n_ctx]
        # predict the change from the last frame: "nothing moves" is the starting point
        future = self.future_target(frames[:, -1:]).detach() + self.future_head(states[-1][:, n_ctx:])
        valid = torch.cat([text_mask, torch.ones(b, n_ctx - n_text, dtype=torch.bool, device=x.device)], dim=1)
        out = {
            "hidden": hidden,
            "layers": torch.stack([s[:, :n_ctx] for s in states[:-1]] + [hidden], dim=1),
            "mask": valid,
            "latents": latents.flatten(1, 2),
            "future": future,
        }
        if future_images is not None:
            out["future_loss"] = F.mse_loss(future, self.future_target(future_images))
        return out

    def attention_mask(self, n_text, frames, device):
        """Additive mask: instruction tokens see the instruction; frame i sees the instruction and
        frames <= i; future queries see everything (block-causal over time)."""
        n = self.tokens_per_frame
        group = torch.cat([torch.zeros(n_text, dtype=torch.long),
                           torch.arange(1, frames + 1).repeat_interleave(n),
                           torch.full((n,), frames + 1)]).to(device)
        allowed = group.unsqueeze(1) >= group.unsqueeze(0)
        return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))

    def future_target(self, future_images):
        """Next frame [B, 1, C, H, W] -> per-patch low-res pixels [B, N, C*r*r] in [-1, 1]."""
        frame = future_images[:, -1] * 2 - 1
        r, patch = self.params["future_res"], self.params["patch"]
        small = F.avg_pool2d(frame, kernel_size=patch // r)  # [B, C, gh*r, gw*r]
        b, c = small.shape[:2]
        gh, gw = self.grid
        small = small.reshape(b, c, gh, r, gw, r).permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, r, r]
        return small.reshape(b, gh * gw, c * r * r)

    def predict(self, images, ids, history=None):
        return self.forward(images, ids, history)
