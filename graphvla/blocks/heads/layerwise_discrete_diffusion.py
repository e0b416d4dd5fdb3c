"""head.layerwise_discrete_diffusion: starVLA's MaskGIT discrete-diffusion action head
(LayerwiseDiscreteDiffusionActionHead, the head of its QwenDiscreteDiffusion framework; github
starVLA/starVLA at 0ed0aad, fixture-tested in tests/test_starvla_dd.py).

Actions in [low, high] (normalized) are cut into `num_bins` uniform bins per step and dimension:
bin = floor((clamp(a, low + 1e-6, high - 1e-6) - low) / (high - low) * num_bins), decoded to the
bin's centre. The chunk's H x A bins are L = H A tokens. A DiT (starVLA's cross_attention_dit DiT
at the VLM's width, one block per VLM layer, 64-wide attention heads, adaLN from a constant
timestep 0, a sinusoidal position table added inside every block, self-attention on the odd
blocks when `interleave_self_attention`) runs over [state token; `future_tokens` learned tokens;
token embeddings (+ learned positions) of the L action tokens], block i cross-attending to context
layer i (the backbone's decoder layers, `vlm.layers`). It returns per token either `num_bins`
logits (`representation: bin`, cross-entropy) or 8 bit logits (`bit`, 8-bit BCE, 256 bins).

Training (`forward` with a target): the chunk is repeated `repeated_diffusion_steps` times (the
batch tiled, as torch's repeat does); per row r ~ U(0, 1) gives the masked share
m = clamp(1 - cos(pi r / 2), 1e-6, 1) (cosine) or clamp(r, 1e-6, 1) (linear), round(m L) clamped
to [1, L] tokens are masked, chosen as the lowest of L uniforms; with `no_mask_token_prob` > 0 each
masked token is left visible with that probability. Loss = mean over rows of (the token loss
summed over masked tokens / their count) + `l1_loss_weight` x mean |decode(argmax) - actions| (a
value without gradient, as starVLA computes it). The uniforms are `mask_noise` [B k, 1 + 2 L]
(column 0 r, columns 1..L the ranking draws, L+1..2L the keep draws): passed in, or drawn from
torch's generator.

Inference (`predict`): every token starts masked; `num_steps` rounds each predict all tokens,
sample the masked ones (bin: softmax(logits / decode_temperature), one draw = argmax(p / E) with
E ~ Exp(1), which is torch.multinomial's own algorithm; bit: bit_i = u_i < sigmoid(logit_i);
decode_temperature 0: argmax / threshold), and keep masked mask_len = floor(unknown x
(1 + cos(pi (s + 1) / S)) / 2) (cosine; linear 1 - (s + 1) / S) clamped to [1, unknown - 1], none
after the last round. Which stay masked: choice_temperature 0 - the lowest-confidence tokens;
otherwise starVLA's Gumbel ranking score = -log(p + 1e-8) / (choice_temperature (1 - (s+1)/S)) +
Gumbel, lowest scores stay masked. As starVLA writes it this keeps the MOST confident tokens masked
and re-masks decoded ones (their confidence is +inf, score -inf); it is reproduced as it is.
The randomness is predict's `noise` [B, S, H, A, K + 1] (K = num_bins or 8): [..., :K] the
sampling draws (Exp(1) for bin, U(0, 1) for bit), [..., K] the ranking uniforms. Policy draws it
per session (`draw_noise`); without it, predict draws it from torch's global generator.

Known-prefix inpainting (starVLA's predict_action_realtime; real-time chunking, policy/rtc.py):
`rtc` (an Inpainting) pins every step whose weight is > 0 to the bins of the previous chunk's
action there; only the other steps are masked and decoded, in max(1, floor(S x masked / L)) rounds
per row (`fixed_steps`: always S). The pinned steps come back as their bins' centres.

Padding: with `context_mask` wired (vlm.mask) the DiT does not attend to the batch's padding
tokens; starVLA's does (its left padding), so the two agree on batches without padding (one
observation at serve time; the fixtures). Without RTC the number of rounds is fixed, so the
decoding unrolls in an export (the draws stay a graph input)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, InPort, ParamError, PortError
from ..registry import register
from .common import ACTION_PARAMS, HEAD_IN_PORTS, HEAD_OUT_PORTS, action_shape, context_geometry, state_width
from .gr00t_flow_matching import MLP, DiTBlock, TimestepEncoder
from .noise import NOISE_BIN, NOISE_BIT, SamplingHead, draw_maskgit_noise

IGNORE = -100  # starVLA's masked-token marker in training inputs


# ---- starVLA's DiT (cross_attention_dit.py), with the modules head.gr00t_flow_matching has under ------
# starVLA's names (so the keys map 1:1), plus the sinusoidal positions this head's DiT adds in every block

class _SinusoidalPositions(nn.Module):
    """diffusers' SinusoidalPositionalEmbedding: x + pe[:T] (a saved buffer, as in starVLA's state)."""

    def __init__(self, width: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, width, 2) * (-math.log(10000.0) / width))
        pe = torch.zeros(1, max_len, width)
        pe[0, :, 0::2] = torch.sin(position * div)
        pe[0, :, 1::2] = torch.cos(position * div)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return x + self.pe[:, : x.shape[1]]


class _DiTBlock(DiTBlock):
    """starVLA's BasicTransformerBlock with norm_type ada_norm and positional_embeddings sinusoidal:
    adaLN -> + sinusoidal positions -> attention (cross to the memory, or self) -> dropout ->
    residual; LayerNorm -> MLP -> residual."""

    def __init__(self, width, heads, kv_dim, dropout, final_dropout, max_positions, sinusoidal):
        super().__init__(width, heads, kv_dim, dropout, final_dropout)
        self.pos_embed = _SinusoidalPositions(width, max_positions) if sinusoidal else None  # DiTBlock runs it


class LayerwiseDiT(nn.Module):
    """starVLA's DiT (flow_matching_head/cross_attention_dit.py) fed layer-wise: block i
    cross-attends to memories[i] (the self-attention blocks, odd i when interleaved, to nothing)."""

    def __init__(self, width, layers, out_dim, head_dim=64, dropout=0.2, final_dropout=True,
                 interleave_self_attention=True, max_positions=512, sinusoidal=True):
        super().__init__()
        inner = (width // head_dim) * head_dim
        self.interleave = interleave_self_attention
        self.timestep_encoder = TimestepEncoder(inner)
        self.transformer_blocks = nn.ModuleList(
            _DiTBlock(inner, width // head_dim, None if self.self_attends(i) else width, dropout, final_dropout,
                      max_positions, sinusoidal)
            for i in range(layers))
        self.norm_out = nn.LayerNorm(inner, eps=1e-6, elementwise_affine=False)
        self.proj_out_1 = nn.Linear(inner, 2 * inner)
        self.proj_out_2 = nn.Linear(inner, out_dim)

    def self_attends(self, i: int) -> bool:
        return self.interleave and i % 2 == 1

    def forward(self, x, memories, memory_mask=None):
        temb = self.timestep_encoder(torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, temb) if self.self_attends(i) else block(x, temb, memories[i], memory_mask)
        shift, scale = self.proj_out_1(F.silu(temb)).chunk(2, dim=1)
        x = self.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
        return self.proj_out_2(x)


# ---- binning, masking schedules ------------------------------------------------------------------

class ActionBins(nn.Module):
    """Uniform bins over [low, high]; `bin_centers` (and `bit_powers` for bits) are saved buffers,
    as in starVLA's ActionBinning."""

    def __init__(self, num_bins: int, low: float, high: float, representation: str):
        super().__init__()
        self.num_bins, self.low, self.high, self.representation = num_bins, float(low), float(high), representation
        scale = (self.high - self.low) / num_bins
        self.register_buffer("bin_centers", (torch.arange(num_bins, dtype=torch.float32) + 0.5) * scale + self.low)
        if representation == "bit":
            self.register_buffer("bit_powers", torch.arange(8, dtype=torch.long))

    @property
    def logits_dim(self) -> int:
        return 8 if self.representation == "bit" else self.num_bins

    def encode(self, actions):
        x = (actions.clamp(self.low + 1e-6, self.high - 1e-6) - self.low) / (self.high - self.low)
        return (x * self.num_bins).floor().long().clamp(0, self.num_bins - 1)

    def decode(self, indices):
        return self.bin_centers[indices.reshape(-1)].reshape(*indices.shape)

    def bit_targets(self, indices):
        return ((indices.unsqueeze(-1) >> self.bit_powers) & 1).float()

    def sample(self, logits, temperature: float, draws=None):
        """(indices, probability of each chosen index). draws None: deterministic (argmax / p > 0.5);
        else [..., K] Exp(1) (bin: argmax p / E) or U(0, 1) (bit: u < p)."""
        if self.representation == "bit":
            probs = logits.sigmoid()
            bits = (probs > 0.5).long() if draws is None else (draws < probs).long()
            indices = (bits * (2 ** self.bit_powers)).sum(dim=-1)
            return indices, (probs * bits + (1 - probs) * (1 - bits)).prod(dim=-1)
        probs = F.softmax(logits / max(temperature, 1e-8), dim=-1)
        if draws is None:
            return logits.argmax(dim=-1), probs.max(dim=-1).values
        indices = (probs / draws).argmax(dim=-1)
        return indices, probs.gather(-1, indices.unsqueeze(-1)).squeeze(-1)

    def decode_logits(self, logits):
        return self.decode(self.sample(logits, 1.0)[0])


