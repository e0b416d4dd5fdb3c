"""`head.act`: the Action Chunking Transformer (Zhao et al. 2023) as LeRobot's ACTPolicy builds it
(lerobot.policies.act, checked against LeRobot 0.3.2's own code: tests/test_lerobot_act.py).

Pieces, facts of that model:
- a CVAE encoder (training only): a transformer encoder over [CLS, state, the action chunk] with
  fixed 1-d sinusoidal positions, padded steps masked out of its attention; the CLS output gives
  the latent's mean and log variance (`latent_dim` each); the latent is mean + exp(logvar / 2) * eps.
  At inference (and without `vae`) the latent is zeros;
- a transformer encoder over [latent, state, env_state, camera tokens]: the first (1-d) tokens have
  learned positions, the camera tokens (every view's layer4 map through one 1x1 conv, row-major) a
  2-d sinusoidal position (half the width for y, half for x, coordinates scaled to (0, 2 pi]);
  positions are added to queries and keys in every layer, never to values;
- a transformer decoder whose queries start at zero with learned positions (one per chunk step),
  cross-attending to the encoder's output plus its positions; a final LayerNorm and a linear to the
  action width;
- post-norm layers (pre_norm: false, LeRobot's default) or pre-norm (then the encoders end with a
  LayerNorm too);
- loss: L1 between the chunk and the target with padded steps zeroed, mean over every element
  (padded ones included, as LeRobot divides), plus kl_weight x the KL divergence to N(0, I), summed
  over the latent and averaged over the batch.

The CVAE's eps is the `noise` input ([B, latent_dim]) when wired (a parity test feeds LeRobot's),
else drawn from torch's generator in forward.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, InPort, OutPort, ParamError, PortError
from ..registry import register
from .common import ACTION_PARAMS, action_shape

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def sinusoid_table(positions: int, width: int) -> torch.Tensor:
    """[positions, width] fixed 1-d positions: dim 2i is sin(p / 10000^(2i/width)), 2i+1 its cos."""
    p = torch.arange(positions, dtype=torch.float64)[:, None]
    j = torch.arange(width, dtype=torch.float64)
    angle = p / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / width)
    angle[:, 0::2], angle[:, 1::2] = angle[:, 0::2].sin(), angle[:, 1::2].cos()
    return angle.float()


def sinusoid_grid(h: int, w: int, width: int, device=None) -> torch.Tensor:
    """[h*w, width] 2-d positions of a feature map, row-major: the first half encodes the row, the
    second the column, each coordinate k (1-based) scaled to k / (n + 1e-6) * 2 pi."""
    half = width // 2
    freq = 10000.0 ** (2 * torch.div(torch.arange(half, dtype=torch.float32, device=device), 2, rounding_mode="floor") / half)

    def encode(n):
        c = torch.arange(1, n + 1, dtype=torch.float32, device=device)
        c = c / (c[-1:] + 1e-6) * (2 * math.pi)
        a = c[:, None] / freq  # [n, half]
        return torch.stack((a[:, 0::2].sin(), a[:, 1::2].cos()), dim=-1).flatten(1)

    y, x = encode(h), encode(w)
    return torch.cat((y[:, None, :].expand(h, w, half), x[None, :, :].expand(h, w, half)), dim=-1).reshape(h * w, width)


class EncoderLayer(nn.Module):
    def __init__(self, width, heads, ffn, dropout, activation, pre_norm):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(width, ffn), nn.Linear(ffn, width)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.act, self.pre_norm = ACTIVATIONS[activation], pre_norm

    def forward(self, x, pos, key_padding=None, rows=None):
        """`rows`: compute only the first `rows` tokens' outputs (still attending to every token): the
        CVAE's last layer, of which only the CLS token is read, does 1 row of queries and FFN, not all."""
        skip = x if rows is None else x[:, :rows]
        if self.pre_norm:
            x = self.norm1(x)
        k = x + pos
        q = k if rows is None else k[:, :rows]
        # need_weights=True: torch's explicit attention (not the fused kernel), LeRobot's path: the CVAE's mu
        # and log variance come out bit-equal to LeRobot's, so the KL (weighted 10x) does not drift
        x = skip + self.dropout1(self.self_attn(q, k, x, key_padding_mask=key_padding, need_weights=True)[0])
        if self.pre_norm:
            skip, x = x, self.norm2(x)
        else:
            x = skip = self.norm1(x)
        x = skip + self.dropout2(self.linear2(self.dropout(self.act(self.linear1(x)))))
        return x if self.pre_norm else self.norm2(x)


