"""Simulator throughput of the starVLA MT50 protocol on CPU, where the simulator (not the policy)
is the bottleneck, measured in one run:

(a) recording: frames/s of `record_protocol` (scripted expert, protocol camera) with 1 worker and
    with W workers, and the W-worker / 1-worker ratio. Wall clock of the whole call: worker start-up,
    finding the held-out evaluation scenes, recording and merging the parts;
(b) one evaluation episode step by step: where the time goes between rendering the protocol image
    (`frame`), the policy's forward and the physics (`env.step`), for a policy queried every k steps
    (--execute; rendering and the policy run only on query steps, as in evaluation). The policy is
    a trained run (--run), an untrained packaged graph (--graph: same forward cost) or, by default,
    a plain torch MLP the size of the MT50 graph's head (no image encoder: a lower bound);
(c) evaluation: env steps/s in 1 and W processes, and their ratio. Where the protocol's evaluation
    runner exists (graphvla.runners.eval.protocol.evaluate_protocol) it is what runs: the policy of (b)
    served in this process, reached over WebSocket by each worker, episodes stopping at success, wall
    clock incl. worker start-up and env builds. Otherwise, or with --raw-sim, the bare simulator
    loop (make_env, start_episode, the protocol image every k steps, random actions, --steps steps
    per episode, no policy) in 1 and W spawned processes, timed once every process built its envs.

    python bench/sim_fps.py [--tasks reach-v3,push-v3,door-open-v3,drawer-close-v3] [--episodes 3]
        [--eval-episodes 2] [--size 64] [--execute 4] [--workers 2] [--run RUN | --graph metaworld/mt50] [--json PATH]

Absolute numbers depend on the machine and on what else runs on it; the ratios are measured in
the same run."""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

DEFAULT_TASKS = "reach-v3,push-v3,door-open-v3,drawer-close-v3"


def quiet():
    warnings.filterwarnings("ignore", module="gymnasium")
    warnings.filterwarnings("ignore", message=".*(not within the observation space|maximum and minimum)")


# --- (a) recording ------------------------------------------------------------------------------

def recording(tasks, episodes, size, workers):
    from graphvla.data.protocol_record import record_protocol

    with tempfile.TemporaryDirectory(prefix="graphvla-simfps-") as tmp:
        t = time.perf_counter()
        summary = record_protocol(Path(tmp) / "data", tasks, episodes, size, workers=workers, progress=False,
                                  log=lambda *a: None)
        seconds = time.perf_counter() - t
    return {"workers": min(workers, len(tasks)), "frames": summary["frames"], "episodes": summary["episodes"],
            "seconds": seconds, "fps": summary["frames"] / seconds}


# --- (b) one evaluation episode -----------------------------------------------------------------

class MLPStandIn:
    """The Policy API (metadata / new_session / infer / infer_batch / reset) around a plain MLP the size of
    metaworld/mt50's head (fused 256 + state 4 -> 3 x 512 -> 8 x 4). It declares the MT50 graph's
    inputs (so evaluation renders the image and sends the instruction) but reads only the state."""

    def __init__(self, size: int):
        import torch
        from torch import nn

        torch.manual_seed(0)
        self.torch = torch
        self.net = nn.Sequential(nn.Linear(260, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 512),
                                 nn.GELU(), nn.Linear(512, 32)).eval()
        self.inputs = {"images": {"kind": "image", "views": 1, "size": [size, size]}, "instruction": {"kind": "text"},
                       "state": {"kind": "state", "dim": 4}}
        self.metadata = {"name": "mlp-stand-in", "fingerprint": "mlp-stand-in", "action_horizon": 8, "action_dim": 4,
                         "inputs": self.inputs, "outputs": ["actions"], "normalization": {}}
        self.label = (f"plain torch MLP 260-512-512-512-32 ({sum(p.numel() for p in self.net.parameters()):,} "
                      f"params; no image encoder: a lower bound on a policy's time)")

    def new_session(self, seed: int = 0):  # the server gives each connection one; the MLP keeps no state
        from graphvla.policy.session import Session

        return Session(seed)

    def check_rtc_request(self, value):
        raise ValueError("the MLP stand-in does no real-time chunking")

    def infer_batch(self, observations, sessions=None, **options):
        with self.torch.no_grad():
            x = self.torch.zeros(len(observations), 260)
            x[:, :4] = self.torch.from_numpy(np.stack([np.asarray(o["state"], np.float32) for o in observations]))
            return [{"actions": a.numpy()} for a in self.net(x).view(-1, 8, 4)]

    def infer(self, obs, session=None, **options):
        return self.infer_batch([obs])[0]

    def reset(self):
        pass