def train_mask_ratio(r, schedule: str):
    if schedule == "cosine":
        return torch.clamp(1.0 - torch.cos(torch.pi * 0.5 * r), 1e-6, 1.0)
    return torch.clamp(r, 1e-6, 1.0)


def rank_of(values):
    """Rank of each entry along dim 1 (starVLA's double argsort, same ops so ties break alike)."""
    return torch.argsort(torch.argsort(values, dim=1), dim=1)


# ---- the block -----------------------------------------------------------------------------------

SCHEDULE = {"enum": ["cosine", "linear"], "default": "cosine"}


@register
class LayerwiseDiscreteDiffusionHead(SamplingHead, Block):
    type_name = "head.layerwise_discrete_diffusion"
    description = ("starVLA's MaskGIT discrete-diffusion head (QwenDiscreteDiffusion): a layer-wise DiT over "
                   "[state; future tokens; action bin tokens], bin cross-entropy or 8-bit BCE + L1, iterative "
                   "decoding, known-prefix inpainting for real-time chunking.")
    in_ports = {**HEAD_IN_PORTS,
                "context": InPort("layers", ndim=4, doc="[B, L, T, D] the backbone's decoder layers (one per DiT block)")}
    out_ports = HEAD_OUT_PORTS
    predict_kwargs = ("noise", "num_steps", "rtc")
    rtc_method = "inpainting"
    params_schema = {
        "type": "object",
        "properties": {
            "representation": {"enum": ["bin", "bit"], "default": "bin",
                               "description": "bin: num_bins logits, cross-entropy; bit: 8 bit logits, BCE (num_bins 256)"},
            "num_bins": {"type": "integer", "minimum": 2, "default": 256},
            "action_low": {"type": "number", "default": -1.0, "description": "lower edge of the bins (normalized actions)"},
            "action_high": {"type": "number", "default": 1.0, "description": "upper edge of the bins"},
            "num_steps": {"type": "integer", "minimum": 1, "default": 8, "description": "decoding rounds"},
            "train_mask_schedule": SCHEDULE,
            "decode_schedule": SCHEDULE,
            "no_mask_token_prob": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0,
                                   "description": "chance a token chosen for masking stays visible (training)"},
            "l1_loss_weight": {"type": "number", "minimum": 0, "default": 0.1},
            "repeated_diffusion_steps": {"type": "integer", "minimum": 1, "default": 2,
                                         "description": "masks drawn per training example (the batch is repeated)"},
            "decode_temperature": {"type": "number", "minimum": 0, "default": 0.1,
                                   "description": "softmax temperature of the token draws (0: argmax)"},
            "choice_temperature": {"type": "number", "minimum": 0, "default": 0.1,
                                   "description": "temperature of the ranking of which tokens stay masked (0: lowest confidence)"},
            "use_simple_max": {"type": "boolean", "default": False,
                               "description": "one all-masked forward and argmax instead of the decoding rounds"},
            "fixed_steps": {"type": "boolean", "default": False,
                            "description": "inpainting: always num_steps rounds (else scaled by the masked share)"},
            "future_tokens": {"type": "integer", "minimum": 0, "default": 32,
                              "description": "learned tokens between the state and the actions (starVLA's num_target_vision_tokens)"},
            "add_pos_embed": {"type": "boolean", "default": True, "description": "learned positions on the action tokens"},
            "max_seq_len": {"type": "integer", "minimum": 1, "default": 1024, "description": "rows of the learned position table"},
            "max_positions": {"type": "integer", "minimum": 1, "default": 512,
                              "description": "rows of the DiT's sinusoidal position table (state + future + action tokens)"},
            "attention_head_dim": {"type": "integer", "minimum": 1, "default": 64},
            "dropout": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2},
            "final_dropout": {"type": "boolean", "default": True},
            "interleave_self_attention": {"type": "boolean", "default": True,
                                          "description": "odd DiT blocks attend to the action sequence instead of a layer"},
            "state_dim": {"type": "integer", "minimum": 0,
                          "description": "width of the state encoder (default: the wired state's, else none)"},
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        p = self.params
        self.expect_ndim("context", 4)
        self.horizon, self.action_dim = action_shape(self)
        num_layers, width = context_geometry(self)
        if p["representation"] == "bit" and p["num_bins"] != 256:
            raise ParamError("num_bins", f"representation bit uses 8 bits, i.e. 256 bins, not {p['num_bins']}")
        if p["action_high"] <= p["action_low"]:
            raise ParamError("action_high", f"{p['action_high']} is not above action_low {p['action_low']}")
        head_dim = p["attention_head_dim"]
        if width % head_dim:
            raise ParamError("attention_head_dim", f"the context width {width} is not a multiple of {head_dim}")
        self.seq_len = self.horizon * self.action_dim
        wired = state_width(self)
        state_dim = wired if p.get("state_dim") is None else p["state_dim"]
        if wired and state_dim != wired:
            raise ParamError("state_dim", f"{state_dim}, but {inputs['state'].source} has width {wired}")
        n_tokens = (1 if state_dim else 0) + p["future_tokens"] + self.seq_len
        if n_tokens > p["max_positions"]:
            raise ParamError("max_positions", f"the DiT sees {n_tokens} tokens (state, {p['future_tokens']} future, "
                                              f"{self.horizon} x {self.action_dim} actions), more than {p['max_positions']}")
        if p["add_pos_embed"] and self.seq_len > p["max_seq_len"]:
            raise ParamError("max_seq_len", f"{self.horizon} x {self.action_dim} action tokens exceed {p['max_seq_len']}")
        self.num_layers = num_layers
        self.binning = ActionBins(p["num_bins"], p["action_low"], p["action_high"], p["representation"])
        self.mask_token_id = p["num_bins"]
        self.model = LayerwiseDiT(width, num_layers, self.binning.logits_dim, head_dim, p["dropout"], p["final_dropout"],
                                  p["interleave_self_attention"], p["max_positions"])
        inner = (width // head_dim) * head_dim
        self.token_embedding = nn.Embedding(p["num_bins"] + 1, inner)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.state_encoder = MLP(state_dim, inner, inner) if state_dim else None  # starVLA's MLP: layer1, ReLU, layer2
        self.future_tokens = nn.Embedding(p["future_tokens"], inner) if p["future_tokens"] else None
        if self.future_tokens is not None:
            nn.init.normal_(self.future_tokens.weight, std=0.02)
        self.position_embedding = nn.Embedding(p["max_seq_len"], inner) if p["add_pos_embed"] else None
        if self.position_embedding is not None:
            nn.init.normal_(self.position_embedding.weight, std=0.02)

    # -- pieces ---------------------------------------------------------------------------------
    def _memories(self, context, context_mask):
        if context.shape[1] != self.num_layers:
            raise PortError("context", f"expects {self.num_layers} layers, got {context.shape[1]}")
        dtype = self.model.proj_out_2.weight.dtype
        memories = [context[:, i].to(dtype) for i in range(context.shape[1])]
        mask = None
        if context_mask is not None:
            if tuple(context_mask.shape) != tuple(context.shape[:1]) + tuple(context.shape[2:3]):
                raise PortError("context_mask", f"expects [B, {context.shape[2]}], got {list(context_mask.shape)}")
            mask = context_mask.bool()
        return memories, mask

    def _state(self, state):
        if state is None or self.state_encoder is None:
            return None
        return self.state_encoder(state.flatten(1).to(self.token_embedding.weight.dtype)).unsqueeze(1)

    def logits(self, memories, memory_mask, tokens, state_feat):
        """tokens [B, H, A] (mask_token_id or IGNORE = masked) -> logits [B, H, A, K]."""
        b = tokens.shape[0]
        ids = tokens.reshape(b, -1)
        ids = torch.where(ids == IGNORE, torch.full_like(ids, self.mask_token_id), ids)
        x = self.token_embedding(ids)
        if self.position_embedding is not None:
            x = x + self.position_embedding(torch.arange(x.shape[1], device=x.device)).unsqueeze(0)
        parts = [] if state_feat is None else [state_feat]
        if self.future_tokens is not None:
            parts.append(self.future_tokens.weight.unsqueeze(0).expand(b, -1, -1))
        prefix = sum(t.shape[1] for t in parts)
        out = self.model(torch.cat(parts + [x], dim=1), memories, memory_mask)
        return out[:, prefix:].reshape(b, self.horizon, self.action_dim, self.binning.logits_dim)

    def mask_noise_shape(self, rows: int) -> tuple:
        return (rows, 1 + 2 * self.seq_len)

    def apply_mask(self, bins, mask_noise):
        """starVLA's apply_mask with its uniforms given: [B, H, A] bins -> the same with IGNORE on the
        masked tokens."""
        b, L = bins.shape[0], self.seq_len
        r, vals, keep = mask_noise[:, 0], mask_noise[:, 1:1 + L], mask_noise[:, 1 + L:]
        total = torch.full((b,), L, dtype=torch.float, device=bins.device)
        num_mask = (total * train_mask_ratio(r, self.params["train_mask_schedule"])).round().long().clamp(1, L)
        masked = rank_of(vals.reshape(b, L)) < num_mask.unsqueeze(1)
        p = self.params["no_mask_token_prob"]
        if p > 0:
            masked = masked & ~((keep < p) & masked)
        return torch.where(masked.reshape(bins.shape), IGNORE, bins)

    # -- training -------------------------------------------------------------------------------
    def forward(self, context, context_mask=None, state=None, target=None, mask=None, mask_noise=None):
        if target is None:
            return self.predict(context, context_mask, state)
        k = self.params["repeated_diffusion_steps"]
        actions = target.repeat(k, 1, 1).float()
        memories, mem_mask = self._memories(context, context_mask)
        memories = [m.repeat(k, 1, 1) for m in memories]
        mem_mask = None if mem_mask is None else mem_mask.repeat(k, 1)
        state_feat = self._state(None if state is None else state.repeat(k, *([1] * (state.dim() - 1))))
        rows = actions.shape[0]
        if mask_noise is None:
            mask_noise = torch.rand(self.mask_noise_shape(rows), device=actions.device)
        elif tuple(mask_noise.shape) != self.mask_noise_shape(rows):
            raise ValueError(f"{self.block_id}: mask_noise must be {list(self.mask_noise_shape(rows))} "
                             f"(rows = batch x repeated_diffusion_steps), got {list(mask_noise.shape)}")
        bins = self.binning.encode(actions)
        tokens = self.apply_mask(bins, mask_noise.to(actions.device))
        logits = self.logits(memories, mem_mask, tokens, state_feat)
        return {"loss": self.loss(logits, bins, tokens == IGNORE, actions, None if mask is None else mask.repeat(k, 1))}

    def loss(self, logits, bins, loss_mask, actions, valid=None):
        b = logits.shape[0]
        if self.binning.representation == "bin":
            per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), bins.reshape(-1),
                                        reduction="none").reshape(bins.shape)
        else:
            per_token = F.binary_cross_entropy_with_logits(logits.float(), self.binning.bit_targets(bins),
                                                           reduction="none").mean(dim=-1)
        if valid is not None:  # padded action steps (GraphVLA's actions_mask) are never counted
            loss_mask = loss_mask & valid.bool()[:, :, None]
        counted = torch.where(loss_mask, per_token, torch.zeros_like(per_token))
        ce = (counted.sum(dim=(1, 2)) / (loss_mask.float().sum(dim=(1, 2)) + 1e-8)).mean()
        weight = self.params["l1_loss_weight"]
        if weight <= 0:
            return ce
        err = (self.binning.decode_logits(logits.detach()) - actions).abs()
        if valid is None:
            l1 = err.mean()
        else:
            m = valid.to(err.dtype)[:, :, None].expand_as(err)
            l1 = (err * m).sum() / m.sum().clamp(min=1)
        return ce + weight * l1

    # -- inference ------------------------------------------------------------------------------
    def noise_shape(self, batch: int) -> tuple:
        """predict's `noise`: [batch, num_steps, horizon, action dim, K + 1] (module docstring)."""
        return (batch, int(self.params["num_steps"]), int(self.horizon), int(self.action_dim),
                self.binning.logits_dim + 1)

    @property
    def noise_dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def noise_distribution(self) -> str:
        """How predict's `noise` is drawn (an export's manifest records it): NOISE_BIN or NOISE_BIT."""
        return NOISE_BIT if self.binning.representation == "bit" else NOISE_BIN

    def predict(self, context, context_mask=None, state=None, noise=None, num_steps=None, rtc=None):
        memories, mem_mask = self._memories(context, context_mask)
        state_feat = self._state(state)
        b, H, A, L = context.shape[0], self.horizon, self.action_dim, self.seq_len
        device = context.device
        steps = int(num_steps or self.params["num_steps"])
        shape = (b, steps, H, A, self.binning.logits_dim + 1)
        if noise is None:
            noise = draw_maskgit_noise(self.noise_distribution, shape, None, device)
        elif noise.dim() != 5 or tuple(noise.shape[2:]) != shape[2:] or noise.shape[0] != b:
            raise ValueError(f"{self.block_id}: noise must be [batch, rounds, horizon, action dim, "
                             f"{shape[-1]}] = {list(shape)}, got {list(noise.shape)}")
        cur = torch.full((b, H, A), self.mask_token_id, dtype=torch.long, device=device)
        if self.params["use_simple_max"] and rtc is None:
            return {"actions": self.binning.decode_logits(self.logits(memories, mem_mask, cur, state_feat))}
        pinned = torch.zeros((b, H, A), dtype=torch.bool, device=device)
        prefix = cur
        if rtc is not None:
            if tuple(rtc.target.shape) != (b, H, A) or tuple(rtc.weights.shape) != (b, H):
                raise ValueError(f"rtc: target must be [{b}, {H}, {A}] and weights [{b}, {H}], got "
                                 f"{list(rtc.target.shape)} and {list(rtc.weights.shape)}")
            pinned = (rtc.weights.to(device) > 0)[:, :, None].expand(b, H, A)
            prefix = self.binning.encode(rtc.target.to(device=device, dtype=torch.float32))
            cur = torch.where(pinned, prefix, cur)
        unknown = (cur == self.mask_token_id).sum(dim=(1, 2))  # [B]
        if rtc is None or self.params["fixed_steps"]:
            rounds, total = torch.full_like(unknown, steps), steps  # no data-dependent count: exportable
        else:
            rounds = (steps * unknown // L).clamp(min=1)  # int(S * unknown / L), at least one
            total = int(rounds.max())
        if noise.shape[1] < total:
            raise ValueError(f"{self.block_id}: noise has {noise.shape[1]} rounds, the decoding runs {total}")
        decode_t, choice_t = self.params["decode_temperature"], self.params["choice_temperature"]
        for s in range(total):
            active = s < rounds  # rows still decoding
            logits = self.logits(memories, mem_mask, cur, state_feat)
            round_noise = noise[:, s].to(device)
            draws = None if decode_t == 0 else round_noise[..., :-1]
            sampled, conf = self.binning.sample(logits, decode_t, draws)
            unknown_map = cur == self.mask_token_id
            sampled = torch.where(pinned, prefix, sampled)
            sampled = torch.where(unknown_map, sampled, cur)
            ratio = (s + 1.0) / rounds.float()  # [B]
            if self.params["decode_schedule"] == "cosine":
                keep = 0.5 * (1.0 + torch.cos(torch.pi * ratio))
            else:
                keep = 1.0 - ratio
            mask_len = (unknown.float() * keep).long()
            # torch.clamp(min=1, max=unknown - 1) as starVLA: the max wins when they cross
            mask_len = torch.minimum(torch.maximum(mask_len, torch.ones_like(mask_len)), (unknown - 1).clamp(min=0))
            mask_len = torch.where(s == rounds - 1, torch.zeros_like(mask_len), mask_len)
            conf = torch.where(unknown_map, conf, torch.full_like(conf, float("inf"))).reshape(b, L)
            if choice_t == 0:
                stay = rank_of(conf) < mask_len.unsqueeze(1)
            else:
                # starVLA: max(choice_t * (1 - ratio), 1e-8) in Python floats, then float32
                temp = (choice_t * (1.0 - (s + 1.0) / rounds.double())).clamp(min=1e-8).float()[:, None]
                u = round_noise[..., -1].reshape(b, L)
                gumbel = -torch.log(-torch.log(u + 1e-10) + 1e-10)
                stay = rank_of(-torch.log(conf + 1e-8) / temp + gumbel) < mask_len.unsqueeze(1)
            new = torch.where(pinned, prefix, torch.where(stay.reshape(b, H, A), self.mask_token_id, sampled))
            cur = torch.where(active[:, None, None], new, cur)
        return {"actions": self.binning.decode(cur)}

    def meta_forward(self, context, context_mask=None, state=None, target=None, mask=None):
        memories, mem_mask = self._memories(context, context_mask)
        b = context.shape[0]
        tokens = torch.empty((b, self.horizon, self.action_dim), dtype=torch.long, device=context.device)
        logits = self.logits(memories, mem_mask, tokens, self._state(state))
        out = {"actions": torch.empty((b, self.horizon, self.action_dim), device=context.device, dtype=logits.dtype)}
        if target is not None:
            out["loss"] = logits.sum()
        return out
