"""Real-time chunking at inference: what a request asks for, and how a chunk honours it.

A robot that keeps moving while the policy computes has, when it sends observation o_t, a queue of
actions of its previous chunk that have not run yet: remaining[0] runs at t, remaining[1] at t+1...
The new chunk's step i is also meant for time t+i. Its first d steps (d = the inference delay in
control steps) will run from the old queue before the new chunk arrives, so they are already
committed; the rest of the overlap (d <= i < R, R = len(remaining)) should continue them smoothly.

- Flow heads (head.flow_matching, head.dual_system): the chunk is inpainted by guided sampling
  (blocks/heads/flow_matching.py Inpainting) with weights from `guidance_weights`: 1 for i < d,
  decaying over d <= i < R (Black et al. 2025's exponential schedule by default), 0 after.
- head.layerwise_discrete_diffusion (starVLA's MaskGIT head): every step with a weight > 0 is pinned
  to the bin of the remaining action there (known-prefix inpainting, method "inpainting"); only the
  other steps are decoded.
- Every other head (head.mlp, head.query_transformer, head.fast, ...): `blend_prefix` on the returned chunk: the
  first d actions are the remaining ones, then a linear blend from them to the new chunk over the
  rest of the overlap.
With d = 0 nothing is committed before the new chunk arrives, and the chunk is left as sampled
(bitwise: the same noise, no guidance).

The request (graphvla/protocol.py keys) travels inside an observation:
    {RTC_KEY: {"delay": d, "remaining_actions": [R, A]}}   or   {RTC_KEY: {"delay": d, "executed": n}}
the second form uses the session's previous chunk from step n on (a session keeps the last chunk
it returned), so a client need not resend actions the server sent it. `parse_request` checks one
and raises RTCRequestError (a ValueError) naming the key."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..blocks.base import with_defaults
from ..protocol import RTC_DELAY_KEY, RTC_EXECUTED_KEY, RTC_KEY, RTC_REMAINING_KEY
from ..spec.sections import INFER

SCHEDULES = ("exp", "linear", "ones", "hard")
_RTC_SCHEMA = INFER["properties"]["rtc"]


class RTCRequestError(ValueError):
    """A real-time chunking request that cannot be served (names the key)."""


@dataclass
class RTCConfig:
    """The graph's `infer: {rtc: {...}}` (spec/sections.py INFER), defaults filled."""

    enabled: bool = True
    max_guidance: float = 5.0
    schedule: str = "exp"
    max_delay: int | None = None

    @classmethod
    def from_spec(cls, spec) -> "RTCConfig":
        values = with_defaults(_RTC_SCHEMA, (spec.section("infer") or {}).get("rtc"))
        return cls(**values)

    def delay_limit(self, horizon: int) -> int:
        limit = horizon - 1
        return limit if self.max_delay is None else min(limit, int(self.max_delay))


@dataclass
class RTCRequest:
    """A checked request: the delay, and either the remaining actions [R, A] or how many actions
    of the session's previous chunk have run (`executed`)."""

    delay: int
    remaining: np.ndarray | None = None
    executed: int | None = None


