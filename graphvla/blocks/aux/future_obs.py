"""`aux.future_obs`: future-observation prediction as an auxiliary objective for any backbone.

Learned queries (one per target token) cross-attend to the backbone's hidden states and regress
the latents of a future observation (e.g. `encoder.image` features of the next frame, or a
world model's latents). The target is detached by default, so the auxiliary loss shapes the
backbone's features without pulling the target encoder toward a trivial solution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, InPort, OutPort, PortError
from ..registry import register

LOSSES = {
    "mse": lambda p, t: F.mse_loss(p, t),
    "l1": lambda p, t: F.l1_loss(p, t),
    "cosine": lambda p, t: (1 - F.cosine_similarity(p, t, dim=-1)).mean(),
}


@register
class FutureObs(Block):
    type_name = "aux.future_obs"
    description = "Predict future-observation latents from backbone hidden states (queries + cross-attention); MSE/L1/cosine."
    in_ports = {
        "context": InPort(("hidden", "latent"), ndim=3, doc="backbone tokens [B, T, D]"),
        "context_mask": InPort("mask", optional=True, ndim=2, doc="[B, T] True on real tokens"),
        "target": InPort(("latent", "hidden"), target=True, ndim=3, doc="future latents [B, N, Dz]"),
    }
    out_ports = {"pred": OutPort("latent", doc="predicted future latents [B, N, Dz]"),
                 "loss": OutPort("loss", train_only=True)}
    params_schema = {
        "type": "object",
        "properties": {
            "width": {"type": "integer", "minimum": 8, "default": 128},
            "heads": {"type": "integer", "minimum": 1, "default": 4},
            "loss": {"enum": list(LOSSES), "default": "mse"},
            "detach_target": {"type": "boolean", "default": True},
            "tokens": {"type": "integer", "minimum": 1, "description": "number of predicted tokens (inferred from the target)"},
            "target_dim": {"type": "integer", "minimum": 1, "description": "width of a target token (inferred from the target)"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        p = self.params
        if "target" in inputs:
            n, dz = int(inputs["target"].shape[1]), int(inputs["target"].shape[2])
        elif "tokens" in p and "target_dim" in p:
            n, dz = p["tokens"], p["target_dim"]
        else:
            raise PortError("target", "not wired, so with.tokens and with.target_dim are required")
        if p["width"] % p["heads"]:
            raise PortError("context", f"with.width={p['width']} is not divisible by with.heads={p['heads']}")
        self.tokens, self.target_dim = n, dz
        w = p["width"]
        self.context_proj = nn.Linear(inputs["context"].dim, w)
        self.queries = nn.Parameter(torch.randn(1, n, w) * 0.02)
        self.attn = nn.MultiheadAttention(w, p["heads"], batch_first=True)
        self.norm_q, self.norm_kv = nn.LayerNorm(w), nn.LayerNorm(w)
        self.mlp = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 2 * w), nn.GELU(), nn.Linear(2 * w, w))
        self.out = nn.Linear(w, dz)

    def forward(self, context, context_mask=None, target=None):
        kv = self.norm_kv(self.context_proj(context))
        q = self.queries.expand(context.shape[0], -1, -1)
        pad = None if context_mask is None else ~context_mask.bool()
        x = q + self.attn(self.norm_q(q), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        x = x + self.mlp(x)
        pred = self.out(x)
        out = {"pred": pred}
        if target is not None:
            t = target.detach() if self.params["detach_target"] else target
            out["loss"] = LOSSES[self.params["loss"]](pred, t.to(pred.dtype))
        return out

    def predict(self, context, context_mask=None):
        return self.forward(context, context_mask)
