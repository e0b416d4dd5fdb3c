"""Policy-server overhead and dynamic-batching throughput, measured in one run.

(a) overhead = openpi-client round-trip time minus the policy's own inference time (the
    server's `server_timing.infer_ms`), p50 / p99, for two 224x224 RGB images + state, with
    the direct in-process `Policy.infer` time as the baseline;
    Two controls isolate what the server itself costs: a no-op policy (the server's own path:
    decode, key map, hand-off, encode, wire) and a policy that only sleeps as long as the real
    one computes (on this VM, CPUs that idle for milliseconds take a while to wake: the cost
    shows up as overhead for any policy that takes milliseconds, whatever the server does);
(b) throughput of 8 concurrent openpi clients, each in its own process, with dynamic batching
    on (max batch 8) against off (max batch 1) (bench/serve_batching.py measures this in more
    detail: the forward's own ceiling, several rounds, other policies).

The server runs in its own process (as in deployment), the clients in this one.

    python bench/serve_overhead.py [--requests 300] [--seconds 10]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import urllib.request
import warnings

import numpy as np

OVERRIDES = ["inputs.images.views=2", "inputs.images.size=[224, 224]", "blocks.vision.with.patch=32"]
KEY_MAP = {"observation/image": "images[0]", "observation/wrist_image": "images[1]",
           "observation/state": "state", "prompt": "instruction"}


def build_policy():
    import torch

    from graphvla import compile_graph
    from graphvla.policy.policy import Policy

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return Policy.from_compiled(compile_graph("graphvla/graphs/tiny/mlp.yaml", OVERRIDES, device="cpu"))


class NullPolicy:
    """Same inputs as the benchmark graph, no model: isolates the server's own cost. It has the
    part of Policy's interface the server calls (a session per connection, which it ignores)."""

    metadata = {"name": "null", "fingerprint": "0", "action_horizon": 8, "action_dim": 4, "outputs": ["actions"],
                "normalization": {}, "inputs": {"images": {"kind": "image", "views": 2, "size": [224, 224]},
                                                "instruction": {"kind": "text"}, "state": {"kind": "state", "dim": 8}}}

    def new_session(self, seed: int = 0):
        from graphvla.policy.session import Session

        return Session(seed)

    def check_rtc_request(self, value):
        raise ValueError("the benchmark's policies do no real-time chunking")

    def infer(self, obs, session=None, **options):
        return {"actions": np.zeros((8, 4), np.float32)}

    def infer_batch(self, observations, sessions=None, **options):
        return [self.infer(o) for o in observations]

    def reset(self):
        pass


class SleepPolicy(NullPolicy):
    """Takes as long as the real policy but leaves the CPU idle meanwhile."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def infer(self, obs, session=None, **options):
        time.sleep(self.seconds)
        return super().infer(obs)


def serve(port: int, max_batch: int, kind: str = "torch", sleep_s: float = 0.003):
    from graphvla.runners.serve import PolicyServer, ServeOptions

    policy = {"torch": build_policy, "noop": NullPolicy, "sleep": lambda: SleepPolicy(sleep_s)}[kind]()
    PolicyServer(policy, ServeOptions(port=port, max_batch=max_batch, max_wait_ms=2.0, key_map=KEY_MAP)).run()


def observation(seed=0):
    rng = np.random.default_rng(seed)
    return {"observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/state": rng.standard_normal(8).astype(np.float32), "prompt": "pick up the red block"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, max_batch, kind="torch", sleep_s=0.003):
        self.port = free_port()
        self.proc = mp.get_context("spawn").Process(target=serve, args=(self.port, max_batch, kind, sleep_s), daemon=True)

    def __enter__(self):
        self.proc.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.join(30)


def client(port):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return WebsocketClientPolicy("127.0.0.1", port)


def overhead(requests: int):
    policy = build_policy()
    ports = {"images": np.stack([observation()["observation/image"], observation()["observation/wrist_image"]]),
             "state": observation()["observation/state"], "instruction": observation()["prompt"]}
    direct = []
    for i in range(requests):
        t = time.perf_counter()
        policy.infer(ports)
        direct.append((time.perf_counter() - t) * 1000)
    measured = {}
    for kind in ("torch", "noop", "sleep"):
        infer_s = float(np.median(measured["torch"][1])) / 1000 if kind == "sleep" else 0.0
        with Server(max_batch=8, kind=kind, sleep_s=infer_s) as srv:
            c = client(srv.port)
            obs = observation()
            rtt, infer, over = [], [], []
            for i in range(requests + 20):
                t = time.perf_counter()
                out = c.infer(obs)
                dt = (time.perf_counter() - t) * 1000
                if i >= 20:  # warm-up
                    rtt.append(dt)
                    infer.append(out["server_timing"]["infer_ms"])
                    over.append(dt - out["server_timing"]["infer_ms"])
        measured[kind] = (rtt, infer, over)
    rtt, infer, over = measured["torch"]
    p = lambda xs, q: float(np.percentile(xs, q))  # noqa: E731
    print(f"(a) {requests} requests, 2 x 224x224x3 uint8 + state[8] ({sum(v.nbytes for v in obs.values() if hasattr(v, 'nbytes')) / 1e6:.2f} MB)")
    print(f"    direct Policy.infer (baseline)   p50 {p(direct, 50):7.3f} ms  p99 {p(direct, 99):7.3f} ms")
    print(f"    policy time inside the server    p50 {p(infer, 50):7.3f} ms  p99 {p(infer, 99):7.3f} ms")
    print(f"    openpi-client round trip         p50 {p(rtt, 50):7.3f} ms  p99 {p(rtt, 99):7.3f} ms")
    print(f"    server overhead (rtt - infer)    p50 {p(over, 50):7.3f} ms  p99 {p(over, 99):7.3f} ms"
          f"   (target p50 < 1 ms: {'met' if p(over, 50) < 1.0 else 'NOT met'})")
    print(f"    round trip / direct inference    {p(rtt, 50) / p(direct, 50):.2f}x at p50")
    n_rtt, _, n_over = measured["noop"]
    print(f"    same request to a no-op policy:  round trip p50 {p(n_rtt, 50):.3f} ms, "
          f"overhead p50 {p(n_over, 50):.3f} ms  p99 {p(n_over, 99):.3f} ms   (the server's own path)")
    s_rtt, s_infer, s_over = measured["sleep"]
    print(f"    a policy sleeping {p(s_infer, 50):.1f} ms:     round trip p50 {p(s_rtt, 50):.3f} ms, "
          f"overhead p50 {p(s_over, 50):.3f} ms  p99 {p(s_over, 99):.3f} ms   (idle-CPU wake-up included)")


def throughput(seconds: float, clients: int = 8):
    """(b) through bench/serve_batching.py's runner: every client in its own process, as robots are
    (clients as threads of this one process share its GIL, and their own msgpack work then caps
    both rates alike: that setup measured 1.2-1.4x whatever the server did)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_batching import run

    rates = {}
    for label, max_batch in (("off", 1), ("on", clients)):
        r = run(max_batch, clients, seconds, 1, OVERRIDES, size=224, views=2)
        rates[label] = r["rate"]
        print(f"(b) batching {label:3s}: {r['rate']:7.1f} requests/s with {clients} client processes "
              f"(mean batch {r['batch']:.2f})")
    print(f"    batching on / off: {rates['on'] / rates['off']:.2f}x (this policy's forward at 2 x 224x224 is "
          f"compute-bound: see bench/serve_batching.py for the ceiling and a policy whose batch is cheaper)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    overhead(args.requests)
    throughput(args.seconds)
