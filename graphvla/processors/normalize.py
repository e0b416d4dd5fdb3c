"""Normalization as processor steps: `Normalize` (preprocess: state/action ports -> normalized) and
`Unnormalize` (postprocess: an action output -> dataset units). This module is the one place the
normalization math lives; data/normalize.Normalizer and the export call into it.

Modes per port: mean_std (x - mean) / std, min_max and q01_q99 map [lo, hi] to [-1, 1], identity.
A dimension whose spread is ~0 (a constant joint, a zero-padded width) is only shifted, never
divided, so it stays finite. Masks are respected: steps or widths a mask (`PORT_mask`,
`PORT_dim_mask`) marks as padding are set to 0 after normalization, so padded targets never carry
large values into a loss.

A step is built unbound by the compiler (the ports and the spec's modes; the statistics come from
the data) and bound with `with_statistics(stats, modes)`. Bound, its statistics are saved as an
asset file (`statistics.json`, plain JSON floats: a round trip is exact) and reloaded with it.

Numerics: tensors are computed in their own dtype with shift and scale cast to it (the training
collate and `Policy`); numpy arrays (`normalize_array`: real-time chunking's remaining actions, a
declared hold action) in float64 and returned as float32."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .base import ProcessorStep, StepError, register_step

MODES = ("mean_std", "min_max", "q01_q99", "identity")
NORMALIZED_KINDS = ("state", "action")
STATISTICS_FILE = "statistics.json"
_TINY = 1e-6


def shift_scale_of(stats: dict, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) float64 of one port's statistics: normalized = (x - shift) / scale."""
    if mode == "identity":
        d = len(next(iter(stats.values())))
        return np.zeros(d), np.ones(d)
    if mode == "mean_std":
        shift, spread = np.asarray(stats["mean"]), np.asarray(stats["std"])
    else:
        lo, hi = ("min", "max") if mode == "min_max" else ("q01", "q99")
        lo, hi = np.asarray(stats[lo]), np.asarray(stats[hi])
        shift, spread = (lo + hi) / 2, (hi - lo) / 2
    scale = np.where(spread < _TINY, 1.0, spread)
    return shift, scale


def _plain_stats(stats: dict) -> dict:
    return {p: {k: [float(v) for v in vals] for k, vals in s.items()} for p, s in stats.items()}


def bind_modes(stats: dict, modes: dict | None) -> dict:
    """Port -> mode for every port with statistics (mean_std unless `modes` says otherwise); a mode
    that is not one of MODES, or one named for a port without statistics, is an error naming it."""
    out = {p: "mean_std" for p in stats}
    for port, mode in (modes or {}).items():
        if mode not in MODES:
            raise ValueError(f"normalization mode '{mode}' for '{port}' is not one of {', '.join(MODES)}")
        if port not in stats and mode != "identity":
            raise ValueError(f"trainer.normalization names '{port}' but there are statistics only for "
                             f"{', '.join(stats) or 'no port'}")
        if port in stats:
            out[port] = mode
    return out


