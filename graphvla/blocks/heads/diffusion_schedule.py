"""Denoising diffusion schedules for the UNet diffusion head (head.diffusion_unet): the forward
process (q(x_t | x_0), what training adds to the action chunk) and two reverse samplers, DDPM
(Ho et al. 2020) and deterministic DDIM (Song et al. 2021, eta = 0). The conventions are those of
Hugging Face diffusers' DDPMScheduler / DDIMScheduler with their defaults, which LeRobot's Diffusion
Policy uses, so a policy trained there samples the same here (tests/test_lerobot_diffusion.py):

  betas          'linear': beta_start..beta_end evenly; 'scaled_linear': the square of evenly spaced
                 square roots; 'squaredcos_cap_v2': beta_i = min(1 - abar((i+1)/N) / abar(i/N), 0.999),
                 abar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2 (Nichol & Dhariwal 2021), in float64
                 then stored as float32
  alpha_bar      the cumulative product of 1 - beta (float32)
  add noise      x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
  inference t's  'leading' spacing: t_k = k * (N // steps), k = steps-1 .. 0
  x_0 estimate   epsilon: (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t); sample: the output itself;
                 clipped to [-clip_range, clip_range] when clip_sample
  DDPM step      x_prev = c0 x_0 + ct x_t + sigma z for t > 0, with c0 = sqrt(abar_prev) beta_t' / (1 - abar_t),
                 ct = sqrt(alpha_t') (1 - abar_prev) / (1 - abar_t), alpha_t' = abar_t / abar_prev,
                 beta_t' = 1 - alpha_t', sigma^2 = max((1 - abar_prev) / (1 - abar_t) beta_t', 1e-20)
                 ('fixed_small'); abar_prev = 1 past the first step
  DDIM step      x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev) eps_hat, eps_hat recomputed from the
                 unclipped x_0 for 'sample' prediction; abar_prev = 1 past the first step (set_alpha_to_one)

The randomness is explicit: `add_noise` takes eps and the timesteps, `Sampler.run` takes every
normal draw it needs as one tensor [B, draws, H, A] (draw 0 the starting x_T, draw k the DDPM noise
of the k-th step; DDIM needs only draw 0).
"""
from __future__ import annotations

import math

import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SAMPLERS = ("DDPM", "DDIM")
PREDICTIONS = ("epsilon", "sample")
MAX_BETA = 0.999


def betas(schedule: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, steps, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return torch.tensor([min(1 - abar((i + 1) / steps) / abar(i / steps), MAX_BETA) for i in range(steps)],
                            dtype=torch.float32)
    raise ValueError(f"unknown beta schedule {schedule!r}: one of {', '.join(BETA_SCHEDULES)}")


def alphas_cumprod(schedule: str, steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    return torch.cumprod(1.0 - betas(schedule, steps, beta_start, beta_end), dim=0)


def add_noise(abar: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0) at integer `timesteps` [B] for x0, eps [B, ...]."""
    a = abar.to(device=x0.device, dtype=x0.dtype)[timesteps.to(x0.device)]
    shape = (-1,) + (1,) * (x0.dim() - 1)
    return (a ** 0.5).reshape(shape) * x0 + ((1 - a) ** 0.5).reshape(shape) * eps


def inference_timesteps(train_steps: int, steps: int) -> list[int]:
    """'leading' spacing, largest first."""
    if not 1 <= steps <= train_steps:
        raise ValueError(f"inference steps must be in [1, {train_steps}] (the training timesteps), got {steps}")
    ratio = train_steps // steps
    return [k * ratio for k in reversed(range(steps))]


class Sampler:
    """One reverse process over fixed timesteps: `kind` DDPM or DDIM, `prediction` epsilon or sample."""

    def __init__(self, abar: torch.Tensor, kind: str, steps: int, prediction: str = "epsilon",
                 clip_sample: bool = True, clip_range: float = 1.0):
        if kind not in SAMPLERS:
            raise ValueError(f"unknown sampler {kind!r}: one of {', '.join(SAMPLERS)}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}: one of {', '.join(PREDICTIONS)}")
        self.abar = abar
        self.kind, self.prediction = kind, prediction
        self.clip_sample, self.clip_range = clip_sample, clip_range
        self.timesteps = inference_timesteps(int(abar.shape[0]), steps)

    @property
    def draws(self) -> int:
        """Normal draws per sample: x_T, plus one per DDPM step with t > 0."""
        return 1 + (sum(1 for t in self.timesteps if t > 0) if self.kind == "DDPM" else 0)

    def _abar(self, t: int, like: torch.Tensor) -> torch.Tensor:
        one = torch.ones((), dtype=self.abar.dtype)
        return (self.abar[t] if t >= 0 else one).to(like.device)

    def step(self, out: torch.Tensor, k: int, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """x_{t_{k+1}} from x at t_k and the network's output there; z the step's noise (DDPM, t > 0)."""
        t = self.timesteps[k]
        prev = self.timesteps[k + 1] if k + 1 < len(self.timesteps) else -1
        a_t, a_prev = self._abar(t, x), self._abar(prev, x)
        b_t = 1 - a_t
        if self.prediction == "epsilon":
            x0 = (x - b_t ** 0.5 * out) / a_t ** 0.5
            eps = out
        else:
            x0 = out
            eps = (x - a_t ** 0.5 * x0) / b_t ** 0.5 if self.kind == "DDIM" else None
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        if self.kind == "DDIM":
            return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
        alpha = a_t / a_prev
        beta = 1 - alpha
        x_prev = (a_prev ** 0.5 * beta) / b_t * x0 + alpha ** 0.5 * (1 - a_prev) / b_t * x
        if t > 0:
            variance = torch.clamp((1 - a_prev) / (1 - a_t) * beta, min=1e-20)
            x_prev = x_prev + variance ** 0.5 * z
        return x_prev

    def run(self, model, noise: torch.Tensor) -> torch.Tensor:
        """Denoise from noise [B, draws, H, A]; model(x [B, H, A], t [B] long) -> output [B, H, A]."""
        x = noise[:, 0]
        draw = 1
        for k, t in enumerate(self.timesteps):
            out = model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device))
            z = None
            if self.kind == "DDPM" and t > 0:
                z = noise[:, draw]
                draw += 1
            x = self.step(out, k, x, z)
        return x
