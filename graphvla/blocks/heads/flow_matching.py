"""head.flow_matching: GraphVLA's flow-matching DiT head (pi0's flow conventions; not pi0, and not
parity-tested against any published model: docs/heads.md, "Names and parity"). A small DiT
denoises the action chunk, each of its layers cross-attending to one backbone layer (a
configurable layer map), with a state token in front of the action tokens and adaLN time
conditioning.

Conventions (pi0's), used by every flow head here:
  x_tau = tau * actions + (1 - tau) * noise     tau = 0 is pure noise, tau = 1 the data
  velocity target u = actions - noise           (d x_tau / d tau)
  tau = s * (1 - b), b ~ Beta(1.5, 1), s = 0.999  (more weight on noisy times; never exactly 1)
  inference: Euler from tau = 0 to 1 in `num_steps` equal steps, x += v / num_steps.
Beta(1.5, 1) has CDF x**1.5, so b = r**(2/3) with r ~ U(0, 1): no sampler needed, works on meta.

The starting noise is an input of `predict` (`noise`, [B, H, A]): the caller draws it (the head's
`draw_noise`, blocks/heads/noise.py; graphvla.policy.Policy from each row's session generator), so
the sampler itself is deterministic and an exported graph takes the noise as a plain tensor input.
Called without it (a direct `cg.infer(...)`), predict draws it from torch's global generator as
Policy does without sessions.

`FlowDiT`, `flow_matching_loss` and `euler_sample` are also what head.dual_system runs.

Real-time chunking (Black et al. 2025, "Real-Time Execution of Action Chunking Flow Policies"):
`predict(..., rtc=Inpainting(target, weights, max_guidance))` inpaints the new chunk from the
part of the previous one that has not run yet. At each Euler step the predicted clean chunk
A1 = x + (1 - tau) v is pulled towards `target` by the vector-Jacobian product
((target - A1) * weights)^T dA1/dx, scaled by min(max_guidance, (1 - tau) / (tau r^2)) with
r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2) (their Pi-GDM weight, clipped at beta). The weights come
from the policy (policy/rtc.py): 1 on the steps that run before the new chunk arrives, decaying
over the rest of the overlap, 0 after. Rows whose weights are all 0 are sampled as without it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, ParamError
from ..registry import register
from .common import (ACTION_PARAMS, AdaLNLayer, ContextProjection, HEAD_IN_PORTS, HEAD_OUT_PORTS, StateToken,
                     WIDTH_PARAMS, context_layers, head_geometry, padding_mask, resolve_layer, sinusoidal,
                     state_width)
from .noise import SamplingHead, initial_noise

TIME_SCALE = 0.999  # s above


class FlowDiT(nn.Module):
    """Velocity network v(x_tau, tau | memories, state). `memories` holds one [B, T, width] tensor
    per DiT layer (the layer map already applied)."""

    def __init__(self, horizon: int, action_dim: int, width: int, heads: int, layers: int, state_dim: int = 0):
        super().__init__()
        self.width = width
        self.action_in = nn.Linear(action_dim, width)
        self.positions = nn.Parameter(torch.randn(horizon, width) * 0.02)
        self.state_token = StateToken(state_dim, width) if state_dim else None
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.layers = nn.ModuleList(AdaLNLayer(width, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False)
        self.final_modulation = nn.Linear(width, 2 * width)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)
        self.action_out = nn.Linear(width, action_dim)

    def memory_kv(self, memories):
        """Per-layer cross-attention keys/values of the memories: computed once per sample, reused
        by every noise draw and every Euler step."""
        return [layer.cross_attn.keys_values(m) for layer, m in zip(self.layers, memories)]

    def forward(self, x, tau, memory_kv, memory_padding=None, state=None):
        h = self.action_in(x.to(self.action_in.weight.dtype)) + self.positions
        prefix = 0
        if self.state_token is not None and state is not None:
            h = torch.cat([self.state_token(state), h], dim=1)
            prefix = 1
        cond = self.time_mlp(sinusoidal(tau, self.width).to(h.dtype))
        for layer, kv in zip(self.layers, memory_kv):
            h = layer(h, cond, kv, memory_padding)
        shift, scale = self.final_modulation(F.silu(cond)).unsqueeze(1).chunk(2, dim=-1)
        h = self.final_norm(h[:, prefix:]) * (1 + scale) + shift
        return self.action_out(h)


def sample_time(n: int, device, dtype=torch.float32) -> torch.Tensor:
    beta = torch.rand(n, device=device, dtype=dtype) ** (2.0 / 3.0)  # Beta(1.5, 1)
    return TIME_SCALE * (1 - beta)


def _repeat(x, k):
    return None if x is None else x.repeat_interleave(k, dim=0)


def flow_matching_loss(dit: FlowDiT, memories, memory_padding, state, target, mask=None, noise_draws: int = 1):
    """Mean squared velocity error over `noise_draws` (noise, tau) pairs per example; padded
    action steps (mask False) do not count."""
    k = noise_draws
    actions = _repeat(target, k)
    noise = torch.randn_like(actions)
    tau = sample_time(actions.shape[0], actions.device, actions.dtype)
    t = tau[:, None, None]
    x = t * actions + (1 - t) * noise
    kv = [(_repeat(keys, k), _repeat(values, k)) for keys, values in dit.memory_kv(memories)]
    v = dit(x, tau, kv, _repeat(memory_padding, k), _repeat(state, k))
    err = (v.float() - (actions - noise).float()) ** 2
    if mask is None:
        return err.mean()
    m = _repeat(mask, k).to(err.dtype)[:, :, None].expand_as(err)
    return (err * m).sum() / m.sum().clamp(min=1)


def euler_sample(dit: FlowDiT, memories, memory_padding, state, noise, num_steps: int = 10):
    """Integrate the learned velocity from `noise` (tau = 0, [B, H, A]) to actions (tau = 1).
    Deterministic: the noise is the only randomness."""
    device = memories[0].device
    dtype = dit.action_in.weight.dtype
    x = noise.to(device=device, dtype=dtype)
    kv = dit.memory_kv(memories)
    dt = 1.0 / num_steps
    for i in range(num_steps):
        tau = torch.full((x.shape[0],), i * dt, device=device, dtype=dtype)
        x = x + dt * dit(x, tau, kv, memory_padding, state)
    return x


@dataclass
class Inpainting:
    """Real-time chunking guidance for one batch (see the module docstring): `target` [B, H, A]
    the previous chunk's remaining actions aligned with the new chunk's steps (normalized as the
    head's actions are; any value where `weights` is 0), `weights` [B, H] in [0, 1], and
    `max_guidance` the clip beta of the guidance weight."""

    target: torch.Tensor
    weights: torch.Tensor
    max_guidance: float = 5.0


def guidance_scale(tau: float, max_guidance: float) -> float:
    """min(beta, (1 - tau) / (tau * r_tau^2)), r_tau^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2): the
    weight is infinite at pure noise (tau = 0), so beta is what bounds it there."""
    if tau <= 0.0:
        return float(max_guidance)
    r2 = (1 - tau) ** 2 / (tau ** 2 + (1 - tau) ** 2)
    return float(min(max_guidance, (1 - tau) / (tau * r2))) if r2 > 0 else 0.0


def _check_inpainting(rtc: Inpainting, shape):
    b, h, a = shape
    if tuple(rtc.target.shape) != (b, h, a):
        raise ValueError(f"rtc.target: expected [{b}, {h}, {a}] (batch, horizon, action dim), got {list(rtc.target.shape)}")
    if tuple(rtc.weights.shape) != (b, h):
        raise ValueError(f"rtc.weights: expected [{b}, {h}] (batch, horizon), got {list(rtc.weights.shape)}")


def active_inpainting(rtc: Inpainting | None, shape) -> Inpainting | None:
    """A flow head's `rtc` argument checked against its sampler's [B, H, A] (`shape`), or None when
    there is none or no step is weighted (nothing committed: the plain sampler runs, bitwise)."""
    if rtc is None:
        return None
    _check_inpainting(rtc, shape)
    return rtc if bool((rtc.weights != 0).any()) else None


def guided_euler_sample(dit: FlowDiT, memories, memory_padding, state, noise, rtc: Inpainting, num_steps: int = 10):
    """euler_sample from the same `noise` with real-time chunking guidance; with all weights 0 it
    returns euler_sample's result exactly (no guidance is run)."""
    rtc = active_inpainting(rtc, tuple(noise.shape))
    if rtc is None:
        return euler_sample(dit, memories, memory_padding, state, noise, num_steps)
    device = memories[0].device
    dtype = dit.action_in.weight.dtype
    x = noise.to(device=device, dtype=dtype)
    kv = [(k.detach(), v.detach()) for k, v in dit.memory_kv(memories)]
    state = None if state is None else state.detach()
    target = rtc.target.to(device=device, dtype=dtype)
    weights = rtc.weights.to(device=device, dtype=dtype)[:, :, None]
    dt = 1.0 / num_steps
    for i in range(num_steps):
        t = i * dt
        tau = torch.full((x.shape[0],), t, device=device, dtype=dtype)
        with torch.enable_grad():  # the guidance needs d A1 / d x, also under the server's no_grad
            xg = x.detach().requires_grad_(True)
            v = dit(xg, tau, kv, memory_padding, state)
            clean = xg + (1 - t) * v
            (pull,) = torch.autograd.grad(clean, xg, grad_outputs=(target - clean.detach()) * weights)
        x = x + dt * (v.detach() + guidance_scale(t, rtc.max_guidance) * pull)
    return x.detach()


