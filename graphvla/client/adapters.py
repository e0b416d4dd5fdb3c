"""Benchmark adapters: what sits between a simulator and the policy server.

Declared per benchmark in YAML (graphvla/configs/benchmarks/NAME.yaml):

    images:                      # client key -> transform applied before sending
      observation/image: {flip: both, resize: [224, 224]}   # also crop: [top, left, height, width]
    actions:
      execute: 5                 # execute k of the H predicted steps, then query again
      ensemble: null             # or {decay: 0.01}: ACT temporal ensembling, query every step
      delta: null                # or {state_key: observation/state, dims: [0, 1, 2], mode: relative|cumulative}
      gripper: null              # or {index: -1, from: [-1, 1], to: [0, 1], binarize: false, invert: false}
      clip: null                 # or [low, high]

Images are flipped, then cropped, then resized by graphvla.data.images.prepare_frame, the
function that also prepares training and evaluation frames, so a resized client frame has the
pixels training would have made of it.

Order applied to a chunk: delta -> absolute (with the state at query time), then chunk
execution or ensembling, then gripper mapping and clipping of the one action executed."""
from __future__ import annotations

import difflib
from collections import deque
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from ..data.images import FLIPS, prepare_frame

BENCHMARK_DIR = resources.files("graphvla") / "configs" / "benchmarks"  # ships in the package

_TOP_KEYS = {"benchmark", "description", "images", "actions", "env"}
_IMAGE_KEYS = {"flip", "resize", "crop"}
_ACTION_KEYS = {"execute", "ensemble", "delta", "gripper", "clip"}
_DELTA_KEYS = {"state_key", "dims", "state_dims", "mode"}
_GRIPPER_KEYS = {"index", "from", "to", "binarize", "threshold", "invert"}
_ENSEMBLE_KEYS = {"decay"}


class AdapterConfigError(ValueError):
    pass


