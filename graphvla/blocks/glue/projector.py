"""`glue.projector`: an adapter that maps features of one width to another (linear or a small
MLP), for tokens [B, T, D], layer stacks [B, L, T, D] or vectors [B, D]. Used between a backbone
and a head whose width differs, or to give a frozen backbone a trainable interface."""
from __future__ import annotations

from torch import nn

from ..base import Block, InPort, OutPort
from ..registry import register


@register
class Projector(Block):
    type_name = "glue.projector"
    description = "Linear or MLP adapter to a new width, for tokens, layer stacks or vectors; outputs both hidden and layers views."
    in_ports = {"x": InPort(("hidden", "layers", "latent", "state"), ndim=(2, 3, 4), doc="features, last axis projected")}
    out_ports = {"hidden": OutPort("hidden", doc="projected [.., width]; for a layers input, its last layer [B, T, width]"),
                 "layers": OutPort("layers", doc="projected [B, L, T, width]; for a [B, T, D] input, one layer [B, 1, T, width]")}
    params_schema = {
        "type": "object",
        "properties": {
            "width": {"type": "integer", "minimum": 1, "default": 256},
            "depth": {"type": "integer", "minimum": 1, "default": 2, "description": "1: linear; n: MLP with n linear layers"},
            "norm": {"type": "boolean", "default": True, "description": "LayerNorm on the output"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        p = self.params
        self.is_layers = inputs["x"].kind == "layers"
        d_in, w = inputs["x"].dim, p["width"]
        mods = []
        for i in range(p["depth"]):
            mods.append(nn.Linear(d_in if i == 0 else w, w))
            if i < p["depth"] - 1:
                mods.append(nn.GELU())
        if p["norm"]:
            mods.append(nn.LayerNorm(w))
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        y = self.net(x)
        if self.is_layers:
            return {"layers": y, "hidden": y[:, -1]}
        return {"hidden": y, "layers": y.unsqueeze(1)} if y.dim() == 3 else {"hidden": y}
