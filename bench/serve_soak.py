"""Soak the policy server: many clients, malformed frames and vanishing clients, for a while.

N clients (threads, raw WebSocket connections) send requests to one in-process server for T
seconds. About `--malformed` of the requests are malformed (wrong dtype, wrong shape, missing key,
not msgpack at all, a reset key of the wrong type), about `--vanish` are good requests after which
the client drops its connection (closing the socket without a handshake, or closing right after
sending) and reconnects. The rest are good requests, each of which must be answered with finite
actions of the graph's shape. The graph is graphvla/graphs/tiny/mlp.yaml with random weights.

Reported: server crashes (thread dead, /healthz or a fresh good request failing afterwards),
good requests sent vs answered, malformed requests answered with an `error:` text frame, p50/p99
latency of good requests, and the growth of this process's RSS (the server runs in a thread of
it) from the end of the warm-up to the end of the run, and over the second half of the run alone
(sampled every 0.5 s: near 0 once memory has plateaued, growing on with a leak).

    python bench/serve_soak.py [--clients 16] [--seconds 60] [--malformed 0.1] [--vanish 0.05] [--json PATH]

`run_soak` is imported by tests/test_serve_soak.py with small numbers.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request
from pathlib import Path

import msgpack
import numpy as np

GRAPH = str(Path(__file__).resolve().parent.parent / "graphvla" / "graphs" / "tiny" / "mlp.yaml")
KEY_MAP = {"observation/image": "images[0]", "observation/state": "state", "prompt": "instruction"}
MALFORMED_KINDS = ("wrong-dtype", "wrong-shape", "missing-key", "not-msgpack", "bad-reset")
REPLY_TIMEOUT_S = 30.0  # a good request unanswered this long counts as lost (a hang)


def build_policy(seed: int = 0):
    import torch

    from graphvla import compile_graph
    from graphvla.policy.policy import Policy

    torch.manual_seed(seed)
    return Policy.from_compiled(compile_graph(GRAPH, device="cpu"))


def rss_mb() -> float:
    """This process's resident set size in MB (VmRSS)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def good_obs(rng) -> dict:
    return {"observation/image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "observation/state": rng.standard_normal(8).astype(np.float32),
            "prompt": "pick up the red block"}


def malformed_frame(kind: str, rng):
    from openpi_client import msgpack_numpy

    from graphvla.protocol import RESET_KEY

    obs = good_obs(rng)
    if kind == "wrong-dtype":
        obs["observation/image"] = obs["observation/image"].astype(np.int64)
    elif kind == "wrong-shape":
        obs["observation/state"] = obs["observation/state"][:7]
    elif kind == "missing-key":
        del obs["observation/state"]
    elif kind == "not-msgpack":
        return b"\xc1\xff not msgpack " + rng.bytes(16)
    elif kind == "bad-reset":
        return msgpack.packb({RESET_KEY: rng.choice(["yes", 1, 0.5])})
    return msgpack_numpy.packb(obs)


def _connect(port: int):
    import websockets.sync.client as wsc
    from openpi_client import msgpack_numpy

    ws = wsc.connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=REPLY_TIMEOUT_S)
    msgpack_numpy.unpackb(ws.recv(timeout=REPLY_TIMEOUT_S))  # the metadata frame
    return ws


