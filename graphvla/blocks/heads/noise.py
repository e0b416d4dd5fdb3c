"""The starting noise of the sampling heads (the blocks whose predict takes `noise`), behind one
method: `head.draw_noise(batch, generator, device)`. graphvla.policy.Policy (each row from its
session's generator) and `graphvla check` ask the head for its draws; they do not know which head
draws what. An export records the head's `noise_distribution` in its manifest, and its server
(runners/exported.py) draws by that name with `draw`, the same draws as the head's.

A sampling head (`SamplingHead`) says `noise_shape(batch)` and `noise_dtype`, and
`noise_distribution` when its draws are not standard normal (NORMAL).

`generator` is None (torch's global generator), one torch.Generator for the whole batch, or a list
of one generator per row: row i is then drawn from generator i alone (on the generator's device,
then moved), so a row gets the same noise whatever else is in its batch (one client session per row
on the server)."""
from __future__ import annotations

import torch

NORMAL = "normal"  # standard normal: the flow heads' and head.diffusion_unet's starting noise
# head.layerwise_discrete_diffusion's decoding draws (see draw_maskgit_noise)
NOISE_BIN, NOISE_BIT = "maskgit-exponential", "maskgit-uniform"


def initial_noise(shape, generator, device, dtype) -> torch.Tensor:
    """Standard normal noise of `shape` (NORMAL), float32 on a per-row generator's device, then moved."""
    if device.type == "meta":
        return torch.empty(shape, device=device, dtype=dtype)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generator]
        return torch.cat([r.to(device) for r in rows]).to(dtype)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def draw_maskgit_noise(distribution: str, shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    """The decoding's draws [B, S, H, A, K + 1]: [..., :K] Exp(1) (NOISE_BIN) or U(0, 1) (NOISE_BIT),
    then [..., K] the ranking uniform."""
    if distribution not in (NOISE_BIN, NOISE_BIT):
        raise ValueError(f"unknown noise distribution {distribution!r} (expected {NOISE_BIN} or {NOISE_BIT})")
    if device.type == "meta":
        return torch.empty(shape, device=device, dtype=dtype)
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        rows = [draw_maskgit_noise(distribution, (1, *shape[1:]), g, g.device) for g in generator]
        return torch.cat([r.to(device) for r in rows]).to(dtype)
    kw = {} if generator is None else {"generator": generator}
    dev = device if generator is None else generator.device
    draws = torch.empty((*shape[:-1], shape[-1] - 1), device=dev)
    draws = draws.exponential_(1, **kw) if distribution == NOISE_BIN else draws.uniform_(0, 1, **kw)
    choice = torch.rand((*shape[:-1], 1), device=dev, **kw)
    return torch.cat([draws, choice], dim=-1).to(device=device, dtype=dtype)


def draw(distribution: str, shape, generator, device, dtype) -> torch.Tensor:
    """Noise of `shape` drawn as `distribution` (NORMAL, NOISE_BIN or NOISE_BIT) says."""
    if distribution == NORMAL:
        return initial_noise(shape, generator, device, dtype)
    return draw_maskgit_noise(distribution, shape, generator, device, dtype)


class SamplingHead:
    """Mixed into a block whose predict takes `noise`; the block defines noise_shape(batch) and
    noise_dtype."""

    noise_distribution = NORMAL  # how predict's `noise` is drawn (an export's manifest records it)

    def draw_noise(self, batch: int, generator, device) -> torch.Tensor:
        """predict's starting noise for a batch of `batch` rows (generator: see the module docstring)."""
        return draw(self.noise_distribution, self.noise_shape(batch), generator, device, self.noise_dtype)
