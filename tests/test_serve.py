"""Policy server: openpi-client as the real client, every kind of bad input, batching, auth,
health check, graceful shutdown. Loopback only, tiny arrays, a test double with the real policy
interface (test_serve_doubles.py). No sleeps: a test that must act while a request is inside the
policy holds it there (the double's `hold`) and waits for it (`entered`, the server's `changed`)."""
from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
import websockets.sync.client as wsc
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed, InvalidStatus

sys.path.insert(0, str(Path(__file__).parent))
from test_serve_doubles import DoublePolicy, expected_actions  # noqa: E402

from graphvla.runners.serve import ServeOptions, ServerThread  # noqa: E402

# openpi-client opens its connection without a context manager; websockets 17 warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

LIBERO = {"observation/image": "images[0]", "observation/wrist_image": "images[1]",
          "observation/state": "state", "prompt": "instruction"}


def libero_obs(seed=0, prompt="pick up the bowl"):
    rng = np.random.default_rng(seed)
    return {"observation/image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            "observation/state": rng.standard_normal(8).astype(np.float32), "prompt": prompt}


def as_ports(obs):
    return {"images": np.stack([obs["observation/image"], obs["observation/wrist_image"]]),
            "state": obs["observation/state"], "instruction": obs["prompt"]}


@pytest.fixture
def server():
    policy = DoublePolicy()
    with ServerThread(policy, ServeOptions(port=0, key_map=LIBERO, max_message_mb=1)) as srv:
        srv.policy = policy
        yield srv


def client(srv, **kw):
    return WebsocketClientPolicy("127.0.0.1", srv.port, **kw)


def assert_served(srv, seed=123):
    """A fresh openpi client still gets exact actions."""
    obs = libero_obs(seed)
    c = client(srv)
    np.testing.assert_array_equal(c.infer(obs)["actions"], expected_actions(as_ports(obs)))
    c._ws.close()


def test_metadata_and_exact_round_trip(server):
    c = client(server)
    meta = c.get_server_metadata()
    assert meta["name"] == "double" and meta["fingerprint"] == "f" * 64
    assert meta["action_horizon"] == 4 and meta["action_dim"] == 3
    assert meta["observation_keys"] == list(LIBERO)
    assert meta["normalization_keys"] == ["actions", "state"]
    for seed in range(3):
        obs = libero_obs(seed)
        out = c.infer(obs)
        assert out["actions"].dtype == np.float32 and out["actions"].shape == (4, 3)
        np.testing.assert_array_equal(out["actions"], expected_actions(as_ports(obs)))
        timing = out["server_timing"]
        assert timing["infer_ms"] >= 0 and timing["batch_size"] == 1
    assert "prev_total_ms" in timing  # as openpi reports it from the second request on


def test_views_as_one_stacked_array_and_float_chw():
    policy = DoublePolicy()
    with ServerThread(policy, ServeOptions(port=0)) as srv:  # no key map: keys are the port names
        c = client(srv)
        assert c.get_server_metadata()["observation_keys"] == ["images", "instruction", "state"]
        rng = np.random.default_rng(1)
        obs = {"images": rng.random((2, 3, 32, 32)).astype(np.float32), "instruction": "x",
               "state": np.arange(8, dtype=np.float32)}
        np.testing.assert_allclose(c.infer(obs)["actions"], expected_actions(obs), rtol=1e-6)
        # uint8 CHW is converted to HWC for the policy: same mean, same actions
        u8 = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
        np.testing.assert_array_equal(c.infer({**obs, "images": u8})["actions"],
                                      expected_actions({**obs, "images": u8.transpose(0, 2, 3, 1)}))


def _expect_error(c, obs, *words):
    with pytest.raises(RuntimeError) as e:
        c.infer(obs)
    for w in words:
        assert w in str(e.value), str(e.value)
    return str(e.value)


def test_bad_requests_name_the_key_and_keep_the_connection(server):
    c = client(server)
    good = libero_obs(0)
    _expect_error(c, {k: v for k, v in good.items() if k != "observation/state"},
                  "missing key 'observation/state'", "float [8]")
    _expect_error(c, {**good, "observation/extra": np.zeros(2)}, "unexpected key 'observation/extra'")
    _expect_error(c, {**good, "observation/state": np.zeros(7, np.float32)}, "'observation/state'", "[8]", "[7]")
    _expect_error(c, {**good, "observation/image": np.zeros((32, 32, 3), np.int64)}, "'observation/image'", "uint8 [32, 32, 3]", "int64")
    _expect_error(c, {**good, "observation/image": np.zeros((16, 16, 3), np.uint8)}, "'observation/image'", "[16, 16, 3]")
    _expect_error(c, {**good, "prompt": np.zeros(3, np.float32)}, "'prompt'", "string")
    _expect_error(c, {**good, "observation/state": np.full(8, np.nan, np.float32)}, "'observation/state'", "NaN")
    # the policy's own ValueError is relayed, an unexpected exception is reported, not fatal
    _expect_error(c, {**good, "prompt": "invalid"}, "instruction", "not allowed")
    _expect_error(c, {**good, "prompt": "crash"}, "inference failed", "RuntimeError", "boom")
    np.testing.assert_array_equal(c.infer(good)["actions"], expected_actions(as_ports(good)))


def _raw(srv):
    ws = wsc.connect(f"ws://127.0.0.1:{srv.port}", compression=None, max_size=None, legacy=True)
    msgpack_numpy.unpackb(ws.recv())
    return ws


@pytest.mark.parametrize("frame, words", [
    (b"\xc1\xff garbage", ["not valid msgpack"]),
    (msgpack.packb([1, 2, 3]), ["must be a map"]),
    (msgpack.packb({"observation/image": msgpack.ExtType(1, b"\x80\x04pickle")}), ["extension type"]),
    (msgpack.packb({"observation/image": {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "|O", b"shape": [1]}}),
     ["'|O' is not allowed"]),
    (msgpack.packb({"observation/image": {b"__ndarray__": True, b"data": b"\x00" * 5, b"dtype": "<f4", b"shape": [2]}}),
     ["needs 8 bytes, got 5"]),
    (msgpack.packb({1: 2}), ["map key"]),
    ("text frame", ["text frames are not accepted"]),
], ids=["garbage", "not-a-map", "ext-type", "object-dtype", "short-buffer", "int-key", "text-frame"])
def test_malformed_frames_are_refused_and_connection_stays_usable(server, frame, words):
    ws = _raw(server)
    ws.send(frame)
    reply = ws.recv(timeout=10)
    assert isinstance(reply, str)
    for w in words:
        assert w in reply, reply
    good = libero_obs(5)
    ws.send(msgpack_numpy.packb(good))
    np.testing.assert_array_equal(msgpack_numpy.unpackb(ws.recv(timeout=10))["actions"], expected_actions(as_ports(good)))
    ws.close()


def test_oversized_message_closes_only_that_connection(server):
    ws = _raw(server)
    ws.send(msgpack_numpy.packb({"prompt": "x" * (2 * 1024 * 1024)}))  # limit is 1 MiB here
    with pytest.raises(ConnectionClosed) as e:
        ws.recv(timeout=10)
    assert e.value.rcvd is not None and e.value.rcvd.code == 1009  # "message too big", a clean close
    assert_served(server)


def wait_for(srv, condition, timeout=30):
    """Wait until condition(server) holds; the server notifies `changed` on every change."""
    with srv.server.changed:
        assert srv.server.changed.wait_for(lambda: condition(srv.server), timeout), "the server never got there"


def test_client_vanishing_mid_request_does_not_hurt_others():
    gate = threading.Event()
    policy = DoublePolicy(hold=lambda: gate.wait(30))
    with ServerThread(policy, ServeOptions(port=0, key_map=LIBERO)) as srv:
        ws = _raw(srv)
        ws.send(msgpack_numpy.packb(libero_obs(0)))
        assert policy.entered.get(timeout=30) == 1  # the request is inside the policy
        ws.socket.close()  # vanish without a close handshake while the policy is busy
        gate.set()
        assert_served(srv, seed=9)
        # the vanished connection is dropped once its in-flight request finishes (and the
        # served client's once it closed)
        wait_for(srv, lambda s: s.connections == 0)


def test_concurrent_clients_are_batched_and_each_gets_its_own_actions():
    policy = DoublePolicy()
    results, errors = {}, []
    # a batch goes as soon as every connected client has a request in it; the long wait only
    # makes sure no batch leaves early on a slow machine
    with ServerThread(policy, ServeOptions(port=0, key_map=LIBERO, max_batch=8, max_wait_ms=30_000)) as srv:
        clients = [client(srv) for _ in range(8)]
        barrier = threading.Barrier(8)

        def work(i):
            try:
                barrier.wait()
                for r in range(3):
                    obs = libero_obs(100 * i + r, prompt=f"task {i}")
                    out = clients[i].infer(obs)
                    results[(i, r)] = (out, expected_actions(as_ports(obs)))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert not errors
    assert len(results) == 24
    for out, exp in results.values():
        np.testing.assert_array_equal(out["actions"], exp)
    assert policy.batch_sizes == [8, 8, 8]  # each round of the 8 clients is one forward
    assert {o["server_timing"]["batch_size"] for o, _ in results.values()} == {8}


def test_batching_off_runs_one_request_per_forward():
    policy = DoublePolicy()
    with ServerThread(policy, ServeOptions(port=0, key_map=LIBERO, max_batch=1)) as srv:
        clients = [client(srv) for _ in range(4)]
        threads = [threading.Thread(target=lambda c=c, i=i: c.infer(libero_obs(i))) for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert policy.batch_sizes == [1, 1, 1, 1]


def test_one_bad_observation_in_a_batch_fails_alone():
    policy = DoublePolicy()
    outs = {}
    # the three requests form one batch: it goes when every connected client has a request in it
    with ServerThread(policy, ServeOptions(port=0, key_map=LIBERO, max_wait_ms=30_000)) as srv:
        clients = [client(srv) for _ in range(3)]
        prompts = ["a", "invalid", "c"]

        def work(i):
            try:
                outs[i] = clients[i].infer(libero_obs(i, prompt=prompts[i]))
            except RuntimeError as e:
                outs[i] = e

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert isinstance(outs[1], RuntimeError) and "not allowed" in str(outs[1])
    for i in (0, 2):
        np.testing.assert_array_equal(outs[i]["actions"], expected_actions(as_ports(libero_obs(i, prompt=prompts[i]))))
    assert policy.batch_sizes == [3, 1, 1, 1]  # the batch was tried whole first, then one by one


def test_healthz(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        body = json.loads(r.read())
    assert body["status"] == "ok" and body["graph"] == "double"


def test_api_key_is_required_at_the_handshake():
    with ServerThread(DoublePolicy(), ServeOptions(port=0, key_map=LIBERO, api_key="s3cret")) as srv:
        for headers in (None, {"Authorization": "Api-Key wrong"}, {"Authorization": "Bearer s3cret"}):
            with pytest.raises(InvalidStatus) as e:
                wsc.connect(f"ws://127.0.0.1:{srv.port}", additional_headers=headers, legacy=True)
            assert e.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            client(srv)  # openpi without a key
        obs = libero_obs(2)
        c = client(srv, api_key="s3cret")
        np.testing.assert_array_equal(c.infer(obs)["actions"], expected_actions(as_ports(obs)))
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=10) as r:
            assert r.status == 200  # health checks need no key


def test_stop_finishes_the_in_flight_request():
    gate = threading.Event()
    policy = DoublePolicy(hold=lambda: gate.wait(30))
    srv = ServerThread(policy, ServeOptions(port=0, key_map=LIBERO)).start()
    c = client(srv)
    obs = libero_obs(3)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("out", c.infer(obs)))
    t.start()
    assert policy.entered.get(timeout=30) == 1  # the request is inside the policy
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    wait_for(srv, lambda s: s.draining)  # the server is shutting down with the request in flight
    gate.set()
    stopper.join(30)
    t.join(10)
    np.testing.assert_array_equal(got["out"]["actions"], expected_actions(as_ports(obs)))
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=2)


