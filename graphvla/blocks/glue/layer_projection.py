"""`glue.layer_projection`: one LayerNorm + Linear per layer of a [B, L, T, D] stack, each layer with
its own weights -> [B, L, T, width]. starVLA's QwenPI_v3 puts this between the VLM and its layer-wise
DiT (`project_layers`, one `nn.Sequential(LayerNorm(D), Linear(D, action_dit_hidden_dim))` per VLM
layer), so the DiT runs at a smaller width than the VLM; a block of its own so that it trains at its
own learning rate as in starVLA (its `base` rate, not the action model's)."""
from __future__ import annotations

import torch
from torch import nn

from ..base import Block, InPort, OutPort
from ..registry import register


@register
class LayerProjection(Block):
    type_name = "glue.layer_projection"
    description = "Per-layer LayerNorm + Linear over a [B, L, T, D] stack (each layer its own weights) -> [B, L, T, width]."
    in_ports = {"layers": InPort("layers", ndim=4, doc="[B, L, T, D]")}
    out_ports = {"layers": OutPort("layers", doc="[B, L, T, width]")}
    params_schema = {
        "type": "object",
        "properties": {
            "width": {"type": "integer", "minimum": 1, "description": "output width of every layer"},
        },
        "required": ["width"],
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("layers", 4)
        shape = inputs["layers"].shape
        n, d = int(shape[1]), int(shape[-1])
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, self.params["width"])) for _ in range(n))

    def forward(self, layers):
        return {"layers": torch.stack([proj(x) for proj, x in zip(self.layers, layers.unbind(dim=1))], dim=1)}
