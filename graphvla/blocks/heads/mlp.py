"""A small MLP action head: pooled context (+ state) -> action chunk, L1 loss. The simplest
head; the block library adds FAST, OFT, flow matching and dual-system heads."""
from __future__ import annotations

import torch
from torch import nn

from ..base import Block, InPort, OutPort, ParamError, PortError
from ..registry import register


def action_shape(block: Block, target_port="target"):
    """(horizon, action_dim) from the target port, with `with:` values as fallback/check."""
    info = block.port_info.get(target_port)
    h, a = block.params.get("horizon"), block.params.get("action_dim")
    if info is not None:
        if info.shape is None or len(info.shape) != 3:
            raise PortError(target_port, f"expects an action chunk [B, horizon, dim], got {info.shape}")
        th, ta = int(info.shape[1]), int(info.shape[2])
        if h is not None and h != th:
            raise ParamError("horizon", f"with.horizon={h} but {info.source} has horizon {th}")
        if a is not None and a != ta:
            raise ParamError("action_dim", f"with.action_dim={a} but {info.source} has dim {ta}")
        return th, ta
    if h is None or a is None:
        raise PortError(target_port, "not wired, so with.horizon and with.action_dim are required")
    return h, a


def masked_l1(pred, target, mask=None):
    err = (pred - target).abs()
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    while m.dim() < err.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(err)
    return (err * m).sum() / m.sum().clamp(min=1)


ACTION_PARAMS = {
    "horizon": {"type": "integer", "minimum": 1, "description": "inferred from the target port when wired"},
    "action_dim": {"type": "integer", "minimum": 1, "description": "inferred from the target port when wired"},
}


@register
class MLPHead(Block):
    type_name = "head.mlp"
    description = "MLP over the pooled context (+ state) regressing the whole action chunk, L1 loss."
    in_ports = {
        "context": InPort(("hidden", "latent"), ndim=(2, 3), doc="[B, T, D] or [B, D]"),
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
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("context", (2, 3))
        self.horizon, self.action_dim = action_shape(self)
        self.state_width = _flat_dim(inputs["state"]) if "state" in inputs else 0
        width = inputs["context"].dim + self.state_width
        layers, h = [], self.params["hidden"]
        for i in range(self.params["layers"]):
            layers += [nn.Linear(width if i == 0 else h, h), nn.GELU()]
        layers.append(nn.Linear(h, self.horizon * self.action_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, context, state=None, target=None, mask=None):
        x = context.mean(dim=1) if context.dim() == 3 else context
        if self.state_width:
            # an optional state that is absent in this batch counts as zeros (the layer was sized for it)
            state = state.flatten(1) if state is not None else x.new_zeros(x.shape[0], self.state_width)
            x = torch.cat([x, state], dim=-1)
        actions = self.net(x).view(-1, self.horizon, self.action_dim)
        out = {"actions": actions}
        if target is not None:
            out["loss"] = masked_l1(actions, target, mask)
        return out


def _flat_dim(info):
    n = 1
    for d in info.shape[1:]:
        n *= int(d)
    return n
