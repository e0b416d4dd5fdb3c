"""`glue.fuse`: project several token streams (image tokens, text tokens, state) to one width and
concatenate them into one. Padding travels along: `a_mask` ... `d_mask` (True on real tokens) mark
the padded tokens of an input, and `mask` marks those of the concatenation (a vector input, or
tokens without a mask, count as real), so a head reading `fuse.mask` ignores them."""
from __future__ import annotations

import torch
from torch import nn

from ..base import Block, InPort, OutPort, PortError
from ..registry import register

FUSE_PORTS = ("a", "b", "c", "d")


@register
class Fuse(Block):
    type_name = "glue.fuse"
    description = "Project up to four inputs ([B, T, D] tokens or [B, D] vectors) to one width and concatenate along tokens."
    in_ports = {
        **{p: InPort(("hidden", "state", "latent"), optional=(p != "a"), ndim=(2, 3)) for p in FUSE_PORTS},
        **{f"{p}_mask": InPort("mask", optional=True, ndim=2, doc=f"[B, T] True on the real tokens of {p}")
           for p in FUSE_PORTS},
    }
    out_ports = {"hidden": OutPort("hidden", doc="[B, T, width]"),
                 "mask": OutPort("mask", doc="[B, T] True on real tokens (all True when no input has a mask)")}
    params_schema = {
        "type": "object",
        "properties": {"width": {"type": "integer", "minimum": 1, "default": 128}},
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        for p in inputs:
            self.expect_ndim(p, 2 if p.endswith("_mask") else (2, 3))
        for p in FUSE_PORTS:
            if f"{p}_mask" in inputs and p not in inputs:
                raise PortError(f"{p}_mask", f"is wired but its tokens '{p}' are not")
        w = self.params["width"]
        self.proj = nn.ModuleDict({p: nn.Linear(info.dim, w) for p, info in inputs.items() if p in FUSE_PORTS})
        self.kind_embed = nn.Parameter(torch.randn(len(FUSE_PORTS), w) * 0.02)
        self.norm = nn.LayerNorm(w)

    def forward(self, a, b=None, c=None, d=None, a_mask=None, b_mask=None, c_mask=None, d_mask=None):
        parts, masks = [], []
        for i, (name, x, m) in enumerate(zip(FUSE_PORTS, (a, b, c, d), (a_mask, b_mask, c_mask, d_mask))):
            if x is None or name not in self.proj:
                continue
            if x.dim() == 2:
                x = x.unsqueeze(1)
            if m is None:
                m = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
            elif tuple(m.shape) != tuple(x.shape[:2]):
                raise PortError(f"{name}_mask", f"has shape {list(m.shape)} but its tokens are {list(x.shape[:2])}")
            parts.append(self.proj[name](x) + self.kind_embed[i])
            masks.append(m.bool())
        return {"hidden": self.norm(torch.cat(parts, dim=1)), "mask": torch.cat(masks, dim=1)}