SIGTERM_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_serve_doubles import DoublePolicy
from graphvla.runners.serve import PolicyServer, ServeOptions

def hold():  # the request stays in the policy until SIGTERM has started the shutdown
    print("entered", flush=True)
    with server.changed:
        server.changed.wait_for(lambda: server.draining, 30)

server = PolicyServer(DoublePolicy(hold=hold), ServeOptions(port=0, key_map={key_map!r}))
server.run(ready=lambda port: print("ready", port, flush=True))
print("clean exit", server.served, flush=True)
"""


def test_sigterm_is_graceful():
    script = SIGTERM_SCRIPT.format(tests=str(Path(__file__).parent), key_map=LIBERO)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()  # the server's output, line by line (None at its end)

    def read():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()

    def line_starting(prefix: str, timeout=60) -> str:
        """The server's next output line that starts with `prefix` (warnings may come between)."""
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"the server said nothing for {timeout} s") from None
            assert line is not None, f"the server exited before it printed {prefix!r}"
            if line.startswith(prefix):
                return line.strip()

    try:
        c = WebsocketClientPolicy("127.0.0.1", int(line_starting("ready ").split()[1]))
        obs = libero_obs(4)
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("out", c.infer(obs)))
        t.start()
        line_starting("entered")  # the request is inside the policy
        os.kill(proc.pid, signal.SIGTERM)
        t.join(10)
        assert proc.wait(timeout=20) == 0
        assert line_starting("clean exit") == "clean exit 1"  # it served the request, then exited
    finally:
        if proc.poll() is None:
            proc.kill()
    np.testing.assert_array_equal(got["out"]["actions"], expected_actions(as_ports(obs)))
