"""Normalization of state and action ports with saved statistics.

Modes per port: mean_std (x - mean) / std, min_max and q01_q99 map [lo, hi] to [-1, 1], identity.
A dimension whose spread is ~0 (a constant joint, a zero-padded width) is only shifted, never
divided, so it stays finite. Masks are respected: steps or widths a mask marks as padding are set
to 0 after normalization, so padded targets never carry large values into a loss.

`to_dict()` is plain JSON (saved in checkpoints, read by the policy server); `check_compatible`
refuses statistics whose ports or widths differ from the graph's."""
from __future__ import annotations

import numpy as np
import torch

MODES = ("mean_std", "min_max", "q01_q99", "identity")
NORMALIZED_KINDS = ("state", "action")
_TINY = 1e-6


class Normalizer:
    def __init__(self, stats: dict, modes: dict | None = None):
        self.stats = {p: {k: [float(v) for v in vals] for k, vals in s.items()} for p, s in stats.items()}
        self.modes = {p: "mean_std" for p in self.stats}
        for port, mode in (modes or {}).items():
            if mode not in MODES:
                raise ValueError(f"normalization mode '{mode}' for '{port}' is not one of {', '.join(MODES)}")
            if port not in self.stats and mode != "identity":
                raise ValueError(f"trainer.normalization names '{port}' but there are statistics only for "
                                 f"{', '.join(self.stats) or 'no port'}")
            if port in self.stats:
                self.modes[port] = mode
        self._params = {p: self._shift_scale(p) for p in self.stats}

    @classmethod
    def from_spec(cls, stats: dict, spec) -> "Normalizer":
        """Statistics of the spec's state/action ports with the modes from `trainer.normalization`."""
        from .ports import as_spec

        spec = as_spec(spec)
        modes = dict(spec.section("trainer").get("normalization") or {})
        return cls(stats, modes)

    def _shift_scale(self, port):
        s, mode = self.stats[port], self.modes[port]
        if mode == "identity":
            d = len(next(iter(s.values())))
            return np.zeros(d), np.ones(d)
        if mode == "mean_std":
            shift, spread = np.asarray(s["mean"]), np.asarray(s["std"])
        else:
            lo, hi = ("min", "max") if mode == "min_max" else ("q01", "q99")
            lo, hi = np.asarray(s[lo]), np.asarray(s[hi])
            shift, spread = (lo + hi) / 2, (hi - lo) / 2
        scale = np.where(spread < _TINY, 1.0, spread)
        return shift, scale

    # -- tensors -------------------------------------------------------------------------------
    def normalize(self, batch: dict) -> dict:
        """A copy of `batch` with its state/action ports normalized (other keys untouched)."""
        out = dict(batch)
        for port in self.stats:
            x = batch.get(port)
            if x is None or not torch.is_tensor(x):
                continue
            shift, scale = self._torch(port, x)
            y = (x - shift) / scale
            out[port] = _apply_masks(y, batch.get(f"{port}_mask"), batch.get(f"{port}_dim_mask"))
        return out

    def unnormalize(self, port: str, x):
        """Inverse of normalize for one port; torch tensors or numpy arrays, any leading axes."""
        if port not in self.stats:
            raise KeyError(f"no normalization statistics for '{port}' (have: {', '.join(self.stats)})")
        if torch.is_tensor(x):
            shift, scale = self._torch(port, x)
            return x * scale + shift
        shift, scale = self._params[port]
        x = np.asarray(x)
        return (x * scale + shift).astype(x.dtype if x.dtype.kind == "f" else np.float32)

    def normalize_array(self, port: str, x):
        """normalize() for one port's raw values (numpy or torch), e.g. a state sent to the server."""
        if torch.is_tensor(x):
            shift, scale = self._torch(port, x)
            return (x - shift) / scale
        shift, scale = self._params[port]
        x = np.asarray(x, dtype=np.float32)
        return ((x - shift) / scale).astype(np.float32)

    def _torch(self, port, x):
        shift, scale = self._params[port]
        d = x.shape[-1]
        if d != len(shift):
            raise ValueError(f"'{port}' has width {d} but its statistics have width {len(shift)}")
        return (torch.as_tensor(shift, dtype=x.dtype, device=x.device), torch.as_tensor(scale, dtype=x.dtype, device=x.device))

    # -- persistence and checks ----------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"stats": self.stats, "modes": self.modes}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        return cls(d["stats"], d.get("modes"))

    def check_compatible(self, spec) -> None:
        """Raise ValueError naming the port when statistics and the graph's state/action ports
        differ in names or widths."""
        from .ports import used_ports

        ports = {n: p for n, p in used_ports(spec).items() if p.kind in NORMALIZED_KINDS}
        problems = []
        for name, p in ports.items():
            if name not in self.stats:
                if not p.optional:
                    problems.append(f"the graph's {p.kind} port '{name}' has no statistics (statistics cover: "
                                    f"{', '.join(self.stats) or 'nothing'})")
                continue
            width = len(self.stats[name]["mean"] if "mean" in self.stats[name] else next(iter(self.stats[name].values())))
            if width != p.dim:
                problems.append(f"statistics of '{name}' have width {width} but the graph's {p.kind} port '{name}' "
                                f"declares dim: {p.dim}")
        for name in self.stats:
            if name not in ports:
                problems.append(f"statistics for '{name}', which is not a state/action input of the graph "
                                f"(inputs: {', '.join(ports) or 'none'})")
        if problems:
            raise ValueError("normalization statistics do not match the graph: " + "; ".join(problems))


def _apply_masks(y, step_mask, dim_mask):
    if step_mask is not None and torch.is_tensor(step_mask) and y.dim() >= step_mask.dim() + 1:
        y = y * step_mask.to(y.dtype).unsqueeze(-1)
    if dim_mask is not None and torch.is_tensor(dim_mask):
        m = dim_mask.to(y.dtype)
        while m.dim() < y.dim():
            m = m.unsqueeze(-2)
        y = y * m
    return y
