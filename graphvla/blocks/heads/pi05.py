"""`head.pi05`: pi0.5's action expert (Physical Intelligence 2025) as LeRobot 0.4's pi05 (the port of
openpi's PyTorch model) computes it; checked against LeRobot 0.4.1's own code (tests/test_lerobot_pi05.py).

`head.pi0` (heads/pi0.py) with pi0.5's differences, everything else (the Gemma expert attending layer by
layer to PaliGemma's prefix keys and values, flow matching in pi0's time direction with Beta time,
Euler sampling from t = 1, the loss over the real action dims, real-time chunking) shared:
- no state token: the state reaches the model only as text in the prompt (glue.state_text, 256 bins of
  the normalized state, before backbone.paligemma tokenizes it), so the suffix is the H action tokens,
  which see the valid prefix and each other;
- the flow time is not mixed into the action tokens: its sine-cosine embedding goes through
  Linear(width, width), SiLU, Linear(width, width), SiLU (`time_mlp_in` / `time_mlp_out`), and that
  vector conditions every RMSNorm of the expert (adaRMS: a Linear(width, 3 width) per norm gives scale,
  shift and gate; x_norm * (1 + scale) + shift, and each residual branch is added times its gate), the
  final norm included (its gate unused). The action tokens are `action_in_proj` of the noisy actions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.paligemma import GemmaLayer, attention, rope
from ..registry import register
from .pi0 import Pi0Head, time_embedding


class AdaRMSNorm(nn.Module):
    """openpi's adaptive RMSNorm: x * rsqrt(mean(x^2) + eps) (float32), then * (1 + scale) + shift with
    (scale, shift, gate) = dense(cond); returns (normed, gate)."""

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim)

    def forward(self, x, cond):
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        scale, shift, gate = self.dense(cond)[:, None, :].chunk(3, dim=-1)
        return (normed * (1 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


class AdaGemmaLayer(GemmaLayer):
    """A Gemma decoder layer whose two norms are adaptive and whose residual branches are gated."""

    def __init__(self, width, mlp, heads, kv_heads, head_dim, cond_dim, eps: float = 1e-6):
        super().__init__(width, mlp, heads, kv_heads, head_dim, eps)
        self.input_layernorm = AdaRMSNorm(width, cond_dim, eps)
        self.post_attention_layernorm = AdaRMSNorm(width, cond_dim, eps)

    def qkv_gate(self, x, cos, sin, cond):
        h, gate = self.input_layernorm(x, cond)
        return (*self.project(h, cos, sin), gate)

    def finish_gated(self, x, attended, gate, cond):
        x = x + self.self_attn["o_proj"](attended) * gate
        h, gate = self.post_attention_layernorm(x, cond)
        return x + self.feed_forward(h) * gate


@register
class Pi05Head(Pi0Head):
    type_name = "head.pi05"
    description = ("pi0.5's action expert: a Gemma over the action tokens attending layer by layer to PaliGemma's "
                   "prefix keys/values, the flow time conditioning every norm (adaRMS); the state is in the prompt.")
    in_ports = {k: v for k, v in Pi0Head.in_ports.items() if k != "state"}
    params_schema = {**Pi0Head.params_schema,
                     "properties": {k: v for k, v in Pi0Head.params_schema["properties"].items()
                                    if k != "max_state_dim"}}

    def __init__(self, params, inputs, ctx):
        super(Pi0Head, self).__init__(params, inputs, ctx)  # head.pi0's checks, without its state projection
        self._check_expert(inputs)
        p = self.params
        w = p["width"]
        self.action_in_proj = nn.Linear(p["max_action_dim"], w)
        self.time_mlp_in = nn.Linear(w, w)
        self.time_mlp_out = nn.Linear(w, w)
        self.action_out_proj = nn.Linear(w, p["max_action_dim"])
        self.layers = nn.ModuleList(AdaGemmaLayer(w, p["mlp"], p["heads"], p["kv_heads"], p["head_dim"], w)
                                    for _ in range(p["layers"]))
        self.norm = AdaRMSNorm(w, w)

    def velocity(self, kv, prefix_mask, state, x_t, time):
        """pi0.5's expert on the action tokens, conditioned on the flow time -> the velocity
        [B, H, max_action_dim] (`state` is unused: pi0.5 reads it from the prompt)."""
        p = self.params
        b = x_t.shape[0]
        t_emb = time_embedding(time, p["width"], p["min_period"], p["max_period"])
        cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(t_emb))))
        x = self.action_in_proj(x_t)
        s = x.shape[1]
        pre = prefix_mask.bool()
        mask = torch.cat([pre[:, None, :].expand(b, s, pre.shape[1]),
                          torch.ones(b, s, s, dtype=torch.bool, device=x.device)], dim=2)
        positions = pre.long().sum(-1, keepdim=True) + torch.arange(s, device=x.device)[None]
        cos, sin = rope(positions, p["head_dim"], p["rope_theta"], x.dtype)
        for i, layer in enumerate(self.layers):
            q, k, v, gate = layer.qkv_gate(x, cos, sin, cond)
            pk = kv[:, i, 0].unflatten(-1, (p["kv_heads"], p["head_dim"])).transpose(1, 2).to(k.dtype)
            pv = kv[:, i, 1].unflatten(-1, (p["kv_heads"], p["head_dim"])).transpose(1, 2).to(v.dtype)
            att = attention(q, torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), mask, p["head_dim"] ** -0.5)
            x = layer.finish_gated(x, att, gate, cond)
        return self.action_out_proj(self.norm(x, cond)[0][:, -self.horizon:].float())

    def _state(self, state, kv):
        return kv.new_zeros(kv.shape[0], 0)  # no state input: an empty stand-in for head.pi0's calls