def _client(i, port, stop_at, args, stats, lock, shape):
    """One client's loop; every outcome is counted in `stats` (under `lock`)."""
    from openpi_client import msgpack_numpy
    from websockets.exceptions import ConnectionClosed

    rng = np.random.default_rng(1000 + i)
    local = {k: 0 for k in stats if not isinstance(stats[k], list)}
    latencies, problems = [], []
    ws = None
    try:
        while time.monotonic() < stop_at:
            if ws is None:
                ws = _connect(port)
                local["connects"] += 1
            u = rng.random()
            if u < args.malformed:
                kind = MALFORMED_KINDS[int(rng.integers(len(MALFORMED_KINDS)))]
                local["malformed_sent"] += 1
                try:
                    ws.send(malformed_frame(kind, rng))
                    reply = ws.recv(timeout=REPLY_TIMEOUT_S)
                except (ConnectionClosed, TimeoutError) as e:
                    problems.append(f"client {i}: malformed {kind}: no reply ({type(e).__name__})")
                    ws = None
                    continue
                if isinstance(reply, str) and reply.startswith("error:"):
                    local["malformed_error_frames"] += 1
                else:
                    problems.append(f"client {i}: malformed {kind} got {type(reply).__name__} {reply[:60]!r}")
            elif u < args.malformed + args.vanish:
                local["vanished"] += 1
                ws.send(msgpack_numpy.packb(good_obs(rng)))
                if rng.random() < 0.5:
                    ws.socket.close()  # abrupt: no close handshake, the request still in flight
                else:
                    ws.close()  # clean close right after sending
                ws = None
            else:
                local["good_sent"] += 1
                t = time.perf_counter()
                try:
                    ws.send(msgpack_numpy.packb(good_obs(rng)))
                    reply = ws.recv(timeout=REPLY_TIMEOUT_S)
                except (ConnectionClosed, TimeoutError) as e:
                    problems.append(f"client {i}: good request lost ({type(e).__name__}: {e})")
                    ws = None
                    continue
                dt = (time.perf_counter() - t) * 1000
                if isinstance(reply, str):
                    problems.append(f"client {i}: good request refused: {reply[:120]}")
                    continue
                actions = np.asarray(msgpack_numpy.unpackb(reply).get("actions"))
                if actions.shape == shape and np.isfinite(actions).all():
                    local["good_answered"] += 1
                    latencies.append(dt)
                else:
                    problems.append(f"client {i}: bad actions {actions.dtype} {list(actions.shape)}")
    except Exception as e:  # noqa: BLE001 - a client's own failure is reported, not raised
        problems.append(f"client {i}: {type(e).__name__}: {e}")
    finally:
        if ws is not None:
            ws.close()
    with lock:
        for k, v in local.items():
            stats[k] += v
        stats["latencies_ms"] += latencies
        stats["problems"] += problems


def _healthz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return json.loads(r.read()) if r.status == 200 else None
    except OSError:
        return None


