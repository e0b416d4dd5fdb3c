"""Pieces the action heads share: their ports, the action chunk's shape and the L1 loss, reading
the context (one layer or several), the state's width and token, and the attention layers (plain,
cross-attending, adaLN-conditioned)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, InPort, OutPort, ParamError, PortError
from ...processors.fast import MaskShapeError, hold_last_valid as _hold_last_valid


def action_shape(block: Block, target_port="target"):
    """(horizon, action_dim) from the target port, with `with:` values as fallback/check."""
    info = block.port_info.get(target_port)
    h, a = block.params.get("horizon"), block.params.get("action_dim")
    if info is not None:
        if info.shape is None or len(info.shape) != 3:
            raise PortError(target_port, f"expects an action chunk [B, horizon, dim], got {info.shape}")
        th, ta = int(info.shape[1]), int(info.shape[2])
        if h is not None and h != th:
            raise ParamError("horizon", f"with.horizon={h} but {info.source} has horizon {th}")
        if a is not None and a != ta:
            raise ParamError("action_dim", f"with.action_dim={a} but {info.source} has dim {ta}")
        return th, ta
    if h is None or a is None:
        raise PortError(target_port, "not wired, so with.horizon and with.action_dim are required")
    return h, a


def masked_l1(pred, target, mask=None):
    err = (pred - target).abs()
    if mask is None:
        return err.mean()
    m = mask.to(err.dtype)
    while m.dim() < err.dim():
        m = m.unsqueeze(-1)
    m = m.expand_as(err)
    return (err * m).sum() / m.sum().clamp(min=1)


def hold_last_valid(actions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """processors/fast.py hold_last_valid (FAST's steps pad chunks with it); a mask that does not fit
    the chunk is a PortError naming `mask`."""
    try:
        return _hold_last_valid(actions, mask)
    except MaskShapeError as e:
        raise PortError(e.port, str(e)) from None


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, T, D] -> [B, D]: the mean over the tokens where mask [B, T] is True, so a sample's
    result does not depend on how far the batch padded it (x.mean(1) without a mask)."""
    if mask is None:
        return x.mean(dim=1)
    if mask.dim() != 2 or tuple(mask.shape) != tuple(x.shape[:2]):
        raise PortError("context_mask", f"expects [B, {x.shape[1]}] to match the context tokens, got {list(mask.shape)}")
    m = mask.bool().unsqueeze(-1)
    # masked_fill, not a product: padding may hold anything, even inf
    return x.masked_fill(~m, 0).sum(dim=1) / m.sum(dim=1).clamp(min=1).to(x.dtype)


ACTION_PARAMS = {
    "horizon": {"type": "integer", "minimum": 1, "description": "inferred from the target port when wired"},
    "action_dim": {"type": "integer", "minimum": 1, "description": "inferred from the target port when wired"},
}


# The training ports of every action head that reads an action chunk (and its valid steps).
TARGET_PORTS = {
    "target": InPort("action", optional=True, target=True, doc="action chunk [B, H, A]"),
    "mask": InPort("mask", optional=True, target=True, doc="[B, H] valid action steps"),
}
# Every action head has these ports, so swapping heads is one line of YAML.
HEAD_IN_PORTS = {
    "context": InPort(("hidden", "layers", "latent"), ndim=(2, 3, 4),
                      doc="[B, T, D] tokens, [B, L, T, D] hidden states of L backbone layers, or [B, D]"),
    "context_mask": InPort("mask", optional=True, ndim=2, doc="[B, T], True on real tokens"),
    "state": InPort("state", optional=True, doc="[B, D] or [B, history, D]"),
    **TARGET_PORTS,
}
HEAD_OUT_PORTS = {"actions": OutPort("action", doc="[B, H, A]"), "loss": OutPort("loss", train_only=True)}

WIDTH_PARAMS = {
    "width": {"type": "integer", "minimum": 8, "default": 256, "description": "hidden width of the head"},
    "heads": {"type": "integer", "minimum": 1, "default": 4, "description": "attention heads"},
}


def context_geometry(block: Block) -> tuple[int, int]:
    """(number of context layers, context width) from the wired `context` port."""
    info = block.port_info["context"]
    block.expect_ndim("context", (2, 3, 4))
    return (int(info.shape[1]) if len(info.shape) == 4 else 1), int(info.shape[-1])


def context_layers(context: torch.Tensor) -> torch.Tensor:
    """Any accepted context as [B, L, T, D]."""
    if context.dim() == 2:
        return context[:, None, None]
    if context.dim() == 3:
        return context[:, None]
    return context


def resolve_layer(index: int | None, num_layers: int, key: str = "layer") -> int:
    """A (possibly negative) layer index checked against the context; None is the last layer."""
    if index is None:
        return num_layers - 1
    if not -num_layers <= index < num_layers:
        raise ParamError(key, f"layer {index} is out of range: the context has {num_layers} layer(s)")
    return index % num_layers


def padding_mask(context_mask: torch.Tensor | None, tokens: int) -> torch.Tensor | None:
    """nn.MultiheadAttention wants True on the positions to *ignore*."""
    if context_mask is None:
        return None
    if context_mask.dim() != 2 or context_mask.shape[1] != tokens:
        raise PortError("context_mask", f"expects [B, {tokens}] to match the context tokens, got {list(context_mask.shape)}")
    return ~context_mask.bool()


def head_geometry(block: Block) -> tuple[int, int]:
    """The preamble of every attention head: checks width/heads, sets `horizon` and `action_dim`
    from the target port, and returns (number of context layers, context width)."""
    check_width(block)
    block.horizon, block.action_dim = action_shape(block)
    return context_geometry(block)


def read_layer(block: Block) -> tuple[int, int]:
    """head_geometry for a head that reads one layer of its context (`with.layer`): returns
    (that layer's index, context width)."""
    num_layers, dim = head_geometry(block)
    return resolve_layer(block.params["layer"], num_layers), dim


def layer_param(description: str) -> dict:
    """The `with.layer` entry of a head that reads one layer of a [B, L, T, D] context."""
    return {"type": ["integer", "null"], "default": None, "description": description}


def check_width(block: Block):
    w, h = block.params["width"], block.params["heads"]
    if w % h:
        raise ParamError("heads", f"width {w} is not divisible by heads {h}")


def state_width(block: Block) -> int:
    """Width of the wired `state` port flattened per sample ([B, D] -> D, [B, history, D] -> history*D);
    0 when it is not wired."""
    info = block.port_info.get("state")
    if info is None:
        return 0
    n = 1
    for d in info.shape[1:]:
        n *= int(d)
    return n


class StateToken(nn.Module):
    """Flattened state (with history) -> one token of the head's width."""

    def __init__(self, state_dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim, width), nn.GELU(), nn.Linear(width, width))

    def forward(self, state):
        return self.net(state.flatten(1).to(self.net[0].weight.dtype)).unsqueeze(1)