def build_policy(run, graph, size):
    """(policy with the Policy API, its label): a trained run, an untrained graph or the MLP stand-in."""
    if run is None and graph is None:
        policy = MLPStandIn(size)
        return policy, policy.label
    import graphvla
    from graphvla.policy.policy import Policy

    if run is not None:
        policy, label = graphvla.load_policy(run), f"graphvla.load_policy({run})"
    else:
        policy = Policy.from_compiled(graphvla.compile_graph(graph, device="cpu"))
        label = f"graph {graph}, untrained (compile_graph; a trained one costs the same)"
    return policy, label + f", {sum(p.numel() for p in policy.cg.model.parameters()):,} params"


def image_size(policy, default: int) -> int:
    sizes = [int(d["size"][0]) for d in policy.inputs.values() if d["kind"] == "image"]
    return sizes[0] if sizes else default


def ports(policy, image, obs, task) -> dict:
    """The protocol's observation keyed by the policy's input ports, as the evaluator fills them."""
    from graphvla.sim import metaworld as mw

    out = {}
    for port, decl in policy.inputs.items():
        kind = decl["kind"]
        if kind == "image":
            out[port] = image if int(decl.get("views", 1)) == 1 else np.stack([image] * int(decl["views"]))
        elif kind == "text":
            out[port] = mw.instruction(task)
        elif kind == "state":
            out[port] = mw.robot_state(obs) if int(decl["dim"]) == mw.STATE_DIM else np.asarray(obs, np.float32)
    return out


def episode_breakdown(task, size, execute, steps, policy):
    from graphvla.sim import starvla_mt50 as P

    env = P.make_env(task, size)
    try:
        obs, _ = P.start_episode(env, 0)
        policy.infer(ports(policy, P.frame(env, size), obs, task))  # warm-up, not timed
        render = infer = physics = 0.0
        queries = 0
        chunk = None
        start = time.perf_counter()
        for t in range(steps):
            if t % execute == 0:
                a = time.perf_counter()
                image = P.frame(env, size)
                b = time.perf_counter()
                chunk = np.asarray(policy.infer(ports(policy, image, obs, task))["actions"])
                c = time.perf_counter()
                render, infer, queries = render + b - a, infer + c - b, queries + 1
            action = P.clip_action(env, chunk[min(t % execute, len(chunk) - 1)])
            a = time.perf_counter()
            obs, _, terminated, truncated, info = env.step(action)
            physics += time.perf_counter() - a
            if terminated or truncated:
                steps = t + 1
                break
        total = time.perf_counter() - start
    finally:
        env.close()
    parts = {"render": render, "policy": infer, "physics": physics, "other": total - render - infer - physics}
    return {"task": task, "steps": steps, "queries": queries, "execute": execute, "size": size, "seconds": total,
            "per_step_ms": {k: 1000 * v / steps for k, v in parts.items()},
            "per_call_ms": {"render": 1000 * render / queries, "policy": 1000 * infer / queries,
                            "physics": 1000 * physics / steps},
            "share": {k: v / total for k, v in parts.items()}}


# --- (c) evaluation loop --------------------------------------------------------------------------

def _sim_worker(jobs, size, execute, steps, ready, go, results):
    """Build the envs of `jobs` [(task, episode)], wait for `go`, run them; put (steps, seconds)."""
    quiet()
    from graphvla.sim import starvla_mt50 as P

    envs = {task: P.make_env(task, size) for task, _ in jobs}
    rng = np.random.default_rng(0)
    P.start_episode(envs[jobs[0][0]], 0)  # warm the renderer and the physics once
    P.frame(envs[jobs[0][0]], size)
    ready.set()
    go.wait()
    start, done = time.perf_counter(), 0
    for task, ep in jobs:
        env = envs[task]
        P.start_episode(env, ep)
        low, high = env.action_space.low, env.action_space.high
        for t in range(steps):
            if t % execute == 0:
                P.frame(env, size)
            _, _, terminated, truncated, _ = env.step(rng.uniform(low, high).astype(np.float32))
            done += 1
            if terminated or truncated:
                break
    results.put((done, time.perf_counter() - start))
    results.close()
    results.join_thread()
    # MuJoCo's EGL contexts raise in __del__ when collected after EGL shut down at exit; the OS
    # frees them anyway, so leave without running the interpreter's teardown
    os._exit(0)


