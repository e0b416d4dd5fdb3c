"""Asynchronous execution: the queue's merges (switch, ensemble, rtc), and the blocking and asyncio
clients against a real server thread: they run actions from the queue while the next chunk is being
computed (the policy double holds a request until the test releases it: no timing), ask when the
queue falls to the threshold, skip the actions that ran meanwhile, and send the remaining actions and
the measured delay for real-time chunking. The RTC round trip through a real Policy is also checked."""
from __future__ import annotations

import asyncio
import math
import threading

import numpy as np
import pytest

from graphvla.client import ActionQueue, AsyncPolicyClient, AsyncRealtimeClient, PolicyClient, RealtimeClient
from graphvla.protocol import RTC_KEY
from graphvla.runners.serve import ServeOptions, ServerThread
from test_serve_doubles import PolicyDouble

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

H = 8


def chunk(i: int) -> np.ndarray:
    """Request i's chunk: step j is [i, j], so every executed action says where it came from."""
    return np.stack([[i, j] for j in range(H)]).astype(np.float32)


# --- the queue alone ------------------------------------------------------------------------------

def test_queue_switch_skips_what_ran_and_replaces():
    q = ActionQueue(threshold=4, merge="switch")
    assert q.needs_request() and q.begin_request(2) == {}  # nothing queued: nothing to continue
    q.on_chunk(chunk(0))
    assert [q.pop()[1] for _ in range(3)] == [0, 1, 2] and not q.needs_request()
    q.pop()
    assert q.needs_request() and q.begin_request(2) == {}  # switch sends plain observations
    q.pop(), q.pop()
    assert q.on_chunk(chunk(1)) == 2  # two actions ran while it was computed
    assert q.pop().tolist() == [1, 2] and len(q) == 5


def test_queue_rtc_sends_the_remaining_actions_and_delay():
    q = ActionQueue(threshold=4, merge="rtc")
    q.begin_request(3)
    q.on_chunk(chunk(0))
    for _ in range(4):
        q.pop()
    extra = q.begin_request(3)[RTC_KEY]
    assert extra["delay"] == 3 and np.array_equal(extra["remaining_actions"], chunk(0)[4:])
    q = ActionQueue(threshold=7, merge="rtc")
    q.begin_request(0)
    q.on_chunk(chunk(0))
    for _ in range(6):
        q.pop()
    assert q.begin_request(5)[RTC_KEY]["delay"] == 2  # never more than what is left to run


def test_queue_ensemble_averages_the_overlap_with_act_weights():
    q = ActionQueue(threshold=4, merge="ensemble", ensemble_decay=0.5)
    q.begin_request()
    q.on_chunk(chunk(0))
    for _ in range(4):
        q.pop()
    q.begin_request()
    q.pop()
    q.on_chunk(chunk(1) + np.array([10, 0], np.float32))  # k = 1: new steps 1..7 meet old steps 5..7
    w = math.exp(-0.5)
    for j in range(3):
        np.testing.assert_allclose(q.pop(), [(0 + w * 11) / (1 + w), ((5 + j) + w * (1 + j)) / (1 + w)], rtol=1e-6)
    assert q.pop().tolist() == [11, 4]  # beyond the old queue: the new chunk alone


def test_queue_checks_its_use():
    with pytest.raises(ValueError, match="merge: 'blend' is not one of switch, ensemble, rtc"):
        ActionQueue(4, "blend")
    with pytest.raises(ValueError, match="threshold: expected an integer >= 0"):
        ActionQueue(-1)
    q = ActionQueue(4)
    with pytest.raises(RuntimeError, match="without a request out"):
        q.on_chunk(chunk(0))
    with pytest.raises(IndexError, match="the action queue is empty"):
        q.pop()


# --- the clients against a server -------------------------------------------------------------------

class GatedPolicy(PolicyDouble):
    """Answers request i with chunk(i); request i waits until gates[i] is set (if there is one).
    `requests` holds what the server handed the policy (an RTC request already checked)."""

    def __init__(self):
        super().__init__(H, 2, {"state": {"kind": "state", "dim": 2}}, name="gated")
        self.requests, self.gates = [], {}
        self.arrival = threading.Condition()

    def compute(self, obs, session):
        with self.arrival:
            i = len(self.requests)
            self.requests.append(obs)
            self.arrival.notify_all()
        gate = self.gates.get(i)
        if gate is not None:
            assert gate.wait(30), f"request {i} was never released"
        return {"actions": chunk(i)}

    def arrived(self, n: int) -> None:
        """Wait until n requests have reached the policy."""
        with self.arrival:
            assert self.arrival.wait_for(lambda: len(self.requests) >= n, 30), f"request {n - 1} never reached the server"


