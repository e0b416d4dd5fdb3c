"""`glue.fuse`: project several token streams (image tokens, text tokens, state) to one width and
concatenate them into one."""
from __future__ import annotations

import torch
from torch import nn

from ..base import Block, InPort, OutPort
from ..registry import register

FUSE_PORTS = ("a", "b", "c", "d")


@register
class Fuse(Block):
    type_name = "glue.fuse"
    description = "Project up to four inputs ([B, T, D] tokens or [B, D] vectors) to one width and concatenate along tokens."
    in_ports = {p: InPort(("hidden", "state", "latent"), optional=(p != "a"), ndim=(2, 3)) for p in FUSE_PORTS}
    out_ports = {"hidden": OutPort("hidden", doc="[B, T, width]")}
    params_schema = {
        "type": "object",
        "properties": {"width": {"type": "integer", "minimum": 1, "default": 128}},
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        for p in inputs:
            self.expect_ndim(p, (2, 3))
        w = self.params["width"]
        self.proj = nn.ModuleDict({p: nn.Linear(info.dim, w) for p, info in inputs.items()})
        self.kind_embed = nn.Parameter(torch.randn(len(FUSE_PORTS), w) * 0.02)
        self.norm = nn.LayerNorm(w)

    def forward(self, a, b=None, c=None, d=None):
        parts = []
        for i, (name, x) in enumerate(zip(FUSE_PORTS, (a, b, c, d))):
            if x is None or name not in self.proj:
                continue
            if x.dim() == 2:
                x = x.unsqueeze(1)
            parts.append(self.proj[name](x) + self.kind_embed[i])
        return {"hidden": self.norm(torch.cat(parts, dim=1))}