def run_soak(clients: int = 16, seconds: float = 60.0, malformed: float = 0.1, vanish: float = 0.05,
             max_batch: int = 8, policy=None) -> dict:
    """Soak one in-process server; return the counts and figures (see the module docstring)."""
    from openpi_client import msgpack_numpy

    from graphvla.runners.serve import ServeOptions, ServerThread

    policy = policy or build_policy()
    shape = (int(policy.metadata["action_horizon"]), int(policy.metadata["action_dim"]))
    args = argparse.Namespace(malformed=malformed, vanish=vanish)
    stats = {"connects": 0, "good_sent": 0, "good_answered": 0, "malformed_sent": 0,
             "malformed_error_frames": 0, "vanished": 0, "latencies_ms": [], "problems": []}
    lock = threading.Lock()
    srv = ServerThread(policy, ServeOptions(port=0, key_map=KEY_MAP, max_batch=max_batch)).start()
    try:
        warm = _connect(srv.port)  # warm-up, so that the memory baseline holds the first forwards
        for s in range(20):
            warm.send(msgpack_numpy.packb(good_obs(np.random.default_rng(s))))
            warm.recv(timeout=REPLY_TIMEOUT_S)
        warm.close()
        rss_start = rss_mb()
        t0 = time.monotonic()
        stop_at = t0 + seconds
        threads = [threading.Thread(target=_client, args=(i, srv.port, stop_at, args, stats, lock, shape),
                                    daemon=True) for i in range(clients)]
        samples = []  # (seconds since the start, RSS MB), every half second: a plateau or a leak
        sampling = threading.Event()

        def sample():
            while not sampling.wait(0.5):
                samples.append((time.monotonic() - t0, rss_mb()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 2 * REPLY_TIMEOUT_S + 30)
        sampling.set()
        sampler.join(5)
        hung_clients = sum(t.is_alive() for t in threads)
        elapsed = time.monotonic() - t0
        # afterwards: the server thread alive, /healthz answering, a fresh good request served
        alive = srv._thread.is_alive() and srv._error is None
        health = _healthz(srv.port)
        final_ok = False
        try:
            ws = _connect(srv.port)
            ws.send(msgpack_numpy.packb(good_obs(np.random.default_rng(7))))
            reply = ws.recv(timeout=REPLY_TIMEOUT_S)
            final_ok = not isinstance(reply, str) and np.asarray(msgpack_numpy.unpackb(reply)["actions"]).shape == shape
            ws.close()
        except Exception as e:  # noqa: BLE001
            stats["problems"].append(f"final request: {type(e).__name__}: {e}")
        rss_end = rss_mb()
        # the vanished connections are dropped once their requests finish
        deadline = time.monotonic() + 10
        while srv.server.connections and time.monotonic() < deadline:
            time.sleep(0.05)
        connections_left = srv.server.connections
    finally:
        srv.stop()
    lat = stats.pop("latencies_ms")
    half = [m for t, m in samples if t >= seconds / 2]
    crashes = int(not alive) + int(health is None or health.get("status") != "ok") + int(not final_ok)
    return {**stats, "clients": clients, "seconds": round(elapsed, 2), "crashes": crashes,
            "hung_clients": hung_clients, "healthz": health, "final_request_ok": final_ok,
            "connections_left": connections_left, "served": srv.server.served,
            "p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if lat else float("nan"),
            "good_per_s": len(lat) / elapsed if elapsed else 0.0,
            "rss_start_mb": rss_start, "rss_end_mb": rss_end, "rss_growth_mb": rss_end - rss_start,
            # growth over the second half of the run alone: near 0 when memory has plateaued
            "rss_second_half_growth_mb": (half[-1] - half[0]) if len(half) > 1 else float("nan"),
            "rss_samples_mb": [(round(t, 1), round(m, 1)) for t, m in samples]}


def print_table(r: dict) -> None:
    rows = [
        ("clients x seconds", f"{r['clients']} x {r['seconds']:.1f} s ({r['connects']} connections)"),
        ("server crashes", f"{r['crashes']} (healthz {r['healthz'] and r['healthz'].get('status')}, "
                           f"final request {'ok' if r['final_request_ok'] else 'FAILED'})"),
        ("good requests answered", f"{r['good_answered']} / {r['good_sent']} ({r['good_per_s']:.0f}/s)"),
        ("malformed -> error frame", f"{r['malformed_error_frames']} / {r['malformed_sent']}"),
        ("vanished mid-request", f"{r['vanished']} (connections left open after: {r['connections_left']})"),
        ("latency of good requests", f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"),
        ("process RSS", f"{r['rss_start_mb']:.1f} -> {r['rss_end_mb']:.1f} MB ({r['rss_growth_mb']:+.1f} MB; "
                        f"{r['rss_second_half_growth_mb']:+.1f} MB over the second half)"),
        ("problems", str(len(r["problems"]))),
    ]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    for p in r["problems"][:10]:
        print("   -", p)


if __name__ == "__main__":
    import warnings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--malformed", type=float, default=0.1, help="share of malformed requests")
    ap.add_argument("--vanish", type=float, default=0.05, help="share of requests after which the client vanishes")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch

    torch.set_num_threads(a.threads)
    result = run_soak(a.clients, a.seconds, a.malformed, a.vanish, a.max_batch)
    print_table(result)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    ok = (result["crashes"] == 0 and not result["problems"] and result["good_answered"] == result["good_sent"]
          and result["malformed_error_frames"] == result["malformed_sent"])
    raise SystemExit(0 if ok else 1)