class _Statistics:
    """The math both steps share: per-port (shift, scale) from statistics and a mode."""

    stats: dict
    modes: dict

    def _bind(self, stats: dict | None, modes: dict | None):
        self.stats = None if stats is None else _plain_stats(stats)
        self.modes = dict(modes or {}) if stats is None else bind_modes(self.stats, modes)
        self._params = {} if stats is None else {p: shift_scale_of(self.stats[p], self.modes[p]) for p in self.stats}

    @property
    def bound(self) -> bool:
        return self.stats is not None

    def _need_bound(self, port: str):
        if self.stats is None:
            raise StepError(f"{self.block or 'normalize'}: port '{port}': the {self.kind} step has no statistics "
                            "bound (with_statistics(stats) after loading the data, or load a checkpoint's pipeline)")
        if port not in self._params:
            raise KeyError(f"no normalization statistics for '{port}' (have: {', '.join(self.stats)})")

    def shift_scale(self, port: str, like: torch.Tensor | None = None):
        """(shift, scale) of `port`: torch tensors in `like`'s dtype and device (what the step
        computes with: an export folds these), else the float64 numpy arrays."""
        self._need_bound(port)
        shift, scale = self._params[port]
        if like is None:
            return shift, scale
        d = like.shape[-1]
        if d != len(shift):
            raise StepError(f"{self.block or 'normalize'}: port '{port}', sample 0: width {d}, but its statistics "
                            f"have width {len(shift)}")
        return (torch.as_tensor(shift, dtype=like.dtype, device=like.device),
                torch.as_tensor(scale, dtype=like.dtype, device=like.device))

    def normalize_value(self, port: str, x):
        """(x - shift) / scale for one port's raw values (numpy -> float32, or a tensor)."""
        if torch.is_tensor(x):
            shift, scale = self.shift_scale(port, x)
            return (x - shift) / scale
        shift, scale = self.shift_scale(port)
        x = np.asarray(x, dtype=np.float32)
        return ((x - shift) / scale).astype(np.float32)

    def unnormalize_value(self, port: str, x):
        """x * scale + shift for one port; tensors, or numpy arrays (float dtype kept, else float32)."""
        if torch.is_tensor(x):
            shift, scale = self.shift_scale(port, x)
            return x * scale + shift
        shift, scale = self.shift_scale(port)
        x = np.asarray(x)
        return (x * scale + shift).astype(x.dtype if x.dtype.kind == "f" else np.float32)

    def _save_stats(self, folder: Path) -> None:
        if self.stats is not None:
            (Path(folder) / STATISTICS_FILE).write_text(json.dumps(self.stats, indent=1) + "\n")

    @staticmethod
    def _load_stats(config: dict, folder: Path):
        if not config.get("bound"):
            return None
        path = Path(folder) / STATISTICS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the statistics of a bound {config.get('kind', 'normalization')} step "
                                    "are missing")
        return json.loads(path.read_text())

    def __eq__(self, other):
        return type(other) is type(self) and self.config() == other.config() and self.stats == other.stats

    __hash__ = None


def _apply_masks(y, step_mask, dim_mask):
    if step_mask is not None and torch.is_tensor(step_mask) and y.dim() >= step_mask.dim() + 1:
        y = y * step_mask.to(y.dtype).unsqueeze(-1)
    if dim_mask is not None and torch.is_tensor(dim_mask):
        m = dim_mask.to(y.dtype)
        while m.dim() < y.dim():
            m = m.unsqueeze(-2)
        y = y * m
    return y


@register_step
class Normalize(_Statistics, ProcessorStep):
    """Preprocess: the graph's state/action input ports -> normalized (masks applied). Ports the
    batch lacks (actions at inference) are left out; other keys pass through untouched."""

    kind = "normalize"
    tensor_only = True

    def __init__(self, ports=(), modes: dict | None = None, stats: dict | None = None):
        self._bind(stats, modes)
        # unbound: the graph's candidate ports; bound: those with statistics, in their order
        self.ports = tuple(ports) if stats is None else tuple(self.stats)
        self.reads = self.writes = self.ports

    def with_statistics(self, stats: dict | None, modes: dict | None = None):
        """This step bound to `stats` (modes: `modes`, else the spec's); None without statistics."""
        if stats is None:
            return None
        return Normalize(modes=self.modes if modes is None else modes, stats=stats)

    def __call__(self, batch: dict) -> dict:
        if self.stats is None and any(torch.is_tensor(batch.get(p)) for p in self.ports):
            self._need_bound(next(p for p in self.ports if torch.is_tensor(batch.get(p))))
        out = dict(batch)
        for port in self.ports:
            x = batch.get(port)
            if x is None or not torch.is_tensor(x):
                continue
            shift, scale = self.shift_scale(port, x)
            y = (x - shift) / scale
            out[port] = _apply_masks(y, batch.get(f"{port}_mask"), batch.get(f"{port}_dim_mask"))
        return out

    def describe(self) -> str:
        ports = ", ".join(f"{p} ({self.modes.get(p, 'mean_std')})" for p in self.ports) or "no port"
        return f"normalize  {ports}" + ("" if self.bound else "  [statistics from the data]")

    def config(self) -> dict:
        return {"ports": list(self.ports), "modes": dict(self.modes), "bound": self.bound}

    def save_assets(self, folder: Path) -> None:
        self._save_stats(folder)

    @classmethod
    def load(cls, config: dict, folder: Path) -> "Normalize":
        return cls(config.get("ports", ()), config.get("modes"), cls._load_stats({**config, "kind": cls.kind}, folder))


