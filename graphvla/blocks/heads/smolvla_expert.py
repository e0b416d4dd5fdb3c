"""`head.smolvla_expert`: the action expert of LeRobot's SmolVLA (lerobot.policies.smolvla), checked
against LeRobot 0.4.1's own code: tests/test_lerobot_smolvla.py.

A narrower Llama stack (SmolVLA: 0.75 of the VLM's width, the VLM's heads and head size) beside
the VLM's kept layers (backbone.smolvla_vlm gives their keys and values). Expert layer j sits at VLM
layer j * (vlm_layers / layers); the VLM layers between have no expert layer. At a VLM layer i with
i % self_attn_every == 0 the action tokens attend to the prefix's keys and values there plus their
own (causally among themselves: each action token opens its own block, as SmolVLA's masks say);
at the others they cross-attend to the prefix only, reading its keys and values through their own
k_proj / v_proj (from the VLM's key width), with positions restarted at 0.

Flow matching as SmolVLA does it (its convention: time 1 is noise, 0 the data):
  x_t = t * noise + (1 - t) * actions, target velocity u = noise - actions,
  loss = mean squared error over every element of the [B, horizon, max_action_dim] chunk (actions
  and noise zero-padded / drawn at max_action_dim; LeRobot applies no step mask),
  t ~ Beta(1.5, 1) * 0.999 + 0.001.
The action tokens: action_in_proj(x_t) beside a sine/cosine embedding of t (periods from min_period to
max_period, computed in float64), through action_time_mlp_in, SiLU, action_time_mlp_out.
Inference integrates from the `noise` ([B, horizon, max_action_dim], a predict input; drawn when
absent) at t = 1 with `num_steps` Euler steps of -1/num_steps, then keeps the first action_dim.
The training `noise` and `time` are inputs too (a parity test feeds LeRobot's); drawn when absent.
Real-time chunking (`rtc`): GraphVLA's guidance (flow_matching.py) in SmolVLA's time direction.

`weights`: a LeRobot SmolVLA save whose `model.vlm_with_expert.lm_expert.*` and
`model.action_*` tensors are read ('none': initialized, a checkpoint fills them).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.smolvla_vlm import EXPERT_PREFIX, Layer, RMSNorm, attend, read_weights, rotate, take
from ..base import Block, InPort, OutPort, ParamError, PortError, parameters_are_placeholders
from ..registry import register
from .common import ACTION_PARAMS, action_shape
from .flow_matching import Inpainting, active_inpainting, reversed_guided_step
from .noise import SamplingHead


def time_embedding(t: torch.Tensor, width: int, min_period: float, max_period: float) -> torch.Tensor:
    """[B] -> [B, width]: sin then cos of t * 2 pi / period, periods geometric from min to max
    (in float64, as SmolVLA computes it, except on devices without it: mps)."""
    dtype = torch.float32 if t.device.type == "mps" else torch.float64
    frac = torch.linspace(0.0, 1.0, width // 2, dtype=dtype, device=t.device)
    period = min_period * (max_period / min_period) ** frac
    angle = (1.0 / period * 2 * math.pi)[None, :] * t[:, None]
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def intermediate_size(width: int) -> int:
    """SmolVLA's expert MLP width: 4 x (2/3 width), rounded up to a multiple of 256."""
    h = int(4 * int(2 * width / 3))
    return 256 * ((h + 255) // 256)


@register
class SmolVLAExpert(SamplingHead, Block):
    type_name = "head.smolvla_expert"
    description = ("LeRobot SmolVLA's action expert: interleaved self-/cross-attention layers over the VLM prefix's keys "
                   "and values, flow matching (Beta time, Euler sampling from the noise input).")
    in_ports = {
        "keys": InPort("layers", ndim=4, doc="[B, layers, T, kv] rotated prefix keys (backbone.smolvla_vlm)"),
        "values": InPort("layers", ndim=4, doc="[B, layers, T, kv] prefix values"),
        "mask": InPort("mask", ndim=2, doc="[B, T] real prefix tokens"),
        "target": InPort("action", optional=True, target=True, doc="action chunk [B, H, A] (normalized)"),
        "noise": InPort(("action", "any"), optional=True, target=True,
                        doc="training noise [B, H, max_action_dim]; drawn when absent"),
        "time": InPort(("state", "any"), optional=True, target=True, doc="training flow time [B] or [B, 1] in (0, 1]; drawn when absent"),
    }
    out_ports = {
        "actions": OutPort("action", doc="[B, H, A]"),
        "loss": OutPort("loss", train_only=True, doc="mean squared velocity error"),
    }
    predict_kwargs = ("noise", "num_steps", "rtc")
    params_schema = {
        "type": "object",
        "properties": {
            "width": {"type": "integer", "minimum": 2, "description": "expert hidden size (SmolVLA: 0.75 x the VLM's)"},
            "ffn": {"type": "integer", "minimum": 1, "description": "MLP width (default: SmolVLA's rule from width)"},
            "heads": {"type": "integer", "minimum": 1, "description": "attention heads (the VLM's)"},
            "head_dim": {"type": "integer", "minimum": 1, "default": 64},
            "layers": {"type": "integer", "minimum": 1, "description": "expert layers (default: one per VLM layer)"},
            "self_attn_every": {"type": "integer", "minimum": 0, "default": 2,
                                "description": "self-attention at VLM layers i % n == 0, cross-attention between (0: all self)"},
            "cross_attention": {"type": "boolean", "default": True, "description": "attention_mode cross_attn"},
            "max_action_dim": {"type": "integer", "minimum": 1, "default": 32},
            "num_steps": {"type": "integer", "minimum": 1, "default": 10},
            "min_period": {"type": "number", "exclusiveMinimum": 0, "default": 0.004},
            "max_period": {"type": "number", "exclusiveMinimum": 0, "default": 4.0},
            "rms_eps": {"type": "number", "exclusiveMinimum": 0, "default": 1.0e-5},
            "weights": {"type": "string", "default": "none", "description": "'none' or a LeRobot SmolVLA save"},
            **ACTION_PARAMS,
        },
        "required": ["width", "heads"],
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        p = self.params
        self.horizon, self.action_dim = action_shape(self)
        if self.action_dim > p["max_action_dim"]:
            raise ParamError("max_action_dim", f"{p['max_action_dim']} < the action dim {self.action_dim}")
        keys = inputs["keys"]
        if keys.shape is None or len(keys.shape) != 4:
            raise PortError("keys", f"expects [B, layers, T, kv], got {keys.shape}")
        self.vlm_layers, kv = int(keys.shape[1]), int(keys.shape[3])
        d, self.heads, self.head_dim = p["width"], p["heads"], p["head_dim"]
        if kv % self.head_dim:
            raise PortError("keys", f"key width {kv} is not a multiple of with.head_dim={self.head_dim}")
        self.kv_heads = kv // self.head_dim
        if self.heads % self.kv_heads:
            raise ParamError("heads", f"{self.heads} heads are not a multiple of the prefix's {self.kv_heads} key-value heads")
        n = p.get("layers") or self.vlm_layers
        if self.vlm_layers % n:
            raise ParamError("layers", f"the VLM's {self.vlm_layers} layers are not a multiple of {n} expert layers")
        self.every = self.vlm_layers // n
        self.cross = [bool(p["cross_attention"]) and not (p["self_attn_every"] > 0 and (j * self.every) % p["self_attn_every"] == 0)
                      for j in range(n)]
        ffn = p.get("ffn") or intermediate_size(d)
        self.layers = nn.ModuleList(
            Layer(d, self.heads, self.kv_heads, self.head_dim, ffn, p["rms_eps"], kv_in=kv if self.cross[j] else None)
            for j in range(n))
        self.norm = RMSNorm(d, p["rms_eps"])
        m = p["max_action_dim"]
        self.action_in_proj = nn.Linear(m, d)
        self.action_out_proj = nn.Linear(d, m)
        self.action_time_mlp_in = nn.Linear(2 * d, d)
        self.action_time_mlp_out = nn.Linear(d, d)
        if p["weights"] != "none" and not ctx.meta and not parameters_are_placeholders():
            self.load_lerobot(read_weights(ctx.resolve_path(p["weights"], "weights"), "weights"))

    def load_lerobot(self, tensors: dict, key: str = "weights") -> None:
        """This block's tensors from a LeRobot SmolVLA state dict (LeRobot's names)."""
        mine = {}
        for name, t in tensors.items():
            if name.startswith(EXPERT_PREFIX):
                mine[name[len(EXPERT_PREFIX):]] = t
            elif name.startswith("model.action_"):
                mine[name[len("model."):]] = t
        take(mine, "", self, key)

    # ------------------------------------------------------------------------------------------
    def embed(self, x, t):
        a = self.action_in_proj(x)
        te = time_embedding(t, a.shape[-1], self.params["min_period"], self.params["max_period"]).to(a.dtype)
        h = self.action_time_mlp_in(torch.cat([a, te[:, None].expand_as(a)], dim=-1))
        return self.action_time_mlp_out(F.silu(h))

    def velocity(self, keys, values, mask, x, t):
        """v(x, t) [B, H, max_action_dim] given the prefix's keys / values / mask."""
        h = self.embed(x, t)
        b, n = h.shape[:2]
        valid = mask.bool()
        start = valid.long().sum(dim=1, keepdim=True)  # positions after the real prefix tokens
        steps = torch.arange(n, device=h.device)[None]
        causal = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()[None].expand(b, n, n)
        to_prefix = valid[:, None, :].expand(b, n, valid.shape[1])
        shape = (self.kv_heads, self.head_dim)
        for j, layer in enumerate(self.layers):
            i = j * self.every
            pk, pv = keys[:, i], values[:, i]  # [B, T, kv]
            if self.cross[j]:
                hn = layer.input_layernorm(h)
                q = layer.self_attn.q_proj(hn).unflatten(-1, (self.heads, self.head_dim))
                q = rotate(q, steps.expand(b, n))
                k = layer.self_attn.k_proj(pk.to(hn.dtype)).unflatten(-1, shape)
                v = layer.self_attn.v_proj(pv.to(hn.dtype)).unflatten(-1, shape)
                att = attend(q, k, v, to_prefix, self.heads, self.kv_heads, self.head_dim)
            else:
                q, k, v = layer.qkv(h, start + steps)
                k = torch.cat([pk.unflatten(-1, shape).to(k.dtype), k], dim=1)
                v = torch.cat([pv.unflatten(-1, shape).to(v.dtype), v], dim=1)
                att = attend(q, k, v, torch.cat([to_prefix, causal], dim=2), self.heads, self.kv_heads, self.head_dim)
            h = layer.finish(h, att.to(h.dtype))
        return self.action_out_proj(self.norm(h).float())

    def noise_shape(self, batch: int) -> tuple:
        """The starting noise of `predict` (graphvla.policy draws it per session)."""
        return (batch, self.horizon, self.params["max_action_dim"])

    @property
    def noise_dtype(self) -> torch.dtype:
        return torch.float32

    def _padded(self, target):
        return F.pad(target.float(), (0, self.params["max_action_dim"] - target.shape[-1]))

    def _noise(self, noise, b, device):
        shape = (b, self.horizon, self.params["max_action_dim"])
        if noise is None:
            return torch.randn(shape, device=device)
        if tuple(noise.shape) != shape:
            raise PortError("noise", f"noise: expects {list(shape)} (batch, horizon, max_action_dim), got {list(noise.shape)}")
        return noise.float()

    def forward(self, keys=None, values=None, mask=None, target=None, noise=None, time=None):
        b = keys.shape[0]
        if target is None:
            return {"actions": self.sample(keys, values, mask)}
        if tuple(target.shape[1:]) != (self.horizon, self.action_dim):
            raise PortError("target", f"expects [B, {self.horizon}, {self.action_dim}], got {list(target.shape)}")
        actions = self._padded(target)
        noise = self._noise(noise, b, keys.device)
        if time is None:
            time = torch.distributions.Beta(1.5, 1.0).sample((b,)).to(keys.device) * 0.999 + 0.001
        elif tuple(time.shape) not in ((b,), (b, 1)):
            raise PortError("time", f"time: expects [B] or [B, 1] with B = {b}, got {list(time.shape)}")
        time = time.reshape(b)
        t = time.float()[:, None, None]
        x_t = t * noise + (1 - t) * actions
        v = self.velocity(keys, values, mask, x_t, time.float())
        loss = F.mse_loss(v, noise - actions)
        return {"loss": loss, "actions": (x_t - t * v)[..., : self.action_dim]}

    def sample(self, keys, values, mask, noise=None, num_steps=None, rtc: Inpainting | None = None):
        steps = int(num_steps or self.params["num_steps"])
        b = keys.shape[0]
        x = self._noise(noise, b, keys.device).clone()
        rtc = active_inpainting(rtc, (b, self.horizon, self.action_dim))  # None: the plain chunk, bitwise
        dt = torch.tensor(-1.0 / steps, dtype=torch.float32)
        t = torch.tensor(1.0, dtype=torch.float32)
        for _ in range(steps):
            tb = t.expand(b).to(keys.device)
            if rtc is None:
                x = x + dt * self.velocity(keys, values, mask, x, tb)
            else:
                keys_d, values_d = keys.detach(), values.detach()
                x = reversed_guided_step(lambda xg: self.velocity(keys_d, values_d, mask, xg, tb),
                                         x, t, dt, rtc, steps, self.action_dim)
            t = t + dt
        return x[..., : self.action_dim]

    def meta_forward(self, keys=None, values=None, mask=None, target=None, noise=None, time=None):
        out = {"actions": torch.empty(keys.shape[0], self.horizon, self.action_dim, device="meta")}
        if target is not None:
            out["loss"] = torch.empty((), device="meta")
        return out

    def predict(self, keys=None, values=None, mask=None, noise=None, num_steps=None, rtc=None):
        return {"actions": self.sample(keys, values, mask, noise, num_steps, rtc)}
