"""A small MLP action head: pooled context (+ state) -> action chunk, L1 loss. The simplest
head; the block library adds FAST, learned-query transformer, flow-matching and dual-system heads.

With `context_mask` wired, `pool: mean` averages the real tokens only, so a sample's actions do
not depend on what else is in the batch (how far it was padded)."""
from __future__ import annotations

import torch
from torch import nn

from ..base import Block, InPort, OutPort
from ..registry import register
from .common import ACTION_PARAMS, action_shape, masked_l1, masked_mean, state_width


@register
class MLPHead(Block):
    type_name = "head.mlp"
    description = "MLP over the pooled context (+ state) regressing the whole action chunk, L1 loss."
    in_ports = {
        "context": InPort(("hidden", "latent"), ndim=(2, 3), doc="[B, T, D] or [B, D]"),
        "context_mask": InPort("mask", optional=True, ndim=2,
                               doc="[B, T] True on real tokens: pool: mean averages those only"),
        "state": InPort("state", optional=True),
        "target": InPort("action", optional=True, target=True, doc="action chunk [B, H, A]"),
        "mask": InPort("mask", optional=True, target=True, doc="[B, H] valid steps"),
    }
    out_ports = {"actions": OutPort("action"), "loss": OutPort("loss", train_only=True)}
    params_schema = {
        "type": "object",
        "properties": {
            "hidden": {"type": "integer", "minimum": 1, "default": 256},
            "layers": {"type": "integer", "minimum": 1, "default": 2},
            "pool": {"enum": ["mean", "flatten"], "default": "mean",
                     "description": "how [B, T, D] context becomes one vector: the mean over T, or the T tokens "
                                    "side by side (keeps which token said what; T is fixed by the graph)"},
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("context", (2, 3))
        self.horizon, self.action_dim = action_shape(self)
        self.state_width = state_width(self)
        shape = inputs["context"].shape
        tokens = shape[1] if len(shape) == 3 and self.params["pool"] == "flatten" else 1
        width = tokens * inputs["context"].dim + self.state_width
        layers, h = [], self.params["hidden"]
        for i in range(self.params["layers"]):
            layers += [nn.Linear(width if i == 0 else h, h), nn.GELU()]
        layers.append(nn.Linear(h, self.horizon * self.action_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, context, context_mask=None, state=None, target=None, mask=None):
        if context.dim() == 3:
            # flatten: T is fixed by the graph, so there is no padding to leave out
            x = context.flatten(1) if self.params["pool"] == "flatten" else masked_mean(context, context_mask)
        else:
            x = context
        if self.state_width:
            # an optional state that is absent in this batch counts as zeros (the layer was sized for it)
            state = state.flatten(1) if state is not None else x.new_zeros(x.shape[0], self.state_width)
            x = torch.cat([x, state], dim=-1)
        actions = self.net(x).view(-1, self.horizon, self.action_dim)
        out = {"actions": actions}
        if target is not None:
            out["loss"] = masked_l1(actions, target, mask)
        return out
