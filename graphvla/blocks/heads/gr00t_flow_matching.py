"""head.gr00t_flow_matching: GR00T N1.5's flow-matching action head as starVLA's QwenGR00T runs it
(starVLA/model/modules/action_model/GR00T_ActionHeader.py FlowmatchingActionHead with its
cross-attention DiT, github.com/starVLA/starVLA at 0ed0aad; starvla/qwen3vl-gr00t and
starvla/qwen25vl-gr00t, fixture-tested in tests/test_starvla_gr00t.py). Submodules carry starVLA's
names, so its `action_model.` keys map onto this block's one for one.

  context   [B, T, D] the VLM's last-layer hidden states (every token), with its attention mask as
            the key padding mask of every cross-attention
  sequence  [state_encoder(state) (one token per state row); future_tokens (learned, `future_tokens`
            of them); action_encoder(x_t, t) + position_embedding]   width W (`width`)
  DiT       `layers` blocks; with `interleave_self_attention` the odd ones self-attend over the
            sequence, the even ones cross-attend to the context. Each block: AdaLayerNorm(W) on the
            time embedding (scale, shift) -> attention (bias, `heads` heads of W / heads) -> + x ->
            LayerNorm(W) -> GELU(tanh) feed-forward (4 W) -> + x; then a time-modulated LayerNorm
            (shift, scale) and Linear(W, `output_dim`)
  decoder   action_decoder: Linear(output_dim, hidden) -> ReLU -> Linear(hidden, A) on the last H
            positions: the velocity
  time      t in [0, 1] (0 = noise, 1 = data), x_t = (1 - t) noise + t actions, velocity
            actions - noise, discretised to floor(t * num_timestep_buckets) for both time encoders
            (the action encoder's sinusoid and the DiT's 256-channel timestep embedding)

Training: the batch is repeated `repeated_diffusion_steps` times (torch's .repeat: row r * B + b is
example b), each row with its own noise and t = (s - b) / s, b ~ Beta(noise_beta_alpha,
noise_beta_beta) clamped at s = noise_s; loss = mean squared velocity error over every row, step and
dimension. forward(noise=, time=) takes those draws ([R B, H, A] and [R B], in that order) instead of
drawing them (the parity test passes starVLA's). Inference: Euler from noise at t = 0 in `num_steps`
steps of 1 / num_steps, t discretised as int(i / num_steps * num_timestep_buckets); `noise`
[B, H, A] is predict's input like the other flow heads'.
Dropout (`dropout`, training only) where starVLA has it: after the attention's output projection,
again on the attention branch with `final_dropout`, inside the feed-forward and after it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, InPort, ParamError, PortError
from ..registry import register
from .common import ACTION_PARAMS, HEAD_OUT_PORTS, TARGET_PORTS, action_shape
from .flow_matching import FlowHead, Inpainting, active_inpainting, guidance_scale, starting_noise
from .noise import SamplingHead

TIME_CHANNELS = 256  # the DiT's timestep projection (diffusers Timesteps(256, flip_sin_to_cos, shift 1))


def timestep_projection(t: torch.Tensor, channels: int = TIME_CHANNELS) -> torch.Tensor:
    """[N] -> [N, channels]: cos then sin of t * 10000^(-k / (channels/2 - 1)), k < channels/2."""
    half = channels // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1)
    angles = t[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def action_time_encoding(t: torch.Tensor, width: int) -> torch.Tensor:
    """[B, T] -> [B, T, width]: sin then cos of t * 10000^(-k / (width/2)), k < width/2."""
    half = width // 2
    exponent = -torch.arange(half, dtype=torch.float, device=t.device) * (torch.log(torch.tensor(10000.0)) / half)
    freqs = t.float().unsqueeze(-1) * exponent.exp()
    return torch.cat([torch.sin(freqs), torch.cos(freqs)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.linear_1 = nn.Linear(TIME_CHANNELS, width)
        self.linear_2 = nn.Linear(width, width)

    def forward(self, t):
        x = timestep_projection(t).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(x)))


class TimestepEncoder(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(width)

    def forward(self, t):
        return self.timestep_embedder(t)


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, then x * (1 + scale) + shift from Linear(SiLU(temb)) (scale first)."""

    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.linear = nn.Linear(width, 2 * width)
        self.norm = nn.LayerNorm(width, eps, elementwise_affine=False)

    def forward(self, x, temb):
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head attention with biased q/k/v/out projections; keys and values from `context`
    (cross-attention, width `context_dim`) or from x itself; `keep` [B, S] True on keys to attend."""

    def __init__(self, width: int, heads: int, context_dim: int | None, dropout: float):
        super().__init__()
        self.heads = heads
        kv = context_dim or width
        self.to_q = nn.Linear(width, width)
        self.to_k = nn.Linear(kv, width)
        self.to_v = nn.Linear(kv, width)
        self.to_out = nn.ModuleList([nn.Linear(width, width), nn.Dropout(dropout)])

    def forward(self, x, context=None, keep=None):
        source = x if context is None else context
        b = x.shape[0]
        q, k, v = (t.view(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(source), self.to_v(source)))
        mask = None if keep is None else keep.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1])
        return self.to_out[1](self.to_out[0](out))


class GELUProjection(nn.Module):
    def __init__(self, width: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(width, inner)

    def forward(self, x):
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, width: int, dropout: float, final_dropout: bool):
        super().__init__()
        layers = [GELUProjection(width, 4 * width), nn.Dropout(dropout), nn.Linear(4 * width, width)]
        if final_dropout:
            layers.append(nn.Dropout(dropout))
        self.net = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class DiTBlock(nn.Module):
    def __init__(self, width: int, heads: int, context_dim: int | None, dropout: float, final_dropout: bool):
        super().__init__()
        self.norm1 = AdaLayerNorm(width)
        self.attn1 = Attention(width, heads, context_dim, dropout)
        self.norm3 = nn.LayerNorm(width, 1e-5, elementwise_affine=False)
        self.ff = FeedForward(width, dropout, final_dropout)
        self.final_dropout = nn.Dropout(dropout) if final_dropout else None
        self.pos_embed = None  # positions added after norm1 (head.layerwise_discrete_diffusion's blocks set it)

    def forward(self, x, temb, context=None, keep=None):
        h = self.norm1(x, temb)
        if self.pos_embed is not None:
            h = self.pos_embed(h)
        out = self.attn1(h, context, keep)
        if self.final_dropout is not None:
            out = self.final_dropout(out)
        x = out + x
        return self.ff(self.norm3(x)) + x


class CrossAttentionDiT(nn.Module):
    def __init__(self, width, heads, layers, output_dim, context_dim, interleave, dropout, final_dropout):
        super().__init__()
        self.interleave = interleave
        self.timestep_encoder = TimestepEncoder(width)
        self.transformer_blocks = nn.ModuleList(
            DiTBlock(width, heads, None if self._self_attends(i) else context_dim, dropout, final_dropout)
            for i in range(layers))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.proj_out_1 = nn.Linear(width, 2 * width)
        self.proj_out_2 = nn.Linear(width, output_dim)

    def _self_attends(self, i: int) -> bool:
        return self.interleave and i % 2 == 1

    def forward(self, x, context, keep, timestep):
        temb = self.timestep_encoder(timestep)
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, temb) if self._self_attends(i) else block(x, temb, context, keep)
        shift, scale = self.proj_out_1(F.silu(temb)).chunk(2, dim=1)
        return self.proj_out_2(self.norm_out(x) * (1 + scale[:, None]) + shift[:, None])


class MLP(nn.Module):
    def __init__(self, inp: int, hidden: int, out: int):
        super().__init__()
        self.layer1 = nn.Linear(inp, hidden)
        self.layer2 = nn.Linear(hidden, out)

    def forward(self, x):
        return self.layer2(F.relu(self.layer1(x)))


class ActionEncoder(nn.Module):
    """(x_t [B, H, A], discretised t [B]) -> [B, H, W]: W3(swish(W2([W1 x; sinusoid(t)])))."""

    def __init__(self, action_dim: int, width: int):
        super().__init__()
        self.width = width
        self.layer1 = nn.Linear(action_dim, width)
        self.layer2 = nn.Linear(2 * width, width)
        self.layer3 = nn.Linear(width, width)

    def forward(self, actions, t):
        a = self.layer1(actions)
        tau = action_time_encoding(t[:, None].expand(-1, actions.shape[1]), self.width).to(a.dtype)
        return self.layer3(F.silu(self.layer2(torch.cat([a, tau], dim=-1))))


# the parameters both starVLA flow heads (StarVLAFlowHead's subclasses) take, as three runs so that each
# head's schema keeps its order
STARVLA_TOKEN_PARAMS = {
    "future_tokens": {"type": "integer", "minimum": 0, "default": 32, "description": "learned query tokens"},
    "add_pos_embed": {"type": "boolean", "default": True, "description": "learned positions on the action tokens"},
    "max_seq_len": {"type": "integer", "minimum": 1, "default": 1024, "description": "rows of the position table"},
}
STARVLA_DROPOUT_PARAMS = {
    "dropout": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2},
    "final_dropout": {"type": "boolean", "default": True},
}
STARVLA_TIME_PARAMS = {
    "noise_beta_alpha": {"type": "number", "exclusiveMinimum": 0, "default": 1.5},
    "noise_beta_beta": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
    "noise_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.999},
    "num_timestep_buckets": {"type": "integer", "minimum": 1, "default": 1000},
    "num_steps": {"type": "integer", "minimum": 1, "default": 4,
                  "description": "Euler steps at inference (predict(num_steps=...) overrides)"},
}


class StarVLAFlowHead(SamplingHead, Block):
    """What starVLA's two flow-matching action heads share (GR00T_ActionHeader.py and
    LayerwiseFM_ActionHeader.py: the same tokens, training draws, loss and Euler sampler): the
    state-encoder width, the token modules (built after the subclass's `model`, in starVLA's order,
    under its names), the velocity network around `model`, the repeated-draw loss and the sampler.
    A subclass sets self.model (called as model(tokens, context, keep, buckets)) and sample_time; where
    its context is not one tensor it overrides _context (what the DiT reads) and _repeat_context."""

    def _state_dim(self) -> int:
        p = self.params
        if p["add_pos_embed"] and self.horizon > p["max_seq_len"]:
            raise ParamError("max_seq_len", f"{p['max_seq_len']} positions for a chunk of {self.horizon} steps")
        info = self.port_info.get("state")
        wired = int(info.shape[-1]) if info is not None else None
        state_dim = p.get("state_dim")
        if state_dim is None:
            state_dim = wired or 0
        elif wired is not None and wired != state_dim:
            raise ParamError("state_dim", f"with.state_dim={state_dim} but {info.source} has {wired} values per row")
        if wired is not None and state_dim == 0:
            raise ParamError("state_dim", f"is 0 but {info.source} is wired to the state port")
        return state_dim

    def _build_tokens(self, width: int, decoder_in: int):
        """state_encoder, action_encoder, action_decoder (decoder_in -> hidden -> A), future_tokens and
        position_embedding, created in this order (the parameter draws of starVLA's __init__)."""
        p = self.params
        self.state_encoder = MLP(self.state_dim, p["hidden"], width) if self.state_dim else None
        self.action_encoder = ActionEncoder(self.action_dim, width)
        self.action_decoder = MLP(decoder_in, p["hidden"], self.action_dim)
        self.future_tokens = nn.Embedding(p["future_tokens"], width)
        nn.init.normal_(self.future_tokens.weight, mean=0.0, std=0.02)
        if p["add_pos_embed"]:
            self.position_embedding = nn.Embedding(p["max_seq_len"], width)
            nn.init.normal_(self.position_embedding.weight, mean=0.0, std=0.02)

    def _context(self, context):
        """What the DiT reads of the context port (GR00T: the hidden states themselves)."""
        return context

    def _repeat_context(self, context, r: int):
        """The DiT's context for the batch repeated r times (torch's .repeat)."""
        return self._context(context).repeat(r, 1, 1)

    # --- the velocity network ------------------------------------------------------------------

    def velocity(self, x, buckets, context, keep, state_features):
        """x [N, H, A] at discretised times `buckets` [N] -> the predicted velocity [N, H, A]."""
        h = self.action_encoder(x, buckets)
        if self.params["add_pos_embed"]:
            h = h + self.position_embedding(torch.arange(h.shape[1], device=h.device))[None]
        parts = [self.future_tokens.weight[None].expand(x.shape[0], -1, -1), h]
        if state_features is not None:
            parts.insert(0, state_features)
        out = self.model(torch.cat(parts, dim=1), context, keep, buckets)
        return self.action_decoder(out)[:, -x.shape[1]:]

    def _state_features(self, state):
        if state is None:
            return None
        if self.state_encoder is None:
            raise PortError("state", "a state was given but the head has no state encoder (with.state_dim 0)")
        return self.state_encoder(state[:, None] if state.dim() == 2 else state)

    def forward(self, context, context_mask=None, state=None, target=None, mask=None, noise=None, time=None):
        if target is None:
            return self.predict(context, context_mask, state)
        r = self.params["repeated_diffusion_steps"]
        actions = target.to(context.dtype).repeat(r, 1, 1)
        n = actions.shape[0]
        if noise is None:
            noise = (torch.empty if actions.device.type == "meta" else torch.randn)(
                actions.shape, device=actions.device, dtype=actions.dtype)
        elif tuple(noise.shape) != tuple(actions.shape):
            raise ValueError(f"{self.type_name}: training noise must be [repeats x batch, horizon, action dim] = "
                             f"{list(actions.shape)}, got {list(noise.shape)}")
        if time is None:
            time = self.sample_time(n, actions.device, actions.dtype)
        elif tuple(time.shape) != (n,):
            raise ValueError(f"{self.type_name}: training times must be [repeats x batch] = [{n}], got {list(time.shape)}")
        t = time.to(actions.dtype)[:, None, None]
        x = (1 - t) * noise + t * actions
        buckets = (t[:, 0, 0] * self.params["num_timestep_buckets"]).long()
        repeated = self._repeat_context(context, r)
        keep = None if context_mask is None else context_mask.bool().repeat(r, 1)
        if state is not None:
            state = state.to(context.dtype).repeat(r, *[1] * (state.dim() - 1))
        v = self.velocity(x, buckets, repeated, keep, self._state_features(state))
        err = (v - (actions - noise)) ** 2
        if mask is None:
            return {"loss": err.mean()}
        m = mask.to(err.dtype).repeat(r, 1)[:, :, None].expand_as(err)
        return {"loss": (err * m).sum() / m.sum().clamp(min=1)}

    noise_shape = FlowHead.noise_shape  # [batch, horizon, action dim], as head.flow_matching's

    @property
    def noise_dtype(self) -> torch.dtype:
        return self.action_encoder.layer1.weight.dtype

    def _sample(self, context, context_mask, state, noise, num_steps, rtc: Inpainting | None = None):
        """Euler from `noise` at t = 0 in num_steps steps; with rtc each step is pulled towards the
        previous chunk as head.flow_matching does (all-zero weights: exactly the plain sampler)."""
        noise = starting_noise(self, noise, context.shape[0], context.device)
        steps = int(num_steps or self.params["num_steps"])
        x = noise.to(device=context.device, dtype=context.dtype)
        memories = self._context(context)
        keep = None if context_mask is None else context_mask.bool()
        state_features = self._state_features(None if state is None else state.to(context.dtype))
        rtc = active_inpainting(rtc, tuple(x.shape))
        dt = 1.0 / steps
        for i in range(steps):
            bucket = int(i / float(steps) * self.params["num_timestep_buckets"])
            buckets = torch.full((x.shape[0],), bucket, device=x.device, dtype=torch.long)
            if rtc is None:
                x = x + dt * self.velocity(x, buckets, memories, keep, state_features)
                continue
            t = i / float(steps)
            target = rtc.target.to(device=x.device, dtype=x.dtype)
            weights = rtc.weights.to(device=x.device, dtype=x.dtype)[:, :, None]
            with torch.enable_grad():  # the guidance needs d A1 / d x, also under the server's no_grad
                xg = x.detach().requires_grad_(True)
                detached = ([m.detach() for m in memories] if isinstance(memories, (list, tuple))
                            else memories.detach())
                v = self.velocity(xg, buckets, detached, keep,
                                  None if state_features is None else state_features.detach())
                clean = xg + (1 - t) * v
                (pull,) = torch.autograd.grad(clean, xg, grad_outputs=(target - clean.detach()) * weights)
            x = x.detach() + dt * (v.detach() + guidance_scale(t, rtc.max_guidance) * pull)
        return {"actions": x}

    meta_forward = FlowHead.meta_forward  # a one-step predict, then the loss where a target is given


@register
class GR00TFlowMatchingHead(StarVLAFlowHead):
    type_name = "head.gr00t_flow_matching"
    description = ("GR00T N1.5's flow-matching head as starVLA's QwenGR00T has it: a cross-attention DiT over "
                   "[state; future tokens; noisy actions] reading every VLM token; Beta time sampling, repeated "
                   "noise draws, Euler sampling.")
    in_ports = {
        "context": InPort("hidden", ndim=3, doc="[B, T, D] the VLM's last-layer hidden states"),
        "context_mask": InPort("mask", optional=True, ndim=2, doc="[B, T], True on real tokens"),
        "state": InPort("state", optional=True, ndim=(2, 3), doc="[B, S] or [B, N, S]: one token per row"),
        **TARGET_PORTS,
    }
    out_ports = HEAD_OUT_PORTS
    params_schema = {
        "type": "object",
        "properties": {
            "width": {"type": "integer", "minimum": 2, "default": 768,
                      "description": "DiT width = action/state embedding width (starVLA DiT-B: 768, DiT-L: 1536)"},
            "heads": {"type": "integer", "minimum": 1, "default": 12, "description": "attention heads (DiT-B: 12, DiT-L: 32)"},
            "layers": {"type": "integer", "minimum": 1, "default": 16, "description": "DiT blocks"},
            "output_dim": {"type": "integer", "minimum": 1, "default": 1024, "description": "DiT output width"},
            "hidden": {"type": "integer", "minimum": 1, "default": 1024,
                       "description": "hidden width of the state encoder and the action decoder"},
            "state_dim": {"type": "integer", "minimum": 0,
                          "description": "state encoder input (0: none); default the state port's width, else 0"},
            **STARVLA_TOKEN_PARAMS,
            "interleave_self_attention": {"type": "boolean", "default": True,
                                          "description": "odd DiT blocks self-attend instead of cross-attending"},
            **STARVLA_DROPOUT_PARAMS,
            "repeated_diffusion_steps": {"type": "integer", "minimum": 1, "default": 8,
                                         "description": "noise draws per training example"},
            **STARVLA_TIME_PARAMS,
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }
    predict_kwargs = ("noise", "num_steps")

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("context", 3)
        self.horizon, self.action_dim = action_shape(self)
        p = self.params
        w, heads = p["width"], p["heads"]
        if w % heads:
            raise ParamError("heads", f"width {w} is not divisible by heads {heads}")
        self.state_dim = self._state_dim()
        context_dim = inputs["context"].dim
        self.model = CrossAttentionDiT(w, heads, p["layers"], p["output_dim"], context_dim,
                                       p["interleave_self_attention"], p["dropout"], p["final_dropout"])
        self._build_tokens(w, p["output_dim"])

    def sample_time(self, n: int, device, dtype) -> torch.Tensor:
        """t = (s - b) / s, b ~ Beta(alpha, beta) clamped at s (starVLA's sample_time)."""
        p = self.params
        if device.type == "meta":
            return torch.empty(n, device=device, dtype=dtype)
        beta = torch.distributions.Beta(torch.tensor(float(p["noise_beta_alpha"])), torch.tensor(float(p["noise_beta_beta"])))
        b = beta.sample([n]).to(device, dtype=dtype).clamp(max=p["noise_s"])
        return (p["noise_s"] - b) / p["noise_s"]

    def predict(self, context, context_mask=None, state=None, noise=None, num_steps=None):
        return self._sample(context, context_mask, state, noise, num_steps)