def _check_keys(where: str, given: dict, allowed: set) -> None:
    if not isinstance(given, dict):
        raise AdapterConfigError(f"{where}: expected a mapping, got {type(given).__name__}")
    for k in given:
        if k not in allowed:
            hint = difflib.get_close_matches(str(k), sorted(allowed), n=1)
            raise AdapterConfigError(f"{where}: unknown key '{k}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                                     + f"; allowed: {', '.join(sorted(allowed))}")


# --- actions -------------------------------------------------------------------------------------

def delta_to_absolute(chunk: np.ndarray, reference: np.ndarray, dims, mode: str = "relative") -> np.ndarray:
    """Turn the delta dims of an [H, A] chunk into absolute targets.

    relative:   a_abs[t] = reference + a[t]            (every step relative to the query-time state)
    cumulative: a_abs[t] = reference + sum_{i<=t} a[i]  (each step relative to the previous one)"""
    out = np.array(chunk, dtype=np.float32, copy=True)
    dims = list(dims)
    ref = np.asarray(reference, dtype=np.float32).reshape(-1)
    if ref.shape[0] != len(dims):
        raise ValueError(f"delta: the reference state has {ref.shape[0]} values for {len(dims)} delta dims")
    if mode == "relative":
        out[:, dims] = ref[None, :] + out[:, dims]
    elif mode == "cumulative":
        out[:, dims] = ref[None, :] + np.cumsum(out[:, dims], axis=0)
    else:
        raise ValueError(f"delta.mode must be 'relative' or 'cumulative', got '{mode}'")
    return out


def map_gripper(action: np.ndarray, index: int = -1, src=(-1.0, 1.0), dst=(0.0, 1.0), binarize: bool = False,
                threshold: float | None = None, invert: bool = False) -> np.ndarray:
    """Linearly map the gripper value from range `src` to `dst` (optionally inverted), then
    optionally binarize to dst's ends at `threshold` (default: dst's midpoint)."""
    out = np.array(action, dtype=np.float32, copy=True)
    g = out[..., index]
    (a, b), (c, d) = src, dst
    u = (np.asarray(g, dtype=np.float64) - a) / (b - a)
    if invert:
        u = 1.0 - u
    v = c + u * (d - c)
    if binarize:
        t = (c + d) / 2.0 if threshold is None else threshold
        v = np.where(v > t, max(c, d), min(c, d))
    out[..., index] = v
    return out


class ChunkExecutor:
    """Execute the first `execute` steps of each predicted chunk, then ask for a new one."""

    def __init__(self, execute: int):
        if execute < 1:
            raise ValueError(f"actions.execute must be >= 1, got {execute}")
        self.execute = execute
        self._pending: deque = deque()

    def reset(self) -> None:
        self._pending.clear()

    def needs_query(self) -> bool:
        return not self._pending

    def add(self, chunk: np.ndarray) -> None:
        if len(chunk) < 1:
            raise ValueError("the policy returned an empty action chunk")
        self._pending.extend(np.asarray(chunk)[: self.execute])

    def next(self) -> np.ndarray:
        return self._pending.popleft()


class TemporalEnsembler:
    """ACT-style temporal ensembling: a chunk is predicted at every step; the action for time t
    averages every chunk's prediction for t with weights exp(-decay * i), i = 0 for the oldest
    prediction (so older predictions weigh more, as in ACT)."""

    def __init__(self, decay: float = 0.01):
        self.decay = float(decay)
        self.reset()

    def reset(self) -> None:
        self._chunks: list[tuple[int, np.ndarray]] = []  # (time the chunk starts at, chunk)
        self._t = 0

    def needs_query(self) -> bool:
        return True

    def add(self, chunk: np.ndarray) -> None:
        self._chunks.append((self._t, np.asarray(chunk, dtype=np.float64)))

    def next(self) -> np.ndarray:
        t = self._t
        self._chunks = [(s, c) for s, c in self._chunks if t - s < len(c)]  # drop chunks that ended
        preds = [c[t - s] for s, c in self._chunks]  # oldest first
        if not preds:
            raise RuntimeError("temporal ensembling needs a chunk for the current step (add() before next())")
        w = np.exp(-self.decay * np.arange(len(preds)))
        self._t += 1
        return (np.tensordot(w / w.sum(), np.stack(preds), axes=1)).astype(np.float32)


class Adapter:
    """Turns simulator observations into requests and predicted chunks into executed actions."""

    def __init__(self, config: dict, name: str = "adapter"):
        self.name = name
        self.config = config = dict(config or {})
        _check_keys(name, config, _TOP_KEYS)
        self.images = {}
        for key, spec in (config.get("images") or {}).items():
            spec = spec or {}
            _check_keys(f"{name}: images.{key}", spec, _IMAGE_KEYS)
            flip = spec.get("flip", "none")
            if flip not in FLIPS:
                raise AdapterConfigError(f"{name}: images.{key}.flip must be one of {', '.join(FLIPS)}, got '{flip}'")
            self.images[key] = {"flip": flip, "resize": spec.get("resize")}
            if spec.get("crop") is not None:
                self.images[key]["crop"] = spec["crop"]
        act = config.get("actions") or {}
        _check_keys(f"{name}: actions", act, _ACTION_KEYS)
        self.delta = act.get("delta")
        if self.delta:
            _check_keys(f"{name}: actions.delta", self.delta, _DELTA_KEYS)
            for k in ("state_key", "dims"):
                if k not in self.delta:
                    raise AdapterConfigError(f"{name}: actions.delta.{k} is required")
        self.gripper = act.get("gripper")
        if self.gripper:
            _check_keys(f"{name}: actions.gripper", self.gripper, _GRIPPER_KEYS)
        self.clip = act.get("clip")
        ens = act.get("ensemble")
        if ens:
            _check_keys(f"{name}: actions.ensemble", ens, _ENSEMBLE_KEYS)
            self.scheduler = TemporalEnsembler(ens.get("decay", 0.01))
        else:
            self.scheduler = ChunkExecutor(int(act.get("execute", 1 << 30)))
        self.queries = 0

    def reset(self) -> None:
        self.scheduler.reset()
        self.queries = 0

    def prepare(self, obs: dict) -> dict:
        """Apply the declared image transforms (flip, crop, resize: `prepare_frame`); other keys
        pass through."""
        out = dict(obs)
        for key, spec in self.images.items():
            if key in out:
                try:
                    out[key] = prepare_frame(out[key], spec["resize"] or None, flip=spec["flip"], crop=spec.get("crop"))
                except ValueError as e:
                    raise ValueError(f"{self.name}: images.{key}: {e}") from None
        return out

    def absolute(self, chunk: np.ndarray, obs: dict) -> np.ndarray:
        chunk = np.asarray(chunk, dtype=np.float32)
        if not self.delta:
            return chunk
        state = np.asarray(obs[self.delta["state_key"]], dtype=np.float32).reshape(-1)
        ref = state[list(self.delta.get("state_dims", self.delta["dims"]))]
        return delta_to_absolute(chunk, ref, self.delta["dims"], self.delta.get("mode", "relative"))

    def finish(self, action: np.ndarray) -> np.ndarray:
        if self.gripper:
            g = self.gripper
            action = map_gripper(action, g.get("index", -1), g.get("from", (-1.0, 1.0)), g.get("to", (0.0, 1.0)),
                                 g.get("binarize", False), g.get("threshold"), g.get("invert", False))
        if self.clip:
            action = np.clip(action, self.clip[0], self.clip[1])
        return np.asarray(action, dtype=np.float32)

    def act(self, obs: dict, query) -> np.ndarray:
        """The action to execute now. `query(request) -> {'actions': [H, A], ...}` is called
        only when the schedule needs a new chunk (every step with ensembling)."""
        if self.scheduler.needs_query():
            reply = query(self.prepare(obs))
            self.queries += 1
            self.scheduler.add(self.absolute(reply["actions"], obs))
        return self.finish(self.scheduler.next())


def load_adapter(name_or_path: str, overrides: dict | None = None) -> Adapter:
    """A benchmark name (graphvla/configs/benchmarks/NAME.yaml) or a YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = BENCHMARK_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.name[: -len(".yaml")] for p in BENCHMARK_DIR.iterdir() if p.name.endswith(".yaml"))
        raise FileNotFoundError(f"no adapter config '{name_or_path}' (benchmarks: {', '.join(known)})")
    config = yaml.safe_load(path.read_text()) or {}
    for key, value in (overrides or {}).items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[last] = value
    return Adapter(config, name=str(path))
