"""head.layerwise_fm: starVLA's layer-wise flow-matching action head (LayerwiseFlowmatchingActionHead,
starVLA/model/modules/action_model/LayerwiseFM_ActionHeader.py, with the cross-attention DiT of
flow_matching_head/cross_attention_dit.py, github.com/starVLA/starVLA at 0ed0aad) as starVLA's QwenPI_v3
and QwenPI run it (starvla/qwen3vl-pi-v3, starvla/qwen25vl-pi-v3; fixture-tested in
tests/test_starvla_pi.py). Submodules carry starVLA's names, so its `action_model.` keys map onto
this block's one for one.

  context   [B, L, T, W] one hidden-state stack per DiT block: DiT block i reads layer i (the VLM's
            L decoder layers, after QwenPI_v3's per-layer projectors, glue.layer_projection), with
            the VLM's attention mask as the key padding mask of every cross-attention. The DiT's width
            is the context's W; its depth is L.
  sequence  [state_encoder(state) (QwenPI only: one token); future_tokens (learned, `future_tokens`);
            action_encoder(x_t, t) + position_embedding]
  DiT       L blocks: AdaLayerNorm(W) on the time embedding (scale, shift) -> attention (biased q/k/v/out
            projections, W / attention_head_dim heads) to layer i (or, with
            `interleave_self_attention`, to the sequence itself in the odd blocks: QwenPI) -> + x ->
            LayerNorm(W) -> GELU(tanh) feed-forward (4 W) -> + x. The DiT's own output projection is
            not run (starVLA calls it with return_pre_output): its weights proj_out_1/proj_out_2 are
            kept (`output_dim`) so a checkpoint maps key for key, and nothing trains them.
  decoder   action_decoder: Linear(W, `hidden`) -> ReLU -> Linear(hidden, A) on the last H positions:
            the velocity
  time      t in [0, 1] (0 = noise, 1 = data), x_t = (1 - t) noise + t actions, velocity
            actions - noise, discretised to (t * num_timestep_buckets).long() for both time encoders
            (the action encoder's sinusoid over W and the DiT's 256-channel timestep embedding)

Training: the batch is repeated `repeated_diffusion_steps` times (torch's .repeat: row r * B + b is
example b), each row with its own noise (torch.randn) and then t = (s - b) / s, b ~ Beta(alpha, beta)
(torch.distributions.Beta: the draws starVLA makes, in its order); loss = mean squared velocity
error over every row, step and dimension (over the valid steps with `mask`). forward(noise=, time=)
takes those draws ([R B, H, A] and [R B]) instead of drawing them (the parity test passes starVLA's).
Inference: Euler from `noise` (predict's input, [B, H, A]) at t = 0 in `num_steps` steps of
1 / num_steps, t discretised as int(i / num_steps * num_timestep_buckets). With `rtc` (real-time
chunking, policy/rtc.py) each step is pulled towards the previous chunk as head.flow_matching does
(an Inpainting; all-zero weights sample exactly as without it).
Dropout (`dropout`, training only) where starVLA has it: after the attention's output projection,
on the attention branch again with `final_dropout`, inside the feed-forward and after it.
QwenPI_v3 builds a state encoder (framework.action_model.state_dim) that it never runs (the state
goes into the prompt): `state_dim` without a wired state port keeps those weights, unused."""
from __future__ import annotations

import torch
from torch import nn

from ..base import InPort, ParamError, PortError
from ..registry import register
from .common import ACTION_PARAMS, HEAD_OUT_PORTS, TARGET_PORTS, action_shape
from .flow_matching import Inpainting
# the DiT's blocks, time encoders, MLPs and the head's tokens, loss and sampler are those of starVLA's
# cross_attention_dit / action heads, which head.gr00t_flow_matching already has under starVLA's names
from .gr00t_flow_matching import (STARVLA_DROPOUT_PARAMS, STARVLA_TIME_PARAMS, STARVLA_TOKEN_PARAMS, DiTBlock,
                                  StarVLAFlowHead, TimestepEncoder)


class LayerwiseDiT(nn.Module):
    """DiT block i attends to memories[i] (or, interleaved, the odd blocks to the sequence itself)."""

    def __init__(self, width, heads, layers, output_dim, interleave, dropout, final_dropout):
        super().__init__()
        self.interleave = interleave
        self.timestep_encoder = TimestepEncoder(width)
        # every block's keys and values are width wide (the context is projected to the DiT's width)
        self.transformer_blocks = nn.ModuleList(DiTBlock(width, heads, None if interleave and i % 2 else width, dropout,
                                                         final_dropout) for i in range(layers))
        if output_dim:  # built by starVLA's DiT, never run by this head (return_pre_output)
            self.proj_out_1 = nn.Linear(width, 2 * width)
            self.proj_out_2 = nn.Linear(width, output_dim)

    def forward(self, x, memories, keep, timestep):
        temb = self.timestep_encoder(timestep)
        for i, block in enumerate(self.transformer_blocks):
            x = block(x, temb) if self.interleave and i % 2 == 1 else block(x, temb, memories[i], keep)
        return x


