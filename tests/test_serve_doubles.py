"""Test doubles of graphvla.policy.Policy for the server and client tests. They implement the
real policy interface (test_policy_double_has_the_policy_interface checks it against Policy):
metadata, normalization_modes, reset, new_session (a real Session), infer(obs, session=),
infer_batch(observations, sessions=) and check_rtc_request (the real RTC request check), so the
server treats them exactly as it treats a Policy. Only the arithmetic differs: `compute` gives
actions that are an exact function of the observation, so round trips can be checked.

No double sleeps. A test that must act while a request is inside the policy passes `hold`: a
callable each forward calls first (e.g. an Event's wait); `entered` receives each forward's batch
size as it starts, so the test can wait for it."""
from __future__ import annotations

import inspect
import queue
import threading

from pathlib import Path

import numpy as np

from graphvla.policy import rtc as R
from graphvla.policy.session import Session

REPO = Path(__file__).resolve().parents[1]
INPUTS = {
    "images": {"kind": "image", "views": 2, "size": [32, 32]},
    "instruction": {"kind": "text"},
    "state": {"kind": "state", "dim": 8},
}


def expected_actions(obs: dict, horizon: int = 4, dim: int = 3) -> np.ndarray:
    """actions[h, a] = sum(state) + mean(image) + len(text) + 10 h + a."""
    img = obs["images"].astype(np.float64)
    img_mean = img.mean() / 255.0 if obs["images"].dtype == np.uint8 else img.mean()
    base = float(np.sum(obs["state"], dtype=np.float64)) + img_mean + len(obs["instruction"])
    return (base + 10 * np.arange(horizon)[:, None] + np.arange(dim)[None, :]).astype(np.float32)


class PolicyDouble:
    """Policy's interface around `compute(obs, session) -> outputs` (subclasses define it)."""

    def __init__(self, horizon: int, dim: int, inputs: dict, name: str = "double", normalization=None,
                 hold=None):
        self.horizon, self.dim, self.name = horizon, dim, name
        self.inputs = {k: dict(v) for k, v in inputs.items()}
        self._normalization = dict(normalization or {})
        self.rtc = R.RTCConfig()
        self.hold = hold
        self.entered: queue.Queue[int] = queue.Queue()
        self.batch_sizes: list[int] = []
        self.resets = 0
        self._lock = threading.Lock()

    def compute(self, obs: dict, session: Session | None) -> dict:
        raise NotImplementedError

    def normalization_modes(self) -> dict:
        return dict(self._normalization)

    @property
    def metadata(self) -> dict:
        return {"name": self.name, "fingerprint": "f" * 64, "action_horizon": self.horizon, "action_dim": self.dim,
                "inputs": {k: dict(v) for k, v in self.inputs.items()}, "outputs": ["actions"],
                "normalization": self.normalization_modes(),
                "privileged": any(d.get("privileged") for d in self.inputs.values()),
                "rtc": {"enabled": self.rtc.enabled, "method": "blend", "max_delay": self.rtc.delay_limit(self.horizon),
                        "schedule": self.rtc.schedule, "max_guidance": self.rtc.max_guidance}}

    def reset(self) -> None:
        self.resets += 1

    def set_temporal_ensemble(self, coeff: float) -> None:
        # the double computes no ensemble; it keeps the coefficient so serve's option can be checked
        self.temporal_ensemble = float(coeff)

    @property
    def has_caches(self) -> bool:
        return False  # nothing is kept between calls but what sessions hold

    def new_session(self, seed: int = 0) -> Session:
        return Session(seed)

    def check_rtc_request(self, value) -> R.RTCRequest:
        if isinstance(value, R.RTCRequest):
            return value
        return R.parse_request(value, self.horizon, self.dim, self.rtc.delay_limit(self.horizon))

    def infer(self, obs: dict, session: Session | None = None, **options) -> dict:
        return self.infer_batch([obs], None if session is None else [session], **options)[0]

    def infer_batch(self, observations: list, sessions: list | None = None, **options) -> list[dict]:
        if sessions is not None and len(sessions) != len(observations):
            raise ValueError(f"{len(sessions)} sessions for {len(observations)} observations")
        with self._lock:
            self.batch_sizes.append(len(observations))
        self.entered.put(len(observations))
        if self.hold is not None:
            self.hold()
        sessions = sessions or [None] * len(observations)
        outs = [self.compute(o, s) for o, s in zip(observations, sessions)]  # all or nothing, as Policy
        for s, out in zip(sessions, outs):
            if s is not None:
                s.steps += 1
                s.previous_actions = np.asarray(out["actions"], dtype=np.float32)
        return outs


class DoublePolicy(PolicyDouble):
    """Actions = expected_actions(obs); the instruction "crash" raises RuntimeError, "invalid" a
    ValueError naming the input."""

    def __init__(self, horizon=4, dim=3, inputs=None, hold=None):
        super().__init__(horizon, dim, inputs or INPUTS, hold=hold,
                         normalization={"state": "mean_std", "actions": "mean_std"})

    def compute(self, obs, session):
        for port, decl in self.inputs.items():
            if port not in obs and not decl.get("optional"):
                raise ValueError(f"missing input '{port}'")
        if obs["instruction"] == "crash":
            raise RuntimeError("boom")
        if obs["instruction"] == "invalid":
            raise ValueError("instruction: 'invalid' is not allowed")
        return {"actions": expected_actions(obs, self.horizon, self.dim)}


# Policy's public members that only a graph has (what the export calls to feed a sampling head):
# the double leaves them out, and the serving layer must not use them
GRAPH_ONLY = {"draw_noise"}


def test_policy_double_has_the_policy_interface():
    """Every public method and property of Policy exists on the double with the same parameters,
    so the server cannot rely on anything a Policy lacks (or the double lacks)."""
    from graphvla.policy.policy import Policy

    serving = "".join(p.read_text() for p in (REPO / "graphvla" / "runners" / "serve").glob("*.py"))
    for name, member in vars(Policy).items():
        if name.startswith("_") or isinstance(member, classmethod):
            continue
        if name in GRAPH_ONLY:
            assert f".{name}" not in serving, f"the server uses Policy.{name}, which the double lacks"
            continue
        mine = getattr(PolicyDouble, name, None)
        assert mine is not None, f"the double lacks Policy.{name}"
        if isinstance(member, property):
            assert isinstance(mine, property), f"Policy.{name} is a property"
            continue
        theirs = list(inspect.signature(member).parameters)
        assert list(inspect.signature(mine).parameters) == theirs, f"{name}: Policy takes {theirs}"


def test_policy_double_sessions_and_rtc():
    policy = DoublePolicy()
    obs = {"images": np.zeros((2, 32, 32, 3), np.uint8), "instruction": "x", "state": np.ones(8, np.float32)}
    session = policy.new_session(3)
    out = policy.infer(obs, session=session)
    np.testing.assert_array_equal(out["actions"], expected_actions(obs))
    assert session.steps == 1 and np.array_equal(session.previous_actions, out["actions"])
    request = policy.check_rtc_request({"delay": 1, "executed": 2})
    assert request.delay == 1 and request.executed == 2
    try:
        policy.check_rtc_request({"delay": 4, "executed": 0})  # the horizon is 4: delays up to 3
    except R.RTCRequestError as e:
        assert "delay" in str(e)
    else:
        raise AssertionError("a delay beyond the horizon was accepted")