def sim_loop(tasks, episodes, size, execute, steps, workers):
    ctx = mp.get_context("spawn")
    jobs = [(t, e) for t in tasks for e in range(episodes)]
    shares = [jobs[i::workers] for i in range(min(workers, len(jobs)))]  # no idle process
    go, results = ctx.Event(), ctx.Queue()
    readies = [ctx.Event() for _ in shares]
    procs = [ctx.Process(target=_sim_worker, args=(share, size, execute, steps, r, go, results), daemon=True)
             for share, r in zip(shares, readies)]
    for p in procs:
        p.start()
    for r, p in zip(readies, procs):
        while not r.wait(1.0):
            if not p.is_alive():
                raise RuntimeError("a simulator worker died while building its environments")
    start = time.perf_counter()
    go.set()
    got = []
    while len(got) < len(procs):
        try:
            got.append(results.get(timeout=5))
        except queue.Empty:
            if sum(p.is_alive() for p in procs) < len(procs) - len(got):
                raise RuntimeError("a simulator worker died") from None
    seconds = time.perf_counter() - start
    for p in procs:
        p.join(60)
    frames = sum(n for n, _ in got)
    return {"workers": len(shares), "frames": frames, "seconds": seconds, "fps": frames / seconds,
            "kind": "raw sim loop (no policy, random actions; timed once every process has built its envs)"}


class ExecuteAdapter:
    """metadata -> the metaworld benchmark adapter executing k actions per query (picklable)."""

    def __init__(self, execute: int):
        self.execute = execute

    def __call__(self, metadata):
        from graphvla.client import load_adapter

        return load_adapter("metaworld", {"actions.execute": self.execute})


def protocol_runner():
    """graphvla.runners.eval.protocol.evaluate_protocol, or None where it does not exist (yet)."""
    try:
        from graphvla.runners.eval import protocol
    except ImportError:
        return None
    return getattr(protocol, "evaluate_protocol", None)


def protocol_eval(evaluate, policy, tasks, episodes, execute, workers):
    """evaluate_protocol over a policy served in this process, as `graphvla eval --protocol` runs it."""
    from functools import partial

    from graphvla.client import PolicyClient
    from graphvla.runners.serve import ServeOptions, ServerThread

    with ServerThread(policy, ServeOptions(port=0, max_batch=1)) as srv:
        connect = partial(PolicyClient, srv.url, None)
        t = time.perf_counter()
        summary = evaluate(connect, ExecuteAdapter(execute), tasks, episodes, workers=workers, out_dir=None,
                           gifs=False, log=lambda *a: None)
        seconds = time.perf_counter() - t
    frames = sum(int(e["steps"]) for rows in summary["episodes"].values() for e in rows)
    wins = sum(bool(e["success"]) for rows in summary["episodes"].values() for e in rows)
    kind = "evaluate_protocol (policy served over WebSocket in this process; wall clock incl. worker start-up and env builds)"
    return {"workers": min(workers, len(tasks)), "frames": frames, "successes": wins, "seconds": seconds,
            "fps": frames / seconds, "kind": kind}


