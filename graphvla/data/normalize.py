"""Normalization statistics of a graph's state and action ports: the `Normalizer` that training and
older callers hold (statistics plus modes, `to_dict()` is the plain JSON of `normalization.json`)
and `check_compatible`, which refuses statistics whose ports or widths differ from the graph's.

The math is the processor steps' (processors/normalize.py: `Normalize`, `Unnormalize`); a
Normalizer is a `Normalize` step with its statistics, and its methods call that step."""
from __future__ import annotations

from ..processors.normalize import MODES, NORMALIZED_KINDS, Normalize  # noqa: F401  (MODES: re-exported)


class Normalizer:
    def __init__(self, stats: dict, modes: dict | None = None):
        self.step = Normalize(stats=stats, modes=modes)
        self.stats, self.modes = self.step.stats, self.step.modes

    @classmethod
    def from_step(cls, step: Normalize) -> "Normalizer":
        """The Normalizer of a bound Normalize step (e.g. read from a checkpoint's preprocess.json)."""
        return cls(step.stats, step.modes)

    @classmethod
    def from_spec(cls, stats: dict, spec) -> "Normalizer":
        """Statistics of the spec's state/action ports with the modes from `trainer.normalization`."""
        from .ports import as_spec

        spec = as_spec(spec)
        modes = dict(spec.section("trainer").get("normalization") or {})
        return cls(stats, modes)

    # -- tensors (the step's math) -------------------------------------------------------------
    def normalize(self, batch: dict) -> dict:
        """A copy of `batch` with its state/action ports normalized (other keys untouched)."""
        return self.step(batch)

    def unnormalize(self, port: str, x):
        """Inverse of normalize for one port; torch tensors or numpy arrays, any leading axes."""
        return self.step.unnormalize_value(port, x)

    def normalize_array(self, port: str, x):
        """normalize() for one port's raw values (numpy or torch), e.g. a state sent to the server."""
        return self.step.normalize_value(port, x)

    def _torch(self, port, x):
        return self.step.shift_scale(port, x)

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

