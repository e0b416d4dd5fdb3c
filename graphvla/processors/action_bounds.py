"""`action_bounds`: a postprocess step on normalized action outputs, before un-normalization: clamp
to [low, high], threshold chosen channels to {0, 1} (value < threshold -> 0, else 1), and set
`zero` channels to 0 (a dimension whose statistics have no spread: un-normalized to its value).

This is what starVLA's deployments do to a QwenOFT chunk before the q01/q99 rescale
(`FrameworkTools.unnormalize_actions`: clip to [-1, 1], the gripper channel binarised at 0.5), so a
run imported from a starVLA checkpoint (`graphvla import starvla`) serves what starVLA serves. It
is data in postprocess.json (no assets). Trained GraphVLA graphs do not add it."""
from __future__ import annotations

import torch

from .base import ProcessorStep, register_step


@register_step
class ActionBounds(ProcessorStep):
    kind = "action_bounds"
    tensor_only = True

    def __init__(self, outputs=("actions",), low: float = -1.0, high: float = 1.0, binary: dict | None = None,
                 zero=()):
        self.outputs = tuple(outputs)
        self.low, self.high = float(low), float(high)
        if self.low >= self.high:
            raise ValueError(f"action_bounds: low {self.low} is not below high {self.high}")
        # channel index (of the last dimension) -> threshold
        self.binary = {int(k): float(v) for k, v in (binary or {}).items()}
        self.zero = tuple(int(c) for c in zero)  # channels set to 0 (a dimension whose q01 == q99)
        self.reads = self.writes = self.outputs

    def __call__(self, batch: dict) -> dict:
        out = dict(batch)
        for name in self.outputs:
            x = batch.get(name)
            if not isinstance(x, torch.Tensor):
                continue
            y = x.clamp(self.low, self.high)
            if self.binary or self.zero:
                d = y.shape[-1]
                y = y.clone() if y is x else y
                for ch in [*self.binary, *self.zero]:
                    if not -d <= ch < d:
                        raise ValueError(f"action_bounds: channel {ch} is outside '{name}' of width {d}")
                for ch, threshold in self.binary.items():
                    y[..., ch] = (y[..., ch] >= threshold).to(y.dtype)
                for ch in self.zero:
                    y[..., ch] = 0
            out[name] = y
        return out

    def config(self) -> dict:
        return {"outputs": list(self.outputs), "low": self.low, "high": self.high,
                "binary": {str(k): v for k, v in self.binary.items()}, "zero": list(self.zero)}

    @classmethod
    def load(cls, config: dict, folder) -> "ActionBounds":
        return cls(config.get("outputs", ("actions",)), config.get("low", -1.0), config.get("high", 1.0),
                   config.get("binary"), config.get("zero", ()))

    def describe(self) -> str:
        bins = "".join(f", channel {k} -> {{0, 1}} at {v}" for k, v in self.binary.items())
        return f"action_bounds  {', '.join(self.outputs)}: clamp [{self.low}, {self.high}]{bins}"

    def __eq__(self, other):
        return isinstance(other, ActionBounds) and self.config() == other.config()

    __hash__ = None