# --- main -----------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=DEFAULT_TASKS, help="protocol task names, a bucket or MT10 (comma-separated)")
    ap.add_argument("--episodes", type=int, default=3, help="recorded episodes per task in (a)")
    ap.add_argument("--eval-episodes", type=int, default=2, help="episodes per task in (c)")
    ap.add_argument("--size", type=int, default=64, help="protocol image size (rendered at 1.5x)")
    ap.add_argument("--execute", type=int, default=4, help="query the policy (and render) every k steps")
    ap.add_argument("--steps", type=int, default=None, help="steps per episode in (b) and (c) (default the protocol's 400)")
    ap.add_argument("--workers", type=int, default=2, help="the parallel worker count compared with 1")
    ap.add_argument("--run", type=Path, default=None, help="a trained run (or checkpoint) to time in (b)")
    ap.add_argument("--graph", default=None, help="an untrained graph to time in (b), e.g. metaworld/mt50")
    ap.add_argument("--raw-sim", action="store_true",
                    help="(c): time the bare simulator loop even where evaluate_protocol exists")
    ap.add_argument("--skip", default="", help="parts to leave out, e.g. a,c")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the policy in (b)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    if args.run is not None and args.graph is not None:
        ap.error("give --run or --graph, not both")
    quiet()

    import torch

    from graphvla.sim import starvla_mt50 as P

    torch.set_num_threads(args.threads)
    tasks = P.select(names=[t.strip() for t in args.tasks.split(",") if t.strip()])
    steps = args.steps or P.MAX_STEPS
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    load = os.getloadavg()
    print(f"starvla-mt50 simulator on {os.cpu_count()} CPU(s), load average {load[0]:.1f} at start; "
          f"{len(tasks)} task(s), image {args.size} (rendered at {P.render_size(args.size)})")
    out = {"settings": {"tasks": tasks, "episodes": args.episodes, "eval_episodes": args.eval_episodes,
                        "size": args.size, "execute": args.execute, "steps": steps, "workers": args.workers},
           "machine": {"cpus": os.cpu_count(), "loadavg_start": load}}
    P._benchmark()
    env = P.make_env(tasks[0], args.size)  # imports and the variant cache, outside every timing
    env.close()

    policy, label = build_policy(args.run, args.graph, args.size)
    if "a" not in skip:
        rec = [recording(tasks, args.episodes, args.size, w) for w in (1, args.workers)]
        out["record"] = {"runs": rec, "ratio": rec[1]["fps"] / rec[0]["fps"]}
        print(f"\n(a) recording: {len(tasks)} task(s) x {args.episodes} demonstration(s), record_protocol's wall clock "
              f"incl. worker start-up and merge")
        for r in rec:
            print(f"    {r['workers']} worker(s): {r['frames']:6d} frames in {r['seconds']:6.1f} s = {r['fps']:7.1f} frames/s")
        print(f"    {rec[1]['workers']} workers / 1 worker: {out['record']['ratio']:.2f}x")

    if "b" not in skip:
        size = image_size(policy, args.size)
        b = episode_breakdown(tasks[0], size, args.execute, steps, policy)
        b["policy"] = label
        out["episode"] = b
        print(f"\n(b) one evaluation episode of {b['task']}: {b['steps']} steps, policy every {args.execute} "
              f"({b['queries']} queries), image {size}")
        print(f"    policy: {label}")
        print(f"    {'part':8s} {'ms per call':>12s} {'ms per step':>12s} {'share':>7s}")
        for k in ("render", "policy", "physics", "other"):
            call = f"{b['per_call_ms'][k]:12.3f}" if k in b["per_call_ms"] else f"{'':12s}"
            print(f"    {k:8s} {call} {b['per_step_ms'][k]:12.3f} {100 * b['share'][k]:6.1f}%")
        print(f"    {'total':8s} {'':12s} {1000 * b['seconds'] / b['steps']:12.3f} {100.0:6.1f}%"
              f"   = {b['steps'] / b['seconds']:.0f} steps/s in one process")

    if "c" not in skip:
        evaluate = None if args.raw_sim else protocol_runner()
        if evaluate is None:
            ev = [sim_loop(tasks, args.eval_episodes, args.size, args.execute, steps, w) for w in (1, args.workers)]
        else:
            ev = [protocol_eval(evaluate, policy, tasks, args.eval_episodes, args.execute, w) for w in (1, args.workers)]
            steps = P.MAX_STEPS
        out["eval"] = {"runs": ev, "ratio": ev[1]["fps"] / ev[0]["fps"], "kind": ev[0]["kind"]}
        print(f"\n(c) evaluation: {len(tasks)} task(s) x {args.eval_episodes} episode(s) of up to {steps} steps, "
              f"frame{'' if evaluate is None else ' and policy'} every {args.execute} steps")
        print(f"    {ev[0]['kind']}")
        for r in ev:
            print(f"    {r['workers']} worker(s): {r['frames']:6d} steps in {r['seconds']:6.1f} s = {r['fps']:7.1f} steps/s")
        print(f"    {ev[1]['workers']} workers / 1 worker: {out['eval']['ratio']:.2f}x")

    out["machine"]["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
