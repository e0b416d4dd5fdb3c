"""`glue.select_layers`: pick backbone layers out of a [B, L, T, D] stack (and optionally pool
them), so a head reads exactly the layers a paper's recipe names without the backbone knowing."""
from __future__ import annotations

import torch

from ..base import Block, InPort, OutPort, ParamError
from ..registry import register


@register
class SelectLayers(Block):
    type_name = "glue.select_layers"
    description = "Select layers of a [B, L, T, D] stack: `layers` keeps them, `hidden` is their mean (or the one layer)."
    in_ports = {"layers": InPort("layers", ndim=4, doc="[B, L, T, D]")}
    out_ports = {"layers": OutPort("layers", doc="[B, len(with.layers), T, D]"),
                 "hidden": OutPort("hidden", doc="[B, T, D]: the mean of the selected layers")}
    params_schema = {
        "type": "object",
        "properties": {
            "layers": {"type": "array", "items": {"type": "integer"}, "minItems": 1,
                       "description": "indices into the stack (negative counts from the end)"},
            "every": {"type": "integer", "minimum": 1, "description": "instead of a list: every k-th layer, ending at the last"},
            "last": {"type": "integer", "minimum": 1, "description": "instead of a list: the last n layers"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("layers", 4)
        n = int(inputs["layers"].shape[1])
        chosen = [k for k in ("layers", "every", "last") if k in self.params]
        if len(chosen) != 1:
            raise ParamError("layers", "give exactly one of with.layers, with.every or with.last")
        if "layers" in self.params:
            ids = self.params["layers"]
        elif "every" in self.params:
            ids = list(range(n - 1, -1, -self.params["every"]))[::-1]
        else:
            ids = list(range(max(0, n - self.params["last"]), n))
        for i in ids:
            if not -n <= i < n:
                raise ParamError(chosen[0], f"layer {i} is out of range: {self._src()} has {n} layers")
        self.ids = [i % n for i in ids]
        self.register_buffer("index", torch.tensor(self.ids, dtype=torch.long), persistent=False)

    def _src(self):
        return self.port_info["layers"].source or "the input"

    def forward(self, layers):
        picked = layers.index_select(1, self.index.to(layers.device))
        return {"layers": picked, "hidden": picked.mean(dim=1)}
