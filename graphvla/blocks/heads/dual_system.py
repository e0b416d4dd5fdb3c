"""head.dual_system: GraphVLA's dual-system head, after GR00T's design (not GR00T, and not
parity-tested against it: docs/heads.md, "Names and parity"). System 2 is the backbone (its
features arrive on `context`), adapted here by a projection and a few self-attention layers;
System 1 is a flow-matching DiT over [state token; action tokens] whose every layer
cross-attends to those System-2 features.

The head keeps no state between calls. Running System 2 at a lower rate than System 1 is the
compiler's job: `infer: {every: k}` on the backbone block reuses its outputs for k calls, and this
head simply denoises against whatever features it is given (same features + same `noise` give
the same actions). The flow-matching conventions are those of head.flow_matching, and so is
real-time chunking (`predict(..., rtc=Inpainting(...))` guides System 1's Euler steps)."""
from __future__ import annotations

from ..registry import register
from .common import (ACTION_PARAMS, HEAD_IN_PORTS, HEAD_OUT_PORTS, WIDTH_PARAMS, ContextProjection, context_layers,
                     encoder_stack, layer_param, padding_mask, read_layer, state_width)
from .flow_matching import FLOW_PARAMS, FlowDiT, FlowHead


@register
class DualSystemHead(FlowHead):
    type_name = "head.dual_system"
    description = ("Dual system after GR00T's design: System-2 features (backbone, projected) + a System-1 "
                   "flow-matching DiT over [state; actions].")
    in_ports = HEAD_IN_PORTS
    out_ports = HEAD_OUT_PORTS
    params_schema = {
        "type": "object",
        "properties": {
            **WIDTH_PARAMS,
            **FLOW_PARAMS,
            "adapter_layers": {"type": "integer", "minimum": 0, "default": 1,
                               "description": "self-attention layers adapting the System-2 features before System 1 reads them"},
            "layer": layer_param("which layer of a [B, L, T, D] context is System 2's output (default the last; GR00T uses a middle one)"),
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.layer, dim = read_layer(self)
        w = self.params["width"]
        self.system2_proj = ContextProjection(dim, w)
        adapter_layers = self.params["adapter_layers"]
        self.system2_adapter = encoder_stack(w, self.params["heads"], adapter_layers) if adapter_layers else None
        self.dit = FlowDiT(self.horizon, self.action_dim, w, self.params["heads"], self.params["layers"], state_width(self))

    @property
    def system1(self):
        """The fast flow-matching DiT (the shared FlowHead code calls it `dit`)."""
        return self.dit

    def memories(self, context, context_mask):
        return self.system2(context, context_mask)

    def system2(self, context, context_mask):
        """Backbone features -> the tokens System 1 attends to (one memory shared by all DiT layers)."""
        tokens = self.system2_proj(context_layers(context)[:, self.layer])
        pad = padding_mask(context_mask, tokens.shape[1])
        if self.system2_adapter is not None:
            tokens = self.system2_adapter(tokens, src_key_padding_mask=pad)
        return [tokens] * len(self.dit.layers), pad