@register_step
class Unnormalize(_Statistics, ProcessorStep):
    """Postprocess: graph outputs -> dataset units with the statistics of the input port each one
    predicts (an output named like an input uses that input's; else the one normalized input of
    the output's kind, when exactly one). `normalize_array(output, x)` goes the other way, for
    values in dataset units the graph must see normalized (real-time chunking's remaining actions).

    Unbound, `outputs` maps an output to {'kind', 'input'} (its kind, whether an input has its
    name) and `inputs` the graph's state/action inputs to their kinds; bound, `outputs` maps an
    output to its input port."""

    kind = "unnormalize"
    tensor_only = True

    def __init__(self, outputs: dict, inputs: dict | None = None, modes: dict | None = None,
                 stats: dict | None = None):
        self._bind(stats, modes)
        self.inputs = dict(inputs or {})
        if stats is None:
            self.outputs = {o: dict(v) for o, v in outputs.items()}
        else:
            self.outputs = {o: p for o, p in outputs.items() if p in self.stats}
            self.stats = {p: self.stats[p] for p in dict.fromkeys(self.outputs.values())}
            self.modes = {p: self.modes[p] for p in self.stats}
            self._params = {p: self._params[p] for p in self.stats}
        self.reads = self.writes = tuple(self.outputs)

    def with_statistics(self, stats: dict | None, modes: dict | None = None):
        """Bound to `stats`: each output's port chosen among the inputs with statistics; None when
        no output has one (nothing to un-normalize)."""
        if stats is None:
            return None
        full = bind_modes(_plain_stats(stats), self.modes if modes is None else modes)
        if self.bound:  # bound again (new statistics): each output keeps its port
            outputs = {o: p for o, p in self.outputs.items() if p in full}
            return Unnormalize(outputs, self.inputs, full, stats) if outputs else None
        outputs = {}
        for name, o in self.outputs.items():
            if o.get("input"):
                port = name if name in full else None
            else:
                same = [p for p, kind in self.inputs.items() if kind == o["kind"] and p in full]
                port = same[0] if len(same) == 1 else None
            if port is not None:
                outputs[name] = port
        if not outputs:
            return None
        return Unnormalize(outputs, self.inputs, full, stats)

    def port_of(self, output: str) -> str | None:
        """The input port whose statistics un-normalize `output` (None: it stays as it is)."""
        return self.outputs.get(output) if self.bound else None

    def normalize_array(self, output: str, x):
        """Values of `output` in dataset units -> normalized (numpy float32, or a tensor)."""
        return self.normalize_value(self.outputs[output], x)

    def __call__(self, outputs: dict) -> dict:
        out = dict(outputs)
        for name in self.outputs:
            value = outputs.get(name)
            if isinstance(value, torch.Tensor):
                if not self.bound:
                    self._need_bound(name)
                out[name] = self.unnormalize_value(self.outputs[name], value.float())
        return out

    def describe(self) -> str:
        if self.bound:
            items = [f"{o} (with {p}: {self.modes[p]})" for o, p in self.outputs.items()]
        else:
            items = [f"{o} ({v['kind']})" for o, v in self.outputs.items()]
        return f"unnormalize  {', '.join(items) or 'no output'}" + ("" if self.bound else "  [statistics from the data]")

    def config(self) -> dict:
        return {"outputs": dict(self.outputs), "inputs": dict(self.inputs), "modes": dict(self.modes),
                "bound": self.bound}

    def save_assets(self, folder: Path) -> None:
        self._save_stats(folder)

    @classmethod
    def load(cls, config: dict, folder: Path) -> "Unnormalize":
        return cls(config["outputs"], config.get("inputs"), config.get("modes"),
                   cls._load_stats({**config, "kind": cls.kind}, folder))


def normalization_steps(pipeline) -> tuple:
    """(the Normalize step, the Unnormalize step) of a pipeline or pipelines' steps (None where absent)."""
    steps = [s for p in (pipeline if isinstance(pipeline, (list, tuple)) else [pipeline]) if p is not None for s in p]
    return (next((s for s in steps if isinstance(s, Normalize)), None),
            next((s for s in steps if isinstance(s, Unnormalize)), None))