def reversed_guided_step(velocity, x, t, dt, rtc: Inpainting, steps: int, action_dim: int):
    """One Euler step with real-time chunking guidance in LeRobot's time direction (pi0, SmolVLA: t from
    1 (noise) to 0, tau = 1 - t, the clean estimate x - t v): the previous chunk's remaining actions pull
    the clean estimate's first `action_dim` dims, weighted by rtc.weights. velocity(x) is the head's
    velocity at the time t (a 0-d tensor); dt < 0."""
    a = action_dim
    target = rtc.target.to(x.device, x.dtype)
    weights = rtc.weights.to(x.device, x.dtype)[:, :, None]
    with torch.enable_grad():  # d clean / d x, also under the server's no_grad
        xg = x.detach().requires_grad_(True)
        v = velocity(xg)
        clean = xg - t.to(x.device) * v
        pulled = torch.zeros_like(clean)
        pulled[:, :, :a] = (target - clean[:, :, :a].detach()) * weights
        (pull,) = torch.autograd.grad(clean, xg, grad_outputs=pulled)
    scale = guidance_scale(1.0 - float(t), rtc.max_guidance)
    return (x + dt * v.detach() + (scale / steps) * pull).detach()


def _differ(a, b) -> bool:
    """Two batch sizes that differ; symbolic ones (torch.export's batch axis) are not compared."""
    return isinstance(a, int) and isinstance(b, int) and a != b