def _int(value, key: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise RTCRequestError(f"'{RTC_KEY}.{key}': expected an integer, got {type(value).__name__} {value!r:.40}")
    return int(value)


def parse_request(value, horizon: int, action_dim: int, max_delay: int) -> RTCRequest:
    """Check one request (the value of RTC_KEY) against the policy's chunk [horizon, action_dim]."""
    if not isinstance(value, dict):
        raise RTCRequestError(f"'{RTC_KEY}': expected a map with '{RTC_DELAY_KEY}' and '{RTC_REMAINING_KEY}' "
                              f"(or '{RTC_EXECUTED_KEY}'), got {type(value).__name__}")
    known = (RTC_DELAY_KEY, RTC_REMAINING_KEY, RTC_EXECUTED_KEY)
    extra = sorted(str(k) for k in value if k not in known)
    if extra:
        raise RTCRequestError(f"'{RTC_KEY}': unexpected key '{extra[0]}' (keys: {', '.join(known)})")
    if RTC_DELAY_KEY not in value:
        raise RTCRequestError(f"'{RTC_KEY}.{RTC_DELAY_KEY}': missing (the inference delay in control steps)")
    delay = _int(value[RTC_DELAY_KEY], RTC_DELAY_KEY)
    if not 0 <= delay <= max_delay:
        raise RTCRequestError(f"'{RTC_KEY}.{RTC_DELAY_KEY}': {delay} is out of range: expected 0..{max_delay} "
                              f"(the chunk has {horizon} steps)")
    has_remaining, has_executed = RTC_REMAINING_KEY in value, RTC_EXECUTED_KEY in value
    if has_remaining == has_executed:
        raise RTCRequestError(f"'{RTC_KEY}': send exactly one of '{RTC_REMAINING_KEY}' (the actions not yet run, "
                              f"[R, {action_dim}]) and '{RTC_EXECUTED_KEY}' (how many of the previous chunk ran)")
    if has_executed:
        executed = _int(value[RTC_EXECUTED_KEY], RTC_EXECUTED_KEY)
        if not 0 <= executed <= horizon:
            raise RTCRequestError(f"'{RTC_KEY}.{RTC_EXECUTED_KEY}': {executed} is out of range: expected 0..{horizon}")
        if delay > horizon - executed:
            raise RTCRequestError(f"'{RTC_KEY}.{RTC_DELAY_KEY}': {delay} is more than the {horizon - executed} "
                                  f"actions left of the previous chunk")
        return RTCRequest(delay, executed=executed)
    remaining = check_remaining(value[RTC_REMAINING_KEY], horizon, action_dim)
    if delay > len(remaining):
        raise RTCRequestError(f"'{RTC_KEY}.{RTC_DELAY_KEY}': {delay} is more than the {len(remaining)} remaining "
                              f"actions sent (the robot would run out before the new chunk arrives)")
    return RTCRequest(delay, remaining=remaining)


def check_remaining(value, horizon: int, action_dim: int) -> np.ndarray:
    key = f"'{RTC_KEY}.{RTC_REMAINING_KEY}'"
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - ragged lists and the like
        raise RTCRequestError(f"{key}: not an array: {e}") from None
    if arr.dtype.kind not in "iuf":
        raise RTCRequestError(f"{key}: expected numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != action_dim or arr.shape[0] > horizon:
        raise RTCRequestError(f"{key}: expected [R, {action_dim}] with R <= {horizon} (actions of the previous "
                              f"chunk not yet run), got {list(arr.shape)}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise RTCRequestError(f"{key}: holds NaN or infinite values")
    return arr


def remaining_actions(request: RTCRequest, previous: np.ndarray | None) -> np.ndarray | None:
    """The remaining actions of a request: sent, or the session's previous chunk from `executed`
    on (None when the session has returned no chunk yet in this episode: nothing to continue)."""
    if request.remaining is not None:
        return request.remaining
    if previous is None:
        return None
    return np.asarray(previous, dtype=np.float32)[request.executed:]


def guidance_weights(horizon: int, delay: int, overlap: int, schedule: str = "exp") -> np.ndarray:
    """[horizon] weights: 1 for i < delay, the schedule over delay <= i < overlap, 0 from overlap
    on. exp: c * (e^c - 1) / (e - 1) with c = (overlap - i) / (overlap - delay + 1) (Black et al.)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"infer.rtc.schedule: '{schedule}' is not one of {', '.join(SCHEDULES)}")
    w = np.zeros(horizon, dtype=np.float32)
    overlap = min(overlap, horizon)
    w[:delay] = 1.0
    i = np.arange(delay, overlap)
    c = (overlap - i) / (overlap - delay + 1)
    if schedule == "exp":
        w[delay:overlap] = c * np.expm1(c) / (math.e - 1)
    elif schedule == "linear":
        w[delay:overlap] = c
    elif schedule == "ones":
        w[delay:overlap] = 1.0
    return w


def blend_prefix(chunk: np.ndarray, remaining: np.ndarray, delay: int) -> np.ndarray:
    """Prefix replacement with blending for heads that do not sample: steps i < delay are the
    remaining actions exactly; over delay <= i < R the result moves linearly from them to the
    new chunk (weight (R - i) / (R - delay + 1) on the old one); after R, the new chunk."""
    out = np.array(chunk, dtype=np.float32, copy=True)
    r = min(len(remaining), len(out))
    w = guidance_weights(len(out), delay, r, "linear")[:r, None]
    out[:r] = w * remaining[:r] + (1 - w) * out[:r]
    out[:delay] = remaining[:delay]  # exact, not 1.0 * x + 0.0 * y
    return out
