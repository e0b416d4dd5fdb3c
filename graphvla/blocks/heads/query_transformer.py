"""head.query_transformer: GraphVLA's learned-query transformer head. H learned action query tokens
are appended to the (projected) context and an optional state token; a small transformer encoder
runs over [context; state; queries] and an MLP-ResNet maps each query's output to one action step.
All H steps come out of one pass; masked L1 loss.

It was called head.oft (old specs and runs still load under that name, with a warning: see
graphvla/blocks/registry.py ALIASES). It is not OpenVLA-OFT or starVLA's QwenOFT: those put the
action placeholders into the VLM's own prompt and regress the VLM's hidden states there; this head
runs its own transformer over the backbone's features. Only the parallel decoding, the L1 loss and
the MLP-ResNet read-out follow OpenVLA-OFT's design (docs/heads.md, "Names and parity")."""
from __future__ import annotations

import torch
from torch import nn

from ..base import Block
from ..registry import register
from .common import (ACTION_PARAMS, HEAD_IN_PORTS, HEAD_OUT_PORTS, WIDTH_PARAMS, ContextProjection, MLPResNet,
                     StateToken, context_layers, encoder_stack, layer_param, masked_l1, padding_mask, read_layer,
                     state_width)


@register
class QueryTransformerHead(Block):
    type_name = "head.query_transformer"
    description = ("GraphVLA's learned-query transformer (formerly head.oft): action queries attend to the context; "
                   "MLP-ResNet regresses all H steps in parallel, L1 loss.")
    in_ports = HEAD_IN_PORTS
    out_ports = HEAD_OUT_PORTS
    params_schema = {
        "type": "object",
        "properties": {
            **WIDTH_PARAMS,
            "layers": {"type": "integer", "minimum": 1, "default": 2, "description": "transformer layers over [context; state; queries]"},
            "mlp_blocks": {"type": "integer", "minimum": 0, "default": 2, "description": "residual blocks of the action MLP-ResNet"},
            "layer": layer_param("which layer of a [B, L, T, D] context to read (negative counts from the end; default the last)"),
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.layer, dim = read_layer(self)
        w = self.params["width"]
        self.context_proj = ContextProjection(dim, w)
        self.queries = nn.Parameter(torch.randn(self.horizon, w) * 0.02)
        self.state_token = StateToken(state_width(self), w) if "state" in inputs else None
        self.transformer = encoder_stack(w, self.params["heads"], self.params["layers"])
        self.norm = nn.LayerNorm(w)
        self.action_mlp = MLPResNet(w, self.action_dim, self.params["mlp_blocks"])

    def forward(self, context, context_mask=None, state=None, target=None, mask=None):
        tokens = self.context_proj(context_layers(context)[:, self.layer])
        b = tokens.shape[0]
        pad = padding_mask(context_mask, tokens.shape[1])
        parts = [tokens]
        if self.state_token is not None and state is not None:
            parts.append(self.state_token(state))
        parts.append(self.queries.unsqueeze(0).expand(b, -1, -1))
        seq = torch.cat(parts, dim=1)
        if pad is not None:
            pad = torch.cat([pad, pad.new_zeros(b, seq.shape[1] - pad.shape[1])], dim=1)
        out = self.norm(self.transformer(seq, src_key_padding_mask=pad))
        actions = self.action_mlp(out[:, -self.horizon:])
        result = {"actions": actions}
        if target is not None:
            result["loss"] = masked_l1(actions, target, mask)
        return result
