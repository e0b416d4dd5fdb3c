"""Asynchronous execution: the robot runs actions from a queue while the next chunk is computed.

`ActionQueue` is the bookkeeping alone (no threads, no clock), so a simulation with a simulated
latency and a real robot loop run the same code:
- the queue holds the actions still to run; `pop()` runs one (the clock counts pops);
- `needs_request()` is true when it holds `threshold` actions or fewer and no request is out;
- `begin_request()` snapshots the remaining actions and the time the observation was taken;
- `on_chunk(chunk)` merges a reply: the chunk's step 0 is the time of its observation, so the
  k actions that ran since then are skipped and the rest replaces or joins the queue:
    switch    queue = chunk[k:]                              (naive asynchronous switching)
    ensemble  overlapping steps average the old and new predictions with ACT's weights
              exp(-decay * i), i = 0 for the oldest prediction; the rest is appended
    rtc       queue = chunk[k:], and every request carries the remaining actions and the expected
              delay (graphvla/protocol.py RTC_KEY) so the server makes chunk[k:] continue them.

`RealtimeClient` (blocking API, one worker thread) and `AsyncRealtimeClient` (asyncio) drive an
ActionQueue with a PolicyClient / AsyncPolicyClient: call `step(obs)` once per control tick with the
current observation; it starts a request in the background when the queue is low and returns the
next action at once (it waits only when the queue is empty). The delay sent with rtc is `delay`
when given, else the largest number of ticks the last few replies took to arrive.
Plain openpi servers work with switch and ensemble; rtc needs a graphvla server."""
from __future__ import annotations

import asyncio
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..protocol import RTC_DELAY_KEY, RTC_KEY, RTC_REMAINING_KEY

MERGES = ("switch", "ensemble", "rtc")


class ActionQueue:
    def __init__(self, threshold: int, merge: str = "rtc", ensemble_decay: float = 0.01):
        if merge not in MERGES:
            raise ValueError(f"merge: '{merge}' is not one of {', '.join(MERGES)}")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ValueError(f"threshold: expected an integer >= 0, got {threshold!r}")
        self.threshold, self.merge, self.decay = threshold, merge, float(ensemble_decay)
        self.reset()

    def reset(self) -> None:
        # per queued step: (sum of weighted predictions, sum of weights, how many predictions)
        self._steps: deque = deque()
        self.t = 0  # actions run so far in this episode
        self.requested_at: int | None = None
        self.chunks = 0

    def __len__(self) -> int:
        return len(self._steps)

    def remaining(self) -> np.ndarray:
        """The actions still to run, as they would run ([R, A]; [0, 0] when empty)."""
        if not self._steps:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([s / w for s, w, _ in self._steps]).astype(np.float32)

    def needs_request(self) -> bool:
        return self.requested_at is None and len(self._steps) <= self.threshold

    def begin_request(self, delay: int = 0) -> dict:
        """Mark a request as out (its observation is taken now); returns what to add to it: with
        rtc and actions queued, {RTC_KEY: {delay, remaining_actions}}, else {}."""
        if self.requested_at is not None:
            raise RuntimeError("a request is already out; merge its chunk with on_chunk() first")
        self.requested_at = self.t
        if self.merge != "rtc" or not self._steps:
            return {}
        remaining = self.remaining()
        return {RTC_KEY: {RTC_DELAY_KEY: int(min(delay, len(remaining))), RTC_REMAINING_KEY: remaining}}

    def on_chunk(self, chunk) -> int:
        """Merge the reply to the request that is out; returns k, the actions that ran meanwhile."""
        if self.requested_at is None:
            raise RuntimeError("on_chunk() without a request out (call begin_request() first)")
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or len(chunk) == 0:
            raise ValueError(f"expected an action chunk [H, A], got shape {list(chunk.shape)}")
        k = self.t - self.requested_at
        self.requested_at = None
        self.chunks += 1
        new = chunk[k:]
        if self.merge == "ensemble":
            merged = deque()
            for j, action in enumerate(new):
                if j < len(self._steps):
                    s, w, n = self._steps[j]
                    weight = math.exp(-self.decay * n)
                    merged.append((s + weight * action, w + weight, n + 1))
                else:
                    merged.append((action.copy(), 1.0, 1))
            merged.extend(list(self._steps)[len(new):])  # a longer old queue keeps its tail
            self._steps = merged
        else:
            self._steps = deque((a.copy(), 1.0, 1) for a in new)
        return k

    def pop(self) -> np.ndarray:
        if not self._steps:
            raise IndexError("the action queue is empty (wait for the chunk that is being computed)")
        s, w, _ = self._steps.popleft()
        self.t += 1
        return (s / w).astype(np.float32)