def starting_noise(head: Block, noise: torch.Tensor | None, batch, device) -> torch.Tensor:
    """A flow head's predict(noise=...): None draws it (initial_noise, torch's global generator) as
    head.noise_shape(batch) in head.noise_dtype; a given one must be that shape (the batch compared
    only where both are concrete) and is returned as it is."""
    shape = head.noise_shape(batch)
    if noise is None:
        return initial_noise(shape, None, device, head.noise_dtype)
    if noise.dim() != 3 or tuple(noise.shape[1:]) != shape[1:] or _differ(noise.shape[0], shape[0]):
        raise ValueError(f"{head.type_name}: noise must be [batch, horizon, action dim] = {list(shape)}, "
                         f"got {list(noise.shape)}")
    return noise


def default_layer_map(dit_layers: int, context_layers: int) -> list[int]:
    """Spread the DiT layers evenly over the context layers, first to first and last to last."""
    if dit_layers == 1:
        return [context_layers - 1]
    return [round(i * (context_layers - 1) / (dit_layers - 1)) for i in range(dit_layers)]


FLOW_PARAMS = {
    "layers": {"type": "integer", "minimum": 1, "default": 4, "description": "DiT layers"},
    "noise_draws": {"type": "integer", "minimum": 1, "default": 1,
                    "description": "noise samples (and times) per training example"},
    "num_steps": {"type": "integer", "minimum": 1, "default": 10,
                  "description": "Euler steps at inference (predict(num_steps=...) overrides)"},
}


