"""Does dynamic batching pay? 8 clients against one server, batching on (max batch 8) vs off.

The policy is graphvla/graphs/tiny/mlp.yaml (64x64 image, 8-d state, instruction) with random
weights, one torch thread: its batched forward is cheaper per sample (the script first measures
`Policy.infer_batch` in-process at batch 1 and 8 with sessions: 8 x t(1) / t(8) is the most
batching could give if nothing but the forward cost anything). Then the server runs in its own
process and each client in its own process (so the clients' msgpack work does not share one
GIL), each an openpi-client WebsocketClientPolicy asking again as soon as it is answered; requests/s
are counted over `--seconds` after a warm-up, for batching off (max batch 1) and on (max batch 8).
The server reports, per request, where its time went (server_timing: decode, queue, infer), shown
as means. `--profile` writes a cProfile of the server process (top functions by own time).

    python bench/serve_batching.py [--clients 8] [--seconds 10] [--threads 1] [--size 64 --views 1]
                                   [--client-threads] [--max-wait-ms 2] [--rounds 3] [--set KEY=VALUE]
                                   [--profile]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import urllib.request
import warnings

import numpy as np

GRAPH = "graphvla/graphs/tiny/mlp.yaml"


def build_policy(threads: int, overrides=()):
    import torch

    from graphvla import compile_graph
    from graphvla.policy.policy import Policy

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    return Policy.from_compiled(compile_graph(GRAPH, list(overrides), device="cpu"))


SIZE, VIEWS = 64, 1  # set from --size / --views (and passed to the client processes)


def observation(seed: int, size: int = 64, views: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    frame = (size, size, 3) if views == 1 else (views, size, size, 3)
    return {"images": rng.integers(0, 256, frame, dtype=np.uint8),
            "state": rng.standard_normal(8).astype(np.float32), "instruction": "pick up the red block"}


def forward_ceiling(threads: int, overrides, batch: int, size: int, views: int, repeats: int = 60):
    policy = build_policy(threads, overrides)
    obs = [observation(i, size, views) for i in range(batch)]
    sessions = [policy.new_session(i) for i in range(batch)]

    def median_ms(n):
        for _ in range(5):
            policy.infer_batch(obs[:n], sessions=sessions[:n])
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            policy.infer_batch(obs[:n], sessions=sessions[:n])
            times.append((time.perf_counter() - t0) * 1000)
        return float(np.median(times))

    return median_ms(1), median_ms(batch)


def serve(port: int, max_batch: int, threads: int, overrides, profile_path, max_wait_ms: float = 2.0,
          workers: int = 1):
    from graphvla.runners.serve import PolicyServer, ServeOptions

    server = PolicyServer(build_policy(threads, overrides),
                          ServeOptions(port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, infer_workers=workers))
    if not profile_path:
        server.run()
        return
    import cProfile
    import pstats
    import signal

    prof = cProfile.Profile()

    def dump(*_):
        prof.disable()
        with open(profile_path, "w") as f:
            pstats.Stats(prof, stream=f).sort_stats("tottime").print_stats(30)
        raise SystemExit(0)

    signal.signal(signal.SIGUSR1, dump)
    prof.enable()
    server.run()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_main(port: int, seed: int, start, stop_at, out, size: int = 64, views: int = 1):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        c = WebsocketClientPolicy("127.0.0.1", port)
    obs = observation(seed, size, views)
    for _ in range(5):
        c.infer(obs)
    start.wait()
    timings = []
    while time.time() < stop_at.value:
        timings.append(c.infer(obs)["server_timing"])
    out.put(timings)


def run(max_batch: int, clients: int, seconds: float, threads: int, overrides, profile_path=None,
        client_threads: bool = False, size: int = 64, views: int = 1, max_wait_ms: float = 2.0, workers: int = 1) -> dict:
    ctx = mp.get_context("spawn")
    port = free_port()
    server = ctx.Process(target=serve, args=(port, max_batch, threads, overrides, profile_path, max_wait_ms, workers),
                         daemon=True)
    server.start()
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
    start, stop_at, out = ctx.Event(), ctx.Value("d", 0.0), ctx.Queue()
    if client_threads:  # every client a thread of one process: they share its GIL (the old bench's setup)
        import threading

        procs = [threading.Thread(target=client_main, args=(port, i, start, stop_at, out, size, views), daemon=True)
                 for i in range(clients)]
    else:
        procs = [ctx.Process(target=client_main, args=(port, i, start, stop_at, out, size, views), daemon=True)
                 for i in range(clients)]
    for p in procs:
        p.start()
    time.sleep(3.0 + 0.3 * clients)  # connect and warm up
    stop_at.value = time.time() + seconds
    t0 = time.time()
    start.set()
    timings = [t for _ in procs for t in out.get(timeout=seconds + 120)]
    elapsed = time.time() - t0
    for p in procs:
        p.join(30)
    import json

    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
    if profile_path:
        import os
        import signal

        os.kill(server.pid, signal.SIGUSR1)
        server.join(30)
    server.terminate()
    server.join(30)
    mean = lambda k: float(np.mean([t[k] for t in timings]))  # noqa: E731
    return {"rate": len(timings) / elapsed, "batch": mean("batch_size"), "infer_ms": mean("infer_ms"),
            "queue_ms": mean("queue_ms"), "decode_ms": mean("decode_ms"), "batch_sizes": health["batch_sizes"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the policy")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the graph, e.g. blocks.head.with.hidden=1024")
    ap.add_argument("--size", type=int, default=64, help="image height and width")
    ap.add_argument("--views", type=int, default=1, help="camera views per request")
    ap.add_argument("--client-threads", action="store_true",
                    help="run the clients as threads of one process (sharing its GIL) instead of one process each")
    ap.add_argument("--max-wait-ms", type=float, default=2.0, help="the server's batching window (serve.max_wait_ms)")
    ap.add_argument("--workers", type=int, default=1, help="the server's inference workers (ServeOptions.infer_workers)")
    ap.add_argument("--rounds", type=int, default=3, help="off/on pairs (the median ratio is reported)")
    ap.add_argument("--profile", action="store_true", help="cProfile the server: serve_batching_{off,on}.prof.txt")
    args = ap.parse_args()

    if (args.size, args.views) != (64, 1):
        args.overrides += [f"inputs.images.size=[{args.size}, {args.size}]", f"inputs.images.views={args.views}",
                           f"blocks.vision.with.patch={args.size // 4}"]
    t1, tb = forward_ceiling(args.threads, args.overrides, args.clients, args.size, args.views)
    print(f"policy {GRAPH} {' '.join(args.overrides)}: infer_batch {t1:.2f} ms at batch 1, {tb:.2f} ms at batch "
          f"{args.clients}: batching can give at most {args.clients * t1 / tb:.2f}x")
    shape = f"{args.views} x {args.size}x{args.size}, clients as {'threads of one process' if args.client_threads else 'processes'}"
    ratios = []
    for k in range(args.rounds):  # off and on alternate, so a change of load hits both
        rates = {}
        for label, max_batch in (("off", 1), ("on", args.clients)):
            prof = f"serve_batching_{label}.prof.txt" if args.profile and k == 0 else None
            r = run(max_batch, args.clients, args.seconds, args.threads, args.overrides, prof, args.client_threads,
                    args.size, args.views, args.max_wait_ms, args.workers)
            rates[label] = r["rate"]
            print(f"round {k + 1} batching {label:3s}: {r['rate']:7.1f} requests/s, mean batch {r['batch']:.2f}, "
                  f"per request: decode {r['decode_ms']:.2f} ms, queue {r['queue_ms']:.2f} ms, "
                  f"infer {r['infer_ms']:.2f} ms (its batch's)")
            if max_batch > 1:
                print(f"    batches by size: {r['batch_sizes']}")
        ratios.append(rates["on"] / rates["off"])
        print(f"round {k + 1} batching on / off: {ratios[-1]:.2f}x")
    print(f"batching on / off with {args.clients} clients, {shape}: median {float(np.median(ratios)):.2f}x over "
          f"{len(ratios)} rounds ({', '.join(f'{x:.2f}' for x in ratios)}); ceiling from the forward alone "
          f"{args.clients * t1 / tb:.2f}x")


if __name__ == "__main__":
    main()