class ContextProjection(nn.Module):
    """LayerNorm + Linear from the backbone width to the head width."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, width)

    def forward(self, x):
        return self.proj(self.norm(x.to(self.proj.weight.dtype)))


class FeedForward(nn.Sequential):
    def __init__(self, width: int, mult: int = 4):
        super().__init__(nn.Linear(width, mult * width), nn.GELU(approximate="tanh"), nn.Linear(mult * width, width))


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """[B] times in [0, 1] -> [B, dim] sin/cos features (periods up to `max_period` so that small
    differences of t in [0, 1] are still resolved)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None] * 2 * math.pi
    out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(out, (0, dim - 2 * half))


class CrossAttention(nn.Module):
    """Multi-head attention from a sequence to a memory whose keys and values are computed once
    (`keys_values`) and reused, e.g. across all Euler steps of a flow-matching sampler."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.memory_norm = nn.LayerNorm(width)
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def _split(self, x):
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)

    def keys_values(self, memory):
        """[B, T, W] -> (keys, values), each [B, heads, T, W / heads]."""
        k, v = self.key_value(self.memory_norm(memory)).chunk(2, dim=-1)
        return self._split(k), self._split(v)

    def forward(self, x, keys_values, memory_padding=None):
        k, v = keys_values
        mask = None if memory_padding is None else ~memory_padding[:, None, None, :]  # True = attend
        out = F.scaled_dot_product_attention(self._split(self.query(x)), k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).flatten(2))


class AdaLNLayer(nn.Module):
    """A DiT layer: self-attention over the action sequence, cross-attention to a memory (the
    backbone's tokens, as precomputed keys/values), MLP; each sub-layer modulated by the
    conditioning vector (adaLN-Zero: shift, scale and a gate that starts at 0, so a fresh layer is
    the identity)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attn = CrossAttention(width, heads)
        self.mlp = FeedForward(width)
        self.norms = nn.ModuleList(nn.LayerNorm(width, elementwise_affine=False) for _ in range(3))
        self.modulation = nn.Linear(width, 9 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x, cond, memory_kv, memory_padding=None):
        mods = self.modulation(F.silu(cond)).unsqueeze(1).chunk(9, dim=-1)
        (s1, c1, g1), (s2, c2, g2), (s3, c3, g3) = mods[0:3], mods[3:6], mods[6:9]
        h = self.norms[0](x) * (1 + c1) + s1
        x = x + g1 * self.self_attn(h, h, h, need_weights=False)[0]
        h = self.norms[1](x) * (1 + c2) + s2
        x = x + g2 * self.cross_attn(h, memory_kv, memory_padding)
        h = self.norms[2](x) * (1 + c3) + s3
        return x + g3 * self.mlp(h)


class MLPResNet(nn.Module):
    """Residual MLP blocks then a linear read-out (the shape of OpenVLA-OFT's action decoder)."""

    def __init__(self, width: int, out_dim: int, blocks: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
                                    for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, out_dim))

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.out(x)


def encoder_stack(width: int, heads: int, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True,
                                       activation="gelu")
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