class DecoderLayer(nn.Module):
    def __init__(self, width, heads, ffn, dropout, activation, pre_norm):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(width, ffn), nn.Linear(ffn, width)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.act, self.pre_norm = ACTIVATIONS[activation], pre_norm

    def forward(self, x, memory, query_pos, memory_pos):
        skip = x
        if self.pre_norm:
            x = self.norm1(x)
        q = x + query_pos
        x = skip + self.dropout1(self.self_attn(q, q, x, need_weights=False)[0])
        if self.pre_norm:
            skip, x = x, self.norm2(x)
        else:
            x = skip = self.norm1(x)
        x = self.cross_attn(x + query_pos, memory + memory_pos, memory, need_weights=False)[0]
        x = skip + self.dropout2(x)
        if self.pre_norm:
            skip, x = x, self.norm3(x)
        else:
            x = skip = self.norm2(x)
        x = skip + self.dropout3(self.linear2(self.dropout(self.act(self.linear1(x)))))
        return x if self.pre_norm else self.norm3(x)


class Stack(nn.Module):
    """Layers, then a final LayerNorm (`norm`) or none."""

    def __init__(self, layer, n, width, norm):
        super().__init__()
        self.layers = nn.ModuleList(layer() for _ in range(n))
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()


def _width_of(info, port) -> int:
    if info.shape is None or len(info.shape) != 2:
        raise PortError(port, f"expects [B, dim], got shape {info.shape}")
    return int(info.shape[1])


