"""head.mlp_resnet: one feature vector per action step -> that step's action, through an MLP-ResNet
shared by all steps, L1 loss. This is OpenVLA-OFT's L1 regression action head as starVLA's QwenOFT
uses it (starvla/qwen3vl-oft, fixture-tested in tests/test_starvla_parity.py): the backbone's hidden
states at H action placeholder tokens come in as `tokens` [B, H, D]; each goes through

    LayerNorm(D) -> Linear(D, W) -> ReLU -> blocks x [x + ReLU(Linear(W, W)(LayerNorm(W)(x)))]
    -> LayerNorm(W) -> Linear(W, A)

with W = `hidden` (default 2 D, starVLA's choice). The loss is the mean absolute error over every
step and action dimension (torch's L1Loss); with `mask` wired, over the valid steps only."""
from __future__ import annotations

from torch import nn

from ..base import Block, InPort, PortError
from ..registry import register
from .common import ACTION_PARAMS, HEAD_OUT_PORTS, TARGET_PORTS, action_shape, masked_l1


class ResidualBlock(nn.Module):
    """x + ReLU(Linear(LayerNorm(x))): pre-norm, the activation inside the residual branch."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return x + self.linear(self.norm(x)).relu()


@register
class MLPResNetHead(Block):
    type_name = "head.mlp_resnet"
    description = "Per-step MLP-ResNet over one token per action step (a VLM's placeholder tokens), L1 loss."
    in_ports = {
        "tokens": InPort("hidden", ndim=3, doc="[B, H, D]: one feature vector per action step"),
        **TARGET_PORTS,
    }
    out_ports = HEAD_OUT_PORTS
    params_schema = {
        "type": "object",
        "properties": {
            "hidden": {"type": "integer", "minimum": 1, "description": "width of the residual blocks (default 2 x the token width)"},
            "blocks": {"type": "integer", "minimum": 0, "default": 2, "description": "residual blocks"},
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("tokens", 3)
        self.horizon, self.action_dim = action_shape(self)
        shape = inputs["tokens"].shape
        if shape is not None and isinstance(shape[1], int) and shape[1] != self.horizon:
            raise PortError("tokens", f"{inputs['tokens'].source} has {shape[1]} tokens but the action chunk has "
                                      f"{self.horizon} steps: the head reads one token per step")
        dim = inputs["tokens"].dim
        width = self.params.get("hidden") or 2 * dim
        self.norm_in = nn.LayerNorm(dim)
        self.linear_in = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(self.params["blocks"]))
        self.norm_out = nn.LayerNorm(width)
        self.linear_out = nn.Linear(width, self.action_dim)

    def forward(self, tokens, target=None, mask=None):
        x = self.linear_in(self.norm_in(tokens)).relu()
        for block in self.blocks:
            x = block(x)
        actions = self.linear_out(self.norm_out(x))
        out = {"actions": actions}
        if target is not None:
            out["loss"] = masked_l1(actions, target, mask)
        return out