@register
class LayerwiseFlowMatchingHead(StarVLAFlowHead):
    type_name = "head.layerwise_fm"
    description = ("starVLA's layer-wise flow-matching head (QwenPI_v3, QwenPI): DiT block i cross-attends to "
                   "VLM layer i; [state;] future tokens; noisy actions; Beta time sampling, repeated noise draws, "
                   "Euler sampling.")
    in_ports = {
        "context": InPort("layers", ndim=4, doc="[B, L, T, W]: DiT block i reads layer i"),
        "context_mask": InPort("mask", optional=True, ndim=2, doc="[B, T], True on real tokens"),
        "state": InPort("state", optional=True, ndim=(2, 3), doc="[B, S] or [B, 1, S]: one token (QwenPI)"),
        **TARGET_PORTS,
    }
    out_ports = HEAD_OUT_PORTS
    params_schema = {
        "type": "object",
        "properties": {
            "attention_head_dim": {"type": "integer", "minimum": 1, "default": 64,
                                   "description": "width of one attention head (heads = context width / this)"},
            "output_dim": {"type": "integer", "minimum": 0, "default": 26,
                           "description": "width of the DiT's output projection starVLA builds and never runs "
                                          "(0: not built)"},
            "hidden": {"type": "integer", "minimum": 1, "default": 1024,
                       "description": "hidden width of the state encoder and the action decoder"},
            "state_dim": {"type": "integer", "minimum": 0,
                          "description": "state encoder input (0: none); default the state port's width, else 0. "
                                         "Without a wired state the encoder is built and not run (QwenPI_v3)"},
            **STARVLA_TOKEN_PARAMS,
            "interleave_self_attention": {"type": "boolean", "default": False,
                                          "description": "odd DiT blocks self-attend instead of reading their layer "
                                                         "(QwenPI: true; QwenPI_v3: false)"},
            **STARVLA_DROPOUT_PARAMS,
            "repeated_diffusion_steps": {"type": "integer", "minimum": 1, "default": 16,
                                         "description": "noise draws per training example (QwenPI_v3 reads "
                                                        "trainer.repeated_diffusion_steps, default 16; QwenPI uses 2)"},
            **STARVLA_TIME_PARAMS,
            **ACTION_PARAMS,
        },
        "additionalProperties": False,
    }
    predict_kwargs = ("noise", "num_steps", "rtc")

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.expect_ndim("context", 4)
        self.horizon, self.action_dim = action_shape(self)
        p = self.params
        shape = inputs["context"].shape
        layers, w = int(shape[1]), int(shape[-1])
        if w % p["attention_head_dim"]:
            raise ParamError("attention_head_dim", f"{p['attention_head_dim']} does not divide the context width {w} "
                                                   f"({inputs['context'].source})")
        if w % 2:
            raise PortError("context", f"{inputs['context'].source} has odd width {w}: the time sinusoid needs an even one")
        self.state_dim, self.width, self.depth = self._state_dim(), w, layers
        self.model = LayerwiseDiT(w, w // p["attention_head_dim"], layers, p["output_dim"],
                                  p["interleave_self_attention"], p["dropout"], p["final_dropout"])
        self._build_tokens(w, w)

    def _context(self, context):
        """[B, L, T, W] -> the L memories [B, T, W], one per DiT block."""
        if context.shape[1] != self.depth:
            raise PortError("context", f"expects {self.depth} layers (one per DiT block), got {context.shape[1]}")
        return context.unbind(dim=1)

    def _repeat_context(self, context, r: int):
        return [m.repeat(r, 1, 1) for m in self._context(context)]

    def sample_time(self, n: int, device, dtype) -> torch.Tensor:
        """t = (s - b) / s, b ~ Beta(alpha, beta) (starVLA's sample_time)."""
        p = self.params
        if device.type == "meta":
            return torch.empty(n, device=device, dtype=dtype)
        beta = torch.distributions.Beta(float(p["noise_beta_alpha"]), float(p["noise_beta_beta"]))
        return (p["noise_s"] - beta.sample([n]).to(device, dtype=dtype)) / p["noise_s"]

    def predict(self, context, context_mask=None, state=None, noise=None, num_steps=None, rtc: Inpainting | None = None):
        return self._sample(context, context_mask, state, noise, num_steps, rtc)
