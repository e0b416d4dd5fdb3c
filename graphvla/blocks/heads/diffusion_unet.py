"""head.diffusion_unet: a denoising-diffusion action head whose denoiser is a conditional 1-D
temporal UNet (Chi et al. 2023, "Diffusion Policy", the CNN variant), in the configuration LeRobot's
Diffusion Policy builds (graphs/lerobot/diffusion.yaml is that policy, proven by
tests/test_lerobot_diffusion.py against LeRobot's own numbers).

The network:
  time embedding  sinusoidal(t) of width E (half sines, half cosines, frequencies 10000^(-i/(E/2-1))),
                  then Linear(E, 4E), Mish, Linear(4E, E)
  conditioning    c = [time embedding; global condition], the global condition being, over the
                  observation steps, [state; context (image features); env_state] flattened
  residual block  conv-norm-Mish, FiLM from c (Mish, Linear: a per-channel bias, or scale and bias),
                  conv-norm-Mish, plus the input (a 1x1 conv when the width changes); the convs have
                  kernel `kernel_size`, the norms are GroupNorm(`groups`)
  UNet            down: per width in `down_dims`, two residual blocks, then a stride-2 conv (none after
                  the last); middle: two residual blocks; up: per level but the first, the skip
                  concatenated, two residual blocks and a stride-2 transposed conv (kernel 4); out:
                  conv-norm-Mish (its GroupNorm has 8 groups whatever `groups` says, as in LeRobot)
                  then a 1x1 conv to the action width

Training (`forward` with a target): the chunk is noised at a random timestep (diffusion_schedule.py's
q(x_t | x_0)) and the UNet predicts the noise (`prediction: epsilon`) or the chunk (`sample`);
the loss is the mean squared error over every element, with the padded steps' errors zeroed but still
counted when `mask_padding` (LeRobot's do_mask_loss_for_padding). The noise and timesteps may be
passed (`noise`, `timesteps`) instead of drawn: that is how the parity test feeds LeRobot's draws.

Inference (`predict`): DDPM or DDIM (eta 0) over `num_inference_steps` (default: every training
timestep). Its randomness is the input `noise` [B, draws, horizon, action dim] (noise_shape): the
starting chunk and, for DDPM, one draw per stochastic step; graphvla.policy.Policy draws it from
each session's generator. The actions returned are the `n_action_steps` steps from the current
observation on: steps n_obs_steps-1 .. n_obs_steps-1+n_action_steps of the denoised horizon.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Block, InPort, OutPort, ParamError, PortError
from ..registry import register
from . import diffusion_schedule as schedule
from .common import action_shape
from .noise import SamplingHead


OUT_GROUPS = 8  # the output conv block's GroupNorm groups: 8 whatever `groups` says, as LeRobot builds it


def time_embedding(t: torch.Tensor, width: int) -> torch.Tensor:
    half = width // 2
    freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
    angles = t.unsqueeze(-1) * freqs.unsqueeze(0)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class ConvNormMish(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, groups: int):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2)
        self.norm = nn.GroupNorm(groups, c_out)

    def forward(self, x):
        return F.mish(self.norm(self.conv(x)))


class FiLMResidual(nn.Module):
    """Residual conv block on [B, C, T] modulated by the conditioning vector [B, cond]."""

    def __init__(self, c_in: int, c_out: int, cond: int, kernel: int, groups: int, scale: bool):
        super().__init__()
        self.c_out, self.scale = c_out, scale
        self.conv1 = ConvNormMish(c_in, c_out, kernel, groups)
        self.film = nn.Linear(cond, 2 * c_out if scale else c_out)
        self.conv2 = ConvNormMish(c_out, c_out, kernel, groups)
        self.shortcut = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, cond):
        h = self.conv1(x)
        f = self.film(F.mish(cond)).unsqueeze(-1)
        h = f[:, :self.c_out] * h + f[:, self.c_out:] if self.scale else h + f
        return self.conv2(h) + (x if self.shortcut is None else self.shortcut(x))


class Level(nn.Module):
    def __init__(self, c_in, c_out, resample: nn.Module | None, **kw):
        super().__init__()
        self.res1 = FiLMResidual(c_in, c_out, **kw)
        self.res2 = FiLMResidual(c_out, c_out, **kw)
        self.resample = resample


class ConditionalUNet1d(nn.Module):
    """eps_hat (or x0_hat) = UNet(x [B, H, A], t [B], cond [B, global])."""

    def __init__(self, action_dim: int, global_dim: int, down_dims, kernel: int, groups: int,
                 embed: int, film_scale: bool):
        super().__init__()
        self.embed = embed
        self.time_mlp = nn.Sequential(nn.Linear(embed, 4 * embed), nn.Mish(), nn.Linear(4 * embed, embed))
        kw = dict(cond=embed + global_dim, kernel=kernel, groups=groups, scale=film_scale)
        widths = [action_dim, *down_dims]
        pairs = list(zip(widths[:-1], widths[1:]))
        self.down = nn.ModuleList(
            Level(a, b, nn.Conv1d(b, b, 3, 2, 1) if i < len(pairs) - 1 else None, **kw) for i, (a, b) in enumerate(pairs))
        self.mid = nn.ModuleList(FiLMResidual(down_dims[-1], down_dims[-1], **kw) for _ in range(2))
        self.up = nn.ModuleList(Level(2 * b, a, nn.ConvTranspose1d(a, a, 4, 2, 1), **kw) for a, b in reversed(pairs[1:]))
        self.out_block = ConvNormMish(down_dims[0], down_dims[0], kernel, OUT_GROUPS)
        self.out_proj = nn.Conv1d(down_dims[0], action_dim, 1)

    def forward(self, x, t, global_cond):
        cond = self.time_mlp(time_embedding(t, self.embed))
        if global_cond is not None:
            cond = torch.cat([cond, global_cond], dim=-1)
        h = x.transpose(1, 2)
        skips = []
        for level in self.down:
            h = level.res2(level.res1(h, cond), cond)
            skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
        for block in self.mid:
            h = block(h, cond)
        for level in self.up:
            h = level.res2(level.res1(torch.cat([h, skips.pop()], dim=1), cond), cond)
            h = level.resample(h)
        return self.out_proj(self.out_block(h)).transpose(1, 2)


def _steps(info, port) -> int:
    """Observation steps of a [B, S, D] port (1 for [B, D])."""
    return int(info.shape[1]) if info is not None and info.shape is not None and len(info.shape) == 3 else 1


@register
class DiffusionUNetHead(SamplingHead, Block):
    type_name = "head.diffusion_unet"
    description = ("Denoising-diffusion action head with a FiLM-conditioned 1-D temporal UNet (Diffusion Policy's "
                   "CNN variant, as LeRobot builds it); DDPM/DDIM sampling.")
    in_ports = {
        "context": InPort("hidden", optional=True, ndim=(2, 3),
                          doc="observation features per step [B, S, D] (or [B, D]), e.g. image keypoint features"),
        "state": InPort("state", ndim=(2, 3), doc="robot state per observation step [B, S, D] (or [B, D])"),
        "env_state": InPort(("state", "hidden"), optional=True, ndim=(2, 3),
                            doc="environment state per step [B, S, D], or any vector (e.g. a pooled instruction, [B, D]): "
                                "part of the global condition"),
        "target": InPort("action", optional=True, target=True, doc="action chunk [B, horizon, A], normalized"),
        "mask": InPort("mask", optional=True, target=True, doc="[B, horizon] valid (not padded) steps"),
    }
    out_ports = {"actions": OutPort("action", doc="[B, n_action_steps, A]: the steps from the current observation on"),
                 "loss": OutPort("loss", train_only=True)}
    predict_kwargs = ("noise",)
    params_schema = {
        "type": "object",
        "properties": {
            "horizon": {"type": "integer", "minimum": 1, "description": "inferred from the target port when wired"},
            "action_dim": {"type": "integer", "minimum": 1, "description": "inferred from the target port when wired"},
            "n_action_steps": {"type": "integer", "minimum": 1, "default": 8,
                               "description": "actions returned per inference, from the current observation step on"},
            "down_dims": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1,
                          "default": [512, 1024, 2048], "description": "UNet width per level (each but the last "
                                                                        "halves the time axis)"},
            "kernel_size": {"type": "integer", "minimum": 1, "default": 5, "description": "temporal conv kernel"},
            "groups": {"type": "integer", "minimum": 1, "default": 8, "description": "GroupNorm groups in the UNet"},
            "step_embed_dim": {"type": "integer", "minimum": 4, "default": 128,
                               "description": "width of the diffusion-timestep embedding"},
            "film_scale": {"type": "boolean", "default": True,
                           "description": "FiLM with scale and bias (false: bias only)"},
            "train_timesteps": {"type": "integer", "minimum": 1, "default": 100},
            "beta_schedule": {"enum": list(schedule.BETA_SCHEDULES), "default": "squaredcos_cap_v2"},
            "beta_start": {"type": "number", "exclusiveMinimum": 0, "default": 0.0001},
            "beta_end": {"type": "number", "exclusiveMinimum": 0, "default": 0.02},
            "prediction": {"enum": list(schedule.PREDICTIONS), "default": "epsilon",
                           "description": "what the UNet predicts: the noise or the clean chunk"},
            "sampler": {"enum": list(schedule.SAMPLERS), "default": "DDPM", "description": "reverse process at inference"},
            "inference_steps": {"type": ["integer", "null"], "minimum": 1, "default": None,
                                "description": "denoising steps at inference (null: train_timesteps)"},
            "clip_sample": {"type": "boolean", "default": True,
                            "description": "clip the clean-chunk estimate to [-clip_range, clip_range] at each step"},
            "clip_range": {"type": "number", "exclusiveMinimum": 0, "default": 1.0},
            "mask_padding": {"type": "boolean", "default": False,
                             "description": "zero the loss on padded steps (mask False); the mean still counts them"},
        },
        "additionalProperties": False,
    }

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        p = self.params
        self.horizon, self.action_dim = action_shape(self)
        state = inputs["state"]
        self.obs_steps = _steps(state, "state")
        global_dim = state.dim
        for port in ("context", "env_state"):
            info = inputs.get(port)
            if info is None:
                continue
            if _steps(info, port) != self.obs_steps:
                raise PortError(port, f"has {_steps(info, port)} observation step(s) but state has {self.obs_steps}")
            global_dim += info.dim
        levels = len(p["down_dims"])
        if self.horizon % 2 ** (levels - 1):
            raise ParamError("down_dims", f"{levels} levels halve the horizon {levels - 1} time(s): the horizon "
                                          f"{self.horizon} must be a multiple of {2 ** (levels - 1)}")
        if self.obs_steps - 1 + p["n_action_steps"] > self.horizon:
            raise ParamError("n_action_steps", f"{p['n_action_steps']} steps from observation step {self.obs_steps} "
                                               f"run past the horizon {self.horizon}")
        for w in p["down_dims"]:
            if w % p["groups"]:
                raise ParamError("groups", f"{p['groups']} groups do not divide the UNet width {w} (down_dims)")
        if p["down_dims"][0] % OUT_GROUPS:
            raise ParamError("down_dims", f"the first width {p['down_dims'][0]} must be a multiple of {OUT_GROUPS} "
                                          f"(the output block's GroupNorm groups)")
        if p["step_embed_dim"] % 2:
            raise ParamError("step_embed_dim", f"must be even, got {p['step_embed_dim']}")
        steps = p["inference_steps"] or p["train_timesteps"]
        if steps > p["train_timesteps"]:
            raise ParamError("inference_steps", f"{steps} is more than train_timesteps ({p['train_timesteps']})")
        self.unet = ConditionalUNet1d(self.action_dim, global_dim * self.obs_steps, p["down_dims"], p["kernel_size"],
                                      p["groups"], p["step_embed_dim"], p["film_scale"])
        abar = schedule.alphas_cumprod(p["beta_schedule"], p["train_timesteps"], p["beta_start"], p["beta_end"])
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        self.sampler = schedule.Sampler(abar, p["sampler"], steps, p["prediction"], p["clip_sample"], p["clip_range"])

    def global_condition(self, state, context=None, env_state=None):
        parts = [x if x.dim() == 3 else x.unsqueeze(1) for x in (state, context, env_state) if x is not None]
        return torch.cat(parts, dim=-1).flatten(1)

    def forward(self, state, context=None, env_state=None, target=None, mask=None, noise=None, timesteps=None):
        if target is None:
            return self.predict(state, context, env_state)
        cond = self.global_condition(state, context, env_state)
        if noise is None:
            noise = torch.randn(target.shape, device=target.device)
        if timesteps is None:
            timesteps = torch.randint(0, self.params["train_timesteps"], (target.shape[0],), device=target.device)
        noisy = schedule.add_noise(self.alphas_cumprod, target, noise, timesteps)
        out = self.unet(noisy, timesteps, cond)
        err = F.mse_loss(out, noise if self.params["prediction"] == "epsilon" else target, reduction="none")
        if self.params["mask_padding"] and mask is not None:
            err = err * mask.to(err.dtype).unsqueeze(-1)
        return {"loss": err.mean()}

    def noise_shape(self, batch: int) -> tuple:
        """predict's `noise`: [batch, draws, horizon, action dim] (module docstring)."""
        return (batch, self.sampler.draws, int(self.horizon), int(self.action_dim))

    @property
    def sampling_steps(self) -> int:
        """Denoising steps at inference (an export's metadata names them)."""
        return len(self.sampler.timesteps)

    @property
    def noise_dtype(self) -> torch.dtype:
        return self.unet.out_proj.weight.dtype

    def chunk(self, state, context=None, env_state=None, noise=None) -> torch.Tensor:
        """The whole denoised horizon [B, horizon, A]."""
        cond = self.global_condition(state, context, env_state)
        shape = self.noise_shape(state.shape[0])
        if noise is None:
            if state.device.type == "meta":
                noise = torch.empty(shape, device=state.device, dtype=self.noise_dtype)
            else:
                noise = torch.randn(shape, device=state.device, dtype=self.noise_dtype)
        elif noise.dim() != 4 or tuple(noise.shape[1:]) != shape[1:]:
            raise ValueError(f"{self.type_name}: noise must be [batch, draws, horizon, action dim] = {list(shape)}, "
                             f"got {list(noise.shape)}")
        noise = noise.to(self.noise_dtype)
        return self.sampler.run(lambda x, t: self.unet(x, t, cond), noise)

    def predict(self, state, context=None, env_state=None, noise=None):
        start = self.obs_steps - 1
        return {"actions": self.chunk(state, context, env_state, noise)[:, start:start + self.params["n_action_steps"]]}

    def meta_forward(self, state, context=None, env_state=None, target=None, mask=None):
        cond = self.global_condition(state, context, env_state)
        b = state.shape[0]
        x = torch.empty((b, self.horizon, self.action_dim), device=state.device, dtype=self.noise_dtype)
        out = self.unet(x, torch.zeros(b, dtype=torch.long, device=state.device), cond)
        start = self.obs_steps - 1
        res = {"actions": out[:, start:start + self.params["n_action_steps"]]}
        if target is not None:
            res["loss"] = ((out - target) ** 2).mean()
        return res
