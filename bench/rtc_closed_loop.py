"""Closed-loop asynchronous execution on the starvla-mt50 protocol's MT10 tasks, with a SIMULATED
inference latency: success rate (Wilson 95%) and mean action jerk per execution mode.

The policy runs in this process (graphvla's Policy with one session per episode, as the server
gives each connection; the session is reset at each episode start like `graphvla eval` does). The
latency is simulated in control steps, so the result does not depend on how fast this machine is:

  sync       the simulation waits for every chunk: query, run `execute` actions, query again
             (graphvla eval's ChunkExecutor); the latency costs no control step
  switch     asynchronous (graphvla.client.realtime.ActionQueue): a request goes out when the queue
             holds horizon - execute actions or fewer; for d steps after it the robot keeps running
             the old queue, then the chunk replaces the queue from step d on
  ensemble   the same, but the overlap averages the old and new predictions (ACT weights)
  rtc        the same as switch, and the request carries the remaining actions and d: flow heads
             inpaint the chunk (guided sampling), regression heads get prefix replacement + blend
With d = 0, switch and rtc run exactly the episodes of sync (same requests, same chunks; rtc leaves
a chunk unchanged at d = 0), so they are not run again unless --all-d0 is given.

Jerk: per episode the mean over steps t >= 2 and the 4 action dims of |a_t - 2 a_(t-1) + a_(t-2)|
of the actions sent to the simulator (after clipping), then the mean over episodes.
The protocol's episodes: a fresh env per task reset in episode order, one zero action, at most 400
steps, success when info["success"] == 1.

Resumable: each (condition, task) is written to OUT/LABEL/CONDITION/TASK.json as soon as it ends and
is skipped when present; the summary (OUT/LABEL/summary.json) and a Markdown table are written at the end.

    nice -n 19 python bench/rtc_closed_loop.py --run /work/data/rtc-fm --label flow -o docs/results/rtc \\
        [--episodes 10] [--delays 0,2,4] [--modes sync,switch,ensemble,rtc] [--workers 2]
    python bench/rtc_closed_loop.py --table docs/results/rtc   # the Markdown table of every label
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
import warnings
from pathlib import Path

import numpy as np

MODES = ("sync", "switch", "ensemble", "rtc")
_POLICY = {}


def condition_name(mode: str, delay: int | None) -> str:
    return mode if mode == "sync" else f"{mode}-d{delay}"


def episode_jerk(actions: list) -> float | None:
    a = np.asarray(actions, dtype=np.float64)
    if len(a) < 3:
        return None
    return float(np.abs(a[2:] - 2 * a[1:-1] + a[:-2]).mean())


def _policy(run: str):
    if run not in _POLICY:
        import torch

        from graphvla.policy.loading import load_policy

        torch.set_num_threads(1)
        _POLICY[run] = load_policy(run)
    return _POLICY[run]


def run_episode(policy, session, env, builder, task, episode, mode, delay, execute, size):
    from graphvla.client.adapters import ChunkExecutor
    from graphvla.client.realtime import ActionQueue
    from graphvla.sim import starvla_mt50 as P

    horizon = policy.metadata["action_horizon"]
    obs, _ = P.start_episode(env, episode)
    scene = P.scene_of(env)
    session.reset()

    def query(extra=None):
        request = builder(task, obs, P.frame(env, size))
        return policy.infer({**request, **(extra or {})}, session)["actions"]

    executed, success, steps, stalls, queries = [], False, 0, 0, 0
    sync = ChunkExecutor(execute) if mode == "sync" else None
    queue = None if sync else ActionQueue(horizon - execute, mode)
    pending = None  # (the queue time it arrives at, chunk)
    for steps in range(1, P.MAX_STEPS + 1):
        if sync is not None:
            if sync.needs_query():
                sync.add(query())
                queries += 1
            action = sync.next()
        else:
            if pending is not None and queue.t >= pending[0]:
                queue.on_chunk(pending[1])
                pending = None
            if pending is None and queue.needs_request():
                chunk = query(queue.begin_request(delay))
                queries += 1
                pending = (queue.t + delay, chunk)
                if delay == 0:
                    queue.on_chunk(chunk)
                    pending = None
            if not len(queue):  # nothing left to run: the robot waits for the chunk in flight
                stalls += 1
                queue.on_chunk(pending[1])
                pending = None
            action = queue.pop()
        action = P.clip_action(env, action)
        executed.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        if info.get("success", 0.0) == 1.0:
            success = True
            break
        if terminated or truncated:
            break
    return {"episode": episode, "scene": scene, "success": success, "steps": steps, "queries": queries, "stalls": stalls,
            "jerk": episode_jerk(executed)}


def run_job(job: dict) -> dict:
    from graphvla.runners.eval.metaworld import RequestBuilder
    from graphvla.sim import starvla_mt50 as P

    warnings.filterwarnings("ignore", module="gymnasium")
    policy = _policy(job["run"])
    builder = RequestBuilder(policy.metadata, instruction=P.instruction)
    size = builder.image_size or 64
    env = P.make_env(job["task"], size)
    session = policy.new_session(0)
    started = time.perf_counter()
    try:
        # the protocol resets a task's env in episode order: episodes before `first` are reset through
        start_episodes = range(job["first"], job["first"] + job["episodes"])
        for ep in range(job["first"]):
            P.start_episode(env, ep)
        rows = [run_episode(policy, session, env, builder, job["task"], ep, job["mode"], job["delay"],
                            job["execute"], size) for ep in start_episodes]
    finally:
        env.close()
    out = {**{k: job[k] for k in ("task", "mode", "delay", "execute", "episodes", "first")}, "episodes_run": rows,
           "seconds": round(time.perf_counter() - started, 1)}
    path = Path(job["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)  # never a half-written result
    return out


def summarize(label_dir: Path, tasks: list[str]) -> dict:
    from graphvla.runners.eval.stats import wilson_interval

    summary = {}
    for cond_dir in sorted(p for p in label_dir.iterdir() if p.is_dir()):
        if not all((cond_dir / f"{t}.json").is_file() for t in tasks):
            continue
        files = [f for t in tasks for f in sorted(cond_dir.glob(f"{t}*.json"))]  # TASK.json + top-ups TASK.fromN.json
        parts = [json.loads(f.read_text()) for f in files]
        rows = [r for p in parts for r in p["episodes_run"]]
        wins = sum(r["success"] for r in rows)
        jerks = [r["jerk"] for r in rows if r["jerk"] is not None]
        summary[cond_dir.name] = {
            "mode": parts[0]["mode"], "delay": parts[0]["delay"], "execute": parts[0]["execute"],
            "episodes": len(rows), "successes": wins, "success_rate": wins / len(rows),
            "ci95": list(wilson_interval(wins, len(rows))), "mean_jerk": float(np.mean(jerks)),
            "stalls_per_episode": float(np.mean([r["stalls"] for r in rows])),
            "queries_per_episode": float(np.mean([r["queries"] for r in rows])),
            "per_task": {t: sum(r["success"] for p in parts if p["task"] == t for r in p["episodes_run"]) for t in tasks}}
    return summary


def markdown(root: Path) -> str:
    lines = ["| policy | mode | d | success [Wilson 95%] | mean jerk | stalls/episode |", "|---|---|---|---|---|---|"]
    for summary_file in sorted(root.glob("*/summary.json")):
        data = json.loads(summary_file.read_text())
        label = data["label"]
        order = sorted(data["conditions"].items(), key=lambda kv: (-1 if kv[1]["delay"] is None else kv[1]["delay"],
                                                                   MODES.index(kv[1]["mode"])))
        for name, c in order:
            d = "any (waits)" if c["delay"] is None else str(c["delay"])
            mode = c["mode"] if c["mode"] != "rtc" else f"rtc ({data['rtc_method']})"
            lines.append(f"| {label} | {mode} | {d} | {100 * c['success_rate']:.0f}% [{100 * c['ci95'][0]:.0f}, "
                         f"{100 * c['ci95'][1]:.0f}] ({c['successes']}/{c['episodes']}) | {c['mean_jerk']:.4f} | "
                         f"{c['stalls_per_episode']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a trained run (its latest checkpoint)")
    ap.add_argument("--label", help="name of this policy in the table and under OUT")
    ap.add_argument("-o", "--out", default="docs/results/rtc")
    ap.add_argument("--tasks", default="MT10", help="starvla-mt50 tasks, MT10 or bucket names")
    ap.add_argument("--episodes", type=int, default=10, help="per task and condition")
    ap.add_argument("--first-episode", type=int, default=0,
                    help="top up: run the protocol's episodes from this one on (written beside the first ones)")
    ap.add_argument("--delays", default="0,2,4", help="simulated inference delays in control steps")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--execute", type=int, default=None, help="actions per chunk (default: the graph's serve.execute_steps)")
    ap.add_argument("--all-d0", action="store_true", help="also run switch and rtc at d = 0 (they equal sync)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--table", metavar="OUT", help="print the Markdown table of every label under OUT and exit")
    args = ap.parse_args()
    if args.table:
        print(markdown(Path(args.table)), end="")
        return
    if not (args.run and args.label):
        ap.error("--run and --label are required (or --table OUT)")

    from graphvla.sim import starvla_mt50 as P

    tasks = P.select(names=args.tasks.split(","))
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"--modes: '{bad[0]}' is not one of {', '.join(MODES)}")
    delays = [int(d) for d in args.delays.split(",") if d != ""]
    policy = _policy(args.run)
    meta = policy.metadata
    execute = args.execute
    if execute is None:
        execute = int(policy.cg.spec.section("serve").get("execute_steps") or meta["action_horizon"])
    if max(delays) > meta["action_horizon"] - execute:
        ap.error(f"--delays: at most horizon - execute = {meta['action_horizon'] - execute} (the queue would run dry)")
    label_dir = Path(args.out) / args.label
    conditions = [("sync", None)] if "sync" in modes else []
    for d in delays:
        for m in modes:
            if m != "sync" and (d > 0 or args.all_d0 or m == "ensemble"):
                conditions.append((m, d))
    jobs = []
    for mode, d in conditions:
        for t in tasks:
            suffix = "" if args.first_episode == 0 else f".from{args.first_episode}"
            path = label_dir / condition_name(mode, d) / f"{t}{suffix}.json"
            if not path.is_file():
                jobs.append({"run": args.run, "task": t, "mode": mode, "delay": d, "execute": execute,
                             "episodes": args.episodes, "first": args.first_episode, "path": str(path)})
    print(f"{args.label}: {len(conditions)} conditions x {len(tasks)} tasks, {len(jobs)} (condition, task) jobs to run, "
          f"{args.episodes} episodes each", flush=True)
    P._benchmark()  # the scene cache, built once before any worker reads it
    started = time.perf_counter()

    def log(r):
        wins = sum(e["success"] for e in r["episodes_run"])
        print(f"  {condition_name(r['mode'], r['delay'])} {r['task']}: {wins}/{len(r['episodes_run'])} "
              f"({r['seconds']}s, {time.perf_counter() - started:.0f}s so far)", flush=True)

    if args.workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for r in pool.imap_unordered(run_job, jobs):
                log(r)
    else:
        for job in jobs:
            log(run_job(job))
    summary = {"label": args.label, "run": args.run, "graph": meta["name"], "fingerprint": meta["fingerprint"],
               "rtc_method": meta["rtc"]["method"], "tasks": tasks, "episodes_per_task": args.first_episode + args.episodes,
               "horizon": meta["action_horizon"], "execute": execute, "conditions": summarize(label_dir, tasks)}
    (label_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(markdown(Path(args.out)), end="")


if __name__ == "__main__":
    main()