class _DelayEstimate:
    """The delay to announce: fixed, or the largest of the last `window` measured delays."""

    def __init__(self, fixed: int | None, window: int = 5):
        self.fixed, self.seen = fixed, deque(maxlen=window)

    def value(self) -> int:
        if self.fixed is not None:
            return int(self.fixed)
        return max(self.seen) if self.seen else 0

    def observe(self, k: int) -> None:
        self.seen.append(int(k))


class RealtimeClient:
    """Blocking API over a PolicyClient (or anything with infer(obs) -> {"actions": ...}).

        rt = RealtimeClient(PolicyClient(host, port), threshold=4, merge="rtc")
        rt.reset()                       # at each episode start
        while running:
            robot.apply(rt.step(get_observation()))   # once per control tick
    """

    def __init__(self, client, threshold: int, merge: str = "rtc", delay: int | None = None,
                 ensemble_decay: float = 0.01):
        self.client = client
        self.queue = ActionQueue(threshold, merge, ensemble_decay)
        self.delay = _DelayEstimate(delay)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graphvla-realtime")
        self._future = None
        self.waits = 0  # ticks on which the queue was empty and the robot had to wait

    def reset(self, session_seed: int | None = None):
        """New episode: wait out a request in flight, empty the queue, reset the server session."""
        if self._future is not None:
            self._future.exception()  # wait; its chunk belongs to the old episode
            self._future = None
        self.queue.reset()
        reset = getattr(self.client, "reset", None)
        return reset(session_seed) if reset is not None else None

    def _merge(self, future) -> None:
        reply = future.result()  # a ServerError surfaces here, in the caller's thread
        self.delay.observe(self.queue.on_chunk(reply["actions"]))

    def step(self, obs: dict) -> np.ndarray:
        if self._future is not None and self._future.done():
            future, self._future = self._future, None
            self._merge(future)
        if self._future is None and self.queue.needs_request():
            request = {**obs, **self.queue.begin_request(self.delay.value())}
            self._future = self._executor.submit(self.client.infer, request)
        if not len(self.queue):
            self.waits += 1
            future, self._future = self._future, None
            self._merge(future)
        return self.queue.pop()

    def wait(self) -> None:
        """Block until the request in flight (if any) is answered, and merge its chunk."""
        if self._future is not None:
            future, self._future = self._future, None
            self._merge(future)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncRealtimeClient:
    """asyncio API over an AsyncPolicyClient: `action = await rt.step(obs)` once per tick."""

    def __init__(self, client, threshold: int, merge: str = "rtc", delay: int | None = None,
                 ensemble_decay: float = 0.01):
        self.client = client
        self.queue = ActionQueue(threshold, merge, ensemble_decay)
        self.delay = _DelayEstimate(delay)
        self._task: asyncio.Task | None = None
        self.waits = 0

    async def reset(self, session_seed: int | None = None):
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.queue.reset()
        reset = getattr(self.client, "reset", None)
        return await reset(session_seed) if reset is not None else None

    def _merge(self, reply) -> None:
        self.delay.observe(self.queue.on_chunk(reply["actions"]))

    async def wait(self) -> None:
        """Wait for the request in flight (if any) and merge its chunk."""
        if self._task is not None:
            task, self._task = self._task, None
            self._merge(await task)

    async def step(self, obs: dict) -> np.ndarray:
        if self._task is not None and self._task.done():
            task, self._task = self._task, None
            self._merge(task.result())
        if self._task is None and self.queue.needs_request():
            request = {**obs, **self.queue.begin_request(self.delay.value())}
            self._task = asyncio.get_running_loop().create_task(self.client.infer(request))
        if not len(self.queue):
            self.waits += 1
            task, self._task = self._task, None
            self._merge(await task)
        return self.queue.pop()
