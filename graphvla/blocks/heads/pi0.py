"""`head.pi0`: pi0's action expert and flow matching (Black et al. 2024) as LeRobot 0.4's pi0 (the
port of openpi's PyTorch model) computes them; checked against LeRobot 0.4.1's own code
(tests/test_lerobot_pi0.py).

Facts of that model:
- the suffix: one state token (state zero-padded to `max_state_dim`, a linear to the expert's width)
  then one token per chunk step: the noisy actions (zero-padded to `max_action_dim`, a linear) beside
  a sine-cosine embedding of the flow time (periods 4e-3 to 4, sin half then cos half, computed in
  float64), through Linear(2 width, width), SiLU, Linear(width, width);
- a Gemma "action expert" (its own layers, same heads, kv heads and head_dim as PaliGemma's) whose
  layer i attends jointly with PaliGemma's layer i: its queries see the valid prefix tokens (the
  prefix's keys and values, `backbone.paligemma`'s `kv`) and the suffix, the state token not the
  action tokens, the action tokens everything; positions continue after the valid prefix tokens;
- the expert's final RMSNorm, then Linear(width, max_action_dim) on the action tokens: the velocity.

Flow matching, pi0's convention (the reverse of GraphVLA's flow heads'): x_t = t noise + (1 - t)
actions, target u = noise - actions, t = 0.999 b + 0.001 with b ~ Beta(1.5, 1); the loss is the mean
squared error over the real action dims (padding dims dropped, every step counted: LeRobot 0.4's
PI0Policy.forward). Inference integrates from t = 1 to 0 in `num_steps` Euler steps of -1 / num_steps
(t kept in float32 as LeRobot steps it), from `noise` [B, H, max_action_dim] (an input of predict:
graphvla.policy.Policy draws it from each session's generator; an export takes it as an input), and
returns the first action_dim dims. Real-time chunking (`rtc`): GraphVLA's guidance
(flow_matching.py's module docstring) in pi0's time direction.

Training takes `noise` and `time` as inputs when wired (a parity test feeds LeRobot's draws), else
draws them from torch's generator (Beta(1.5, 1) as u ** (2/3), its inverse CDF).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.paligemma import RMSNorm, GemmaLayer, attention, rope
from .flow_matching import Inpainting, active_inpainting, reversed_guided_step
from ..base import Block, InPort, OutPort, ParamError, PortError
from ..registry import register
from .common import ACTION_PARAMS, action_shape
from .noise import SamplingHead


def time_embedding(time: torch.Tensor, width: int, min_period: float, max_period: float) -> torch.Tensor:
    """[B] -> [B, width]: sin then cos of time * 2 pi / period, periods geometric from min to max
    (float64, cast to time's dtype)."""
    frac = torch.linspace(0.0, 1.0, width // 2, dtype=torch.float64, device=time.device)
    period = min_period * (max_period / min_period) ** frac
    x = (1.0 / period * 2 * math.pi)[None, :] * time[:, None]
    return torch.cat([torch.sin(x), torch.cos(x)], dim=1).to(time.dtype)


def pad_last(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x if x.shape[-1] >= dim else F.pad(x, (0, dim - x.shape[-1]))


@register
class Pi0Head(SamplingHead, Block):
    type_name = "head.pi0"
    description = ("pi0's action expert: a Gemma over [state token; action+time tokens] attending layer by layer "
                   "to PaliGemma's prefix keys/values; flow matching (Beta time), Euler sampling from t=1 to 0.")
    in_ports = {
        "kv": InPort("latent", ndim=5, doc="[B, layers, 2, T, kv_heads * head_dim] (backbone.paligemma)"),
        "prefix_mask": InPort("mask", ndim=2, doc="[B, T] valid prefix tokens"),
        "state": InPort("state", optional=True, ndim=2, doc="[B, S] (normalized); zeros when not wired"),
        "target": InPort("action", optional=True, target=True, doc="[B, H, A] (normalized)"),
        "noise": InPort(("action", "any"), optional=True, target=True,
                        doc="training noise [B, H, max_action_dim]; drawn when absent"),
        "time": InPort(("state", "any"), optional=True, target=True, doc="training flow time [B]; drawn when absent"),
    }
    out_ports = {
        "actions": OutPort("action", doc="[B, H, A]"),
        "loss": OutPort("loss", train_only=True, doc="mean squared velocity error over the real action dims"),
    }
    params_schema = {
        "type": "object",
        "properties": {
            "width": {"type": "integer", "minimum": 2, "default": 1024, "description": "the expert's width"},
            "layers": {"type": "integer", "minimum": 1, "default": 18, "description": "= PaliGemma's layers"},
            "mlp": {"type": "integer", "minimum": 1, "default": 4096},
            "heads": {"type": "integer", "minimum": 1, "default": 8},
            "kv_heads": {"type": "integer", "minimum": 1, "default": 1},
            "head_dim": {"type": "integer", "minimum": 2, "default": 256},
            "rope_theta": {"type": "number", "exclusiveMinimum": 0, "default": 10000.0},
            "max_state_dim": {"type": "integer", "minimum": 1, "default": 32},
            "max_action_dim": {"type": "integer", "minimum": 1, "default": 32},
            "num_steps": {"type": "integer", "minimum": 1, "default": 10, "description": "Euler steps at inference"},
            "min_period": {"type": "number", "exclusiveMinimum": 0, "default": 0.004},
            "max_period": {"type": "number", "exclusiveMinimum": 0, "default": 4.0},
            "time_beta": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 2,
                          "maxItems": 2, "default": [1.5, 1.0], "description": "Beta(alpha, beta) of the flow time"},
            "time_scale": {"type": "number", "default": 0.999},
            "time_offset": {"type": "number", "default": 0.001},
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }
    predict_kwargs = ("noise", "num_steps", "rtc")

    def _check_expert(self, inputs) -> None:
        """The expert's checks shared with head.pi05: an even width, the action dim within
        max_action_dim, and prefix keys/values shaped for its layers and heads. Sets horizon and
        action_dim."""
        p = self.params
        w = p["width"]
        if w % 2:
            raise ParamError("width", f"width {w} must be even (sin/cos time embedding)")
        self.horizon, self.action_dim = action_shape(self)
        if self.action_dim > p["max_action_dim"]:
            raise ParamError("max_action_dim", f"{p['max_action_dim']} < the action dim {self.action_dim}")
        info = inputs["kv"]
        if info.shape is not None:
            if len(info.shape) != 5 or info.shape[1] != p["layers"] or info.shape[2] != 2:
                raise PortError("kv", f"expects [B, {p['layers']} layers, 2, T, kv_heads * head_dim], got {info.shape}")
            if info.shape[4] != p["kv_heads"] * p["head_dim"]:
                raise PortError("kv", f"prefix keys are {info.shape[4]} wide but kv_heads x head_dim is "
                                      f"{p['kv_heads']} x {p['head_dim']}")

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self._check_expert(inputs)
        p = self.params
        w = p["width"]
        st = inputs.get("state")
        if st is not None and st.shape is not None and st.shape[-1] > p["max_state_dim"]:
            raise ParamError("max_state_dim", f"{p['max_state_dim']} < the state dim {st.shape[-1]}")
        self.state_proj = nn.Linear(p["max_state_dim"], w)
        self.action_in_proj = nn.Linear(p["max_action_dim"], w)
        self.action_time_mlp_in = nn.Linear(2 * w, w)
        self.action_time_mlp_out = nn.Linear(w, w)
        self.action_out_proj = nn.Linear(w, p["max_action_dim"])
        self.layers = nn.ModuleList(GemmaLayer(w, p["mlp"], p["heads"], p["kv_heads"], p["head_dim"])
                                    for _ in range(p["layers"]))
        self.norm = RMSNorm(w)

    # ------------------------------------------------------------------------------------------
    def velocity(self, kv, prefix_mask, state, x_t, time):
        """pi0's expert on the suffix [state; x_t + time] -> the velocity [B, H, max_action_dim]."""
        p = self.params
        b = x_t.shape[0]
        state_tok = self.state_proj(state)[:, None]
        t_emb = time_embedding(time, p["width"], p["min_period"], p["max_period"])
        a = self.action_in_proj(x_t)
        a = torch.cat([a, t_emb[:, None, :].expand_as(a)], dim=2)
        a = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(a)))
        x = torch.cat([state_tok, a], dim=1)  # [B, 1 + H, W]
        s = x.shape[1]
        pre = prefix_mask.bool()
        # the state token sees the prefix and itself; the action tokens see everything
        suffix = torch.ones(s, s, dtype=torch.bool, device=x.device)
        suffix[0, 1:] = False
        mask = torch.cat([pre[:, None, :].expand(b, s, pre.shape[1]), suffix[None].expand(b, s, s)], dim=2)
        positions = pre.long().sum(-1, keepdim=True) + torch.arange(s, device=x.device)[None]
        cos, sin = rope(positions, p["head_dim"], p["rope_theta"], x.dtype)
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x, cos, sin)
            pk = kv[:, i, 0].unflatten(-1, (p["kv_heads"], p["head_dim"])).transpose(1, 2).to(k.dtype)
            pv = kv[:, i, 1].unflatten(-1, (p["kv_heads"], p["head_dim"])).transpose(1, 2).to(v.dtype)
            att = attention(q, torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), mask, p["head_dim"] ** -0.5)
            x = layer.finish(x, att)
        return self.action_out_proj(self.norm(x)[:, -self.horizon:].float())

    def _state(self, state, kv):
        if state is None:
            return kv.new_zeros(kv.shape[0], self.params["max_state_dim"], dtype=self.state_proj.weight.dtype)
        return pad_last(state.to(self.state_proj.weight.dtype), self.params["max_state_dim"])

    def noise_shape(self, batch: int) -> tuple:
        return (batch, int(self.horizon), int(self.params["max_action_dim"]))

    @property
    def noise_dtype(self) -> torch.dtype:
        return self.action_in_proj.weight.dtype

    def draw_time(self, b, device):
        alpha, beta = self.params["time_beta"]
        if (alpha, beta) == (1.5, 1.0):
            u = torch.rand(b, device=device).pow(2.0 / 3.0)
        else:
            u = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(beta))).sample((b,)).to(device)
        return (u * self.params["time_scale"] + self.params["time_offset"]).float()

    def forward(self, kv, prefix_mask, state=None, target=None, noise=None, time=None):
        if target is None:
            return self.predict(kv, prefix_mask, state)
        p = self.params
        b = target.shape[0]
        actions = pad_last(target.float(), p["max_action_dim"])
        if noise is None:
            noise = torch.randn_like(actions)
        elif tuple(noise.shape) != tuple(actions.shape):
            raise PortError("noise", f"expects [B, {self.horizon}, {p['max_action_dim']}], got {list(noise.shape)}")
        if time is None:
            time = self.draw_time(b, actions.device)
        time = time.reshape(b).float()
        tt = time[:, None, None]
        x_t = tt * noise + (1 - tt) * actions
        u_t = noise - actions
        v_t = self.velocity(kv, prefix_mask, self._state(state, kv), x_t, time)
        loss = F.mse_loss(u_t, v_t, reduction="none")[:, :, :self.action_dim].mean()
        return {"loss": loss}

    def predict(self, kv, prefix_mask, state=None, noise=None, num_steps=None, rtc: Inpainting | None = None):
        """noise: the starting noise [B, H, max_action_dim] (None: drawn from torch's generator); rtc:
        real-time chunking guidance (flow_matching.Inpainting over the first action_dim dims), or None."""
        b = kv.shape[0]
        shape = self.noise_shape(b)
        if noise is None:
            noise = torch.randn(shape, device=kv.device, dtype=self.noise_dtype)
        elif noise.dim() != 3 or tuple(noise.shape[1:]) != shape[1:]:
            raise ValueError(f"{self.type_name}: noise must be [batch, horizon, max_action_dim] = {list(shape)}, "
                             f"got {list(noise.shape)}")
        steps = int(num_steps or self.params["num_steps"])
        state = self._state(state, kv)
        rtc = active_inpainting(rtc, (b, self.horizon, self.action_dim))
        dt = torch.tensor(-1.0 / steps, dtype=torch.float32, device=kv.device)
        t = torch.tensor(1.0, dtype=torch.float32, device=kv.device)
        x = noise.float()
        for _ in range(steps):  # LeRobot's `while time >= -dt / 2` runs exactly `steps` times
            if rtc is None:
                x = x + dt * self.velocity(kv, prefix_mask, state, x, t.expand(b))
            else:
                kv_d, state_d = kv.detach(), state.detach()
                x = reversed_guided_step(lambda xg: self.velocity(kv_d, prefix_mask, state_d, xg, t.expand(b)),
                                         x, t, dt, rtc, steps, self.action_dim)
            t = t + dt
        return {"actions": x[:, :, :self.action_dim]}

    def meta_forward(self, kv, prefix_mask, state=None, target=None, noise=None, time=None):
        out = self.predict(kv, prefix_mask, state, num_steps=1)
        if target is not None:
            out["loss"] = self.forward(kv, prefix_mask, state, target, noise, time)["loss"]
        return out