class FlowHead(SamplingHead, Block):
    """Training, sampling and shape probing shared by the flow-matching heads. A subclass sets
    `self.dit` (a FlowDiT) and implements `memories(context, context_mask)` -> (one memory per
    DiT layer, key padding mask)."""

    predict_kwargs = ("noise", "num_steps", "rtc")

    def memories(self, context, context_mask):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, context, context_mask=None, state=None, target=None, mask=None):
        if target is None:
            return self.predict(context, context_mask, state)
        memories, pad = self.memories(context, context_mask)
        return {"loss": flow_matching_loss(self.dit, memories, pad, state, target, mask, self.params["noise_draws"])}

    def noise_shape(self, batch: int) -> tuple:
        """The shape of predict's `noise` for a batch: [batch, horizon, action dim]."""
        return (batch, int(self.horizon), int(self.action_dim))  # batch stays symbolic under torch.export

    @property
    def noise_dtype(self) -> torch.dtype:
        """The dtype the sampler runs in (noise of another dtype is cast to it)."""
        return self.dit.action_in.weight.dtype

    def predict(self, context, context_mask=None, state=None, noise=None, num_steps=None, rtc=None):
        """noise: the starting noise [B, H, A] (module docstring; None: drawn from torch's global
        generator); rtc: an Inpainting (real-time chunking) or None (plain sampling)."""
        memories, pad = self.memories(context, context_mask)
        noise = starting_noise(self, noise, context.shape[0], context.device)
        steps = int(num_steps or self.params["num_steps"])
        if rtc is not None:
            return {"actions": guided_euler_sample(self.dit, memories, pad, state, noise, rtc, steps)}
        return {"actions": euler_sample(self.dit, memories, pad, state, noise, steps)}

    def meta_forward(self, context, context_mask=None, state=None, target=None, mask=None):
        out = self.predict(context, context_mask, state, num_steps=1)
        if target is not None:
            out.update(self.forward(context, context_mask, state, target, mask))
        return out


@register
class FlowMatchingHead(FlowHead):
    type_name = "head.flow_matching"
    description = ("Flow-matching DiT (pi0's flow conventions, not pi0): a DiT over [state; actions] whose layers "
                   "cross-attend to backbone layers; Euler sampling.")
    in_ports = HEAD_IN_PORTS
    out_ports = HEAD_OUT_PORTS
    params_schema = {
        "type": "object",
        "properties": {
            **WIDTH_PARAMS,
            **FLOW_PARAMS,
            "layer_map": {"type": ["array", "null"], "items": {"type": "integer"}, "default": None,
                          "description": "context layer each DiT layer cross-attends to (one entry per DiT layer, "
                                         "negative counts from the end); default spreads them evenly"},
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        num_layers, dim = head_geometry(self)
        n = self.params["layers"]
        layer_map = self.params["layer_map"]
        if layer_map is None:
            layer_map = default_layer_map(n, num_layers)
        elif len(layer_map) != n:
            raise ParamError("layer_map", f"has {len(layer_map)} entries but the DiT has {n} layers (with.layers)")
        self.layer_map = [resolve_layer(i, num_layers, "layer_map") for i in layer_map]
        w = self.params["width"]
        # one projection per DiT layer: different backbone layers live in different spaces
        self.context_proj = nn.ModuleList(ContextProjection(dim, w) for _ in range(n))
        self.dit = FlowDiT(self.horizon, self.action_dim, w, self.params["heads"], n, state_width(self))

    def memories(self, context, context_mask):
        layers = context_layers(context)
        memories = [proj(layers[:, i]) for proj, i in zip(self.context_proj, self.layer_map)]
        return memories, padding_mask(context_mask, layers.shape[2])