@register
class ACTHead(Block):
    type_name = "head.act"
    description = ("LeRobot's ACT: CVAE encoder over state + action chunk, transformer encoder over latent, state and "
                   "camera feature maps (2-d sine positions), decoder with learned step queries; L1 + kl_weight x KL.")
    in_ports = {
        "features": InPort("hidden", optional=True, ndim=5, doc="camera feature maps [B, V, C, h, w] (encoder.resnet)"),
        "state": InPort("state", optional=True, ndim=2, doc="robot state [B, S] (normalized)"),
        "env_state": InPort(("state", "hidden"), optional=True, ndim=2,
                             doc="environment state [B, E] (normalized), or any [B, E] vector (e.g. a pooled "
                                 "instruction): one more encoder token"),
        "target": InPort("action", optional=True, target=True, doc="action chunk [B, H, A] (normalized)"),
        "mask": InPort("mask", optional=True, target=True, doc="[B, H] True on real steps (False: padding)"),
        "noise": InPort(("state", "latent", "any"), optional=True, target=True,
                        doc="the CVAE's eps [B, latent_dim]; drawn when absent"),
    }
    out_ports = {
        "actions": OutPort("action", doc="[B, H, A]"),
        "loss": OutPort("loss", train_only=True, doc="l1_loss + kl_weight * kld_loss"),
        "l1_loss": OutPort("loss", train_only=True),
        "kld_loss": OutPort("loss", train_only=True),
    }
    params_schema = {
        "type": "object",
        "properties": {
            "width": {"type": "integer", "minimum": 8, "default": 512, "description": "dim_model"},
            "heads": {"type": "integer", "minimum": 1, "default": 8, "description": "n_heads"},
            "ffn": {"type": "integer", "minimum": 1, "default": 3200, "description": "dim_feedforward"},
            "activation": {"enum": sorted(ACTIVATIONS), "default": "relu", "description": "feedforward_activation"},
            "encoder_layers": {"type": "integer", "minimum": 1, "default": 4, "description": "n_encoder_layers"},
            "decoder_layers": {"type": "integer", "minimum": 1, "default": 1, "description": "n_decoder_layers"},
            "vae": {"type": "boolean", "default": True, "description": "use_vae: the CVAE objective"},
            "latent_dim": {"type": "integer", "minimum": 1, "default": 32},
            "vae_layers": {"type": "integer", "minimum": 1, "default": 4, "description": "n_vae_encoder_layers"},
            "pre_norm": {"type": "boolean", "default": False},
            "dropout": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.1},
            "kl_weight": {"type": "number", "minimum": 0, "default": 10.0},
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        p = self.params
        d = p["width"]
        if d % p["heads"] or d % 4:
            raise ParamError("width", f"width {d} must be divisible by heads ({p['heads']}) and by 4 (2-d positions)")
        self.horizon, self.action_dim = action_shape(self)
        self.state_dim = _width_of(inputs["state"], "state") if "state" in inputs else 0
        self.env_dim = _width_of(inputs["env_state"], "env_state") if "env_state" in inputs else 0
        feat = inputs.get("features")
        if feat is None and not self.env_dim:
            raise PortError("features", "ACT needs camera features (features) and/or an environment state (env_state)")
        layer = dict(width=d, heads=p["heads"], ffn=p["ffn"], dropout=p["dropout"], activation=p["activation"],
                     pre_norm=p["pre_norm"])
        if p["vae"]:
            self.vae_cls = nn.Parameter(torch.zeros(1, d))
            self.vae_state_in = nn.Linear(self.state_dim, d) if self.state_dim else None
            self.vae_action_in = nn.Linear(self.action_dim, d)
            self.vae_encoder = Stack(lambda: EncoderLayer(**layer), p["vae_layers"], d, p["pre_norm"])
            self.vae_to_latent = nn.Linear(d, 2 * p["latent_dim"])
            n = 1 + (1 if self.state_dim else 0) + self.horizon
            self.register_buffer("vae_pos", sinusoid_table(n, d)[None], persistent=False)
        self.encoder = Stack(lambda: EncoderLayer(**layer), p["encoder_layers"], d, p["pre_norm"])
        self.decoder = Stack(lambda: DecoderLayer(**layer), p["decoder_layers"], d, True)
        self.latent_in = nn.Linear(p["latent_dim"], d)
        self.state_in = nn.Linear(self.state_dim, d) if self.state_dim else None
        self.env_in = nn.Linear(self.env_dim, d) if self.env_dim else None
        self.image_in = None
        if feat is not None:
            if feat.shape is None or len(feat.shape) != 5:
                raise PortError("features", f"expects feature maps [B, V, C, h, w], got {feat.shape}")
            self.image_in = nn.Conv2d(int(feat.shape[2]), d, 1)
        self.token_pos = nn.Parameter(torch.zeros(1 + bool(self.state_dim) + bool(self.env_dim), d))
        self.query_pos = nn.Parameter(torch.zeros(self.horizon, d))
        self.action_out = nn.Linear(d, self.action_dim)
        for module in (self.encoder, self.decoder):  # LeRobot's init (a checkpoint replaces it)
            for w in module.parameters():
                if w.dim() > 1:
                    nn.init.xavier_uniform_(w)
        nn.init.normal_(self.token_pos)
        nn.init.normal_(self.query_pos)
        if p["vae"]:
            nn.init.normal_(self.vae_cls)

    # the CVAE encoder ---------------------------------------------------------------------------
    def latent(self, state, target, mask, noise):
        """(latent sample, mu, log variance) from the target chunk (training)."""
        b = target.shape[0]
        tokens = [self.vae_cls.expand(b, 1, -1)]
        if self.vae_state_in is not None:
            tokens.append(self.vae_state_in(state)[:, None])
        tokens.append(self.vae_action_in(target))
        x = torch.cat(tokens, dim=1)
        padding = None
        if mask is not None:
            if tuple(mask.shape) != (b, self.horizon):
                raise PortError("mask", f"expects [B, {self.horizon}] (True on real steps), got {list(mask.shape)}")
            padding = torch.cat([mask.new_zeros(b, x.shape[1] - self.horizon, dtype=torch.bool), ~mask.bool()], dim=1)
        pos = self.vae_pos.to(x.dtype)
        last = len(self.vae_encoder.layers) - 1
        for i, layer in enumerate(self.vae_encoder.layers):
            x = layer(x, pos, padding, rows=1 if i == last else None)  # only CLS is read after the last layer
        stats = self.vae_to_latent(self.vae_encoder.norm(x)[:, 0])
        mu, logvar = stats.chunk(2, dim=-1)
        if noise is None:
            noise = torch.randn_like(mu)
        elif tuple(noise.shape) != tuple(mu.shape):
            raise PortError("noise", f"expects [B, {mu.shape[1]}] (the CVAE's eps), got {list(noise.shape)}")
        return mu + (logvar / 2).exp() * noise.to(mu.dtype), mu, logvar

    # the transformer ----------------------------------------------------------------------------
    def decode(self, latent, state, env_state, features):
        b = latent.shape[0]
        tokens = [self.latent_in(latent)[:, None]]
        if self.state_in is not None:
            tokens.append(self.state_in(state)[:, None])
        if self.env_in is not None:
            tokens.append(self.env_in(env_state)[:, None])
        pos = [self.token_pos.expand(b, -1, -1)]
        if self.image_in is not None:
            _, v, c, h, w = features.shape
            maps = self.image_in(features.reshape(b * v, c, h, w))  # [B*V, D, h, w]
            tokens.append(maps.flatten(2).transpose(1, 2).reshape(b, v * h * w, -1))
            grid = sinusoid_grid(h, w, maps.shape[1], device=maps.device).to(maps.dtype)
            pos.append(grid.repeat(v, 1)[None].expand(b, -1, -1))
        x, pos = torch.cat(tokens, dim=1), torch.cat(pos, dim=1)
        for layer in self.encoder.layers:
            x = layer(x, pos)
        memory = self.encoder.norm(x)
        q = torch.zeros(b, self.horizon, memory.shape[-1], dtype=memory.dtype, device=memory.device)
        query_pos = self.query_pos[None].to(memory.dtype)
        for layer in self.decoder.layers:
            q = layer(q, memory, query_pos, pos)
        return self.action_out(self.decoder.norm(q))

    def _check(self, state, features):
        if self.state_in is not None and state is None:
            raise PortError("state", "the graph wires a state into ACT but the batch has none")
        if self.image_in is not None and features is None:
            raise PortError("features", "the graph wires camera features into ACT but the batch has none")

    def forward(self, features=None, state=None, env_state=None, target=None, mask=None, noise=None):
        self._check(state, features)
        ref = features if features is not None else env_state
        b = ref.shape[0]
        mu = logvar = None
        if target is not None and self.params["vae"]:
            latent, mu, logvar = self.latent(state, target, mask, noise)
        else:
            latent = torch.zeros(b, self.params["latent_dim"], dtype=self.latent_in.weight.dtype, device=ref.device)
        actions = self.decode(latent, state, env_state, features)
        out = {"actions": actions}
        if target is not None:
            err = (actions - target).abs()
            if mask is not None:
                err = err * mask.to(err.dtype)[..., None]
            out["l1_loss"] = err.mean()
            if mu is not None:
                out["kld_loss"] = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()
            else:
                out["kld_loss"] = actions.new_zeros(())
            out["loss"] = out["l1_loss"] + self.params["kl_weight"] * out["kld_loss"]
        return out

    def predict(self, features=None, state=None, env_state=None):
        return {"actions": self.forward(features, state, env_state)["actions"]}