OBS = {"state": np.zeros(2, np.float32)}


def test_realtime_client_runs_from_its_queue_while_the_next_chunk_is_computed():
    policy = GatedPolicy()
    policy.gates[1] = threading.Event()
    with ServerThread(policy, ServeOptions(port=0)) as srv, PolicyClient(srv.host, srv.port) as client:
        with RealtimeClient(client, threshold=4, merge="rtc") as rt:
            ran = [rt.step(OBS).tolist() for _ in range(4)]  # the first chunk: the robot waits for it once
            assert ran == [[0, j] for j in range(4)] and rt.waits == 1
            assert rt.step(OBS).tolist() == [0, 4]  # queue at the threshold: request 1 goes out...
            policy.arrived(2)
            sent = policy.requests[1][RTC_KEY]
            assert sent.delay == 0 and np.array_equal(sent.remaining, chunk(0)[4:])
            assert rt.step(OBS).tolist() == [0, 5]  # ...and is held, while the robot keeps running
            assert rt.step(OBS).tolist() == [0, 6]
            policy.gates[1].set()
            rt.wait()
            assert rt.step(OBS).tolist() == [1, 3]  # 3 actions ran meanwhile: chunk 1 from step 3 on
            assert rt.delay.value() == 3 and rt.waits == 1
            assert rt.step(OBS).tolist() == [1, 4]  # queue of 4: request 2 goes out with the measured delay
            policy.arrived(3)
            sent = policy.requests[2][RTC_KEY]
            assert sent.delay == 3 and np.array_equal(sent.remaining, chunk(1)[4:])
            rt.wait()
            rt.reset()
            assert len(rt.queue) == 0 and rt.queue.t == 0


def test_realtime_client_switch_sends_plain_openpi_requests():
    policy = GatedPolicy()
    with ServerThread(policy, ServeOptions(port=0)) as srv, PolicyClient(srv.host, srv.port) as client:
        with RealtimeClient(client, threshold=2, merge="switch") as rt:
            for _ in range(12):
                rt.step(OBS)
            rt.wait()
    assert len(policy.requests) >= 2 and all(RTC_KEY not in r for r in policy.requests)


def test_async_realtime_client():
    policy = GatedPolicy()
    policy.gates[1] = threading.Event()

    async def scenario(host, port):
        client = await AsyncPolicyClient.connect(host, port)
        async with client:
            rt = AsyncRealtimeClient(client, threshold=4, merge="rtc")
            ran = [(await rt.step(OBS)).tolist() for _ in range(5)]
            assert ran == [[0, j] for j in range(5)] and rt.waits == 1
            await asyncio.get_running_loop().run_in_executor(None, policy.arrived, 2)
            assert np.array_equal(policy.requests[1][RTC_KEY].remaining, chunk(0)[4:])
            assert (await rt.step(OBS)).tolist() == [0, 5]  # held on the server; the loop keeps running
            policy.gates[1].set()
            await rt.wait()
            assert (await rt.step(OBS)).tolist() == [1, 2] and rt.delay.value() == 2
            await rt.reset()
            assert len(rt.queue) == 0

    with ServerThread(policy, ServeOptions(port=0)) as srv:
        asyncio.run(scenario(srv.host, srv.port))


def test_realtime_client_with_a_real_policy_inpaints():
    """Through a real flow-matching Policy: the chunk that answers the client's RTC request starts
    where the actions the client still had queued were going (the two committed steps)."""
    from tests.test_rtc import FLOW, make_policy, obs

    policy = make_policy(FLOW)
    gate, replies = threading.Event(), []
    infer = policy.infer

    def gated(o, session=None):
        if RTC_KEY in o:
            assert gate.wait(30)
        out = infer(o, session)
        replies.append((o, out))
        return out

    policy.infer = gated
    with ServerThread(policy, ServeOptions(port=0, max_batch=1)) as srv, PolicyClient(srv.host, srv.port) as client:
        with RealtimeClient(client, threshold=4, merge="rtc", delay=2) as rt:
            for t in range(7):  # the second request goes out at step 5; steps 6 and 7 run from the queue
                rt.step(obs(t))
            gate.set()
            rt.wait()
            assert rt.step(obs(7)).shape == (4,) and rt.queue.chunks == 2
    (first_obs, first), (second_obs, second) = replies
    sent = second_obs[RTC_KEY]
    assert sent.delay == 2 and np.array_equal(sent.remaining, first["actions"][4:])  # checked by the server
    assert second["rtc"] == {"applied": True, "method": "guidance", "delay": 2, "overlap": 4}
    assert np.abs(second["actions"][:2] - first["actions"][4:6]).mean() < 0.2
