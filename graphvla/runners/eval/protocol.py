"""Closed-loop evaluation on a published protocol (`graphvla eval RUN --protocol NAME`).

Exactly the protocol's episodes, from the protocol's module (`graphvla.sim.protocol_module`):
starvla-mt50 (`sim/starvla_mt50.py`: per task a fresh env reset in episode order, one zero action,
at most 400 steps) or lerobot-metaworld (`sim/lerobot_metaworld.py`: per task one env reseeded
with 1000 + episode, at most 500 steps); success when `info["success"] == 1`. The
policy is reached through a client (`connect()` returns one), so what is measured is what any
openpi-style client of the server gets. Tasks are independent (each env draws its scenes from its
own generator), so `workers` processes may take tasks in any order and every episode comes out as
with one worker.

Statistics: per task and per bucket the success rate with a Wilson 95% interval; the protocol's
overall figure is the mean of the four bucket rates, with a Wilson interval at the effective
sample size of that stratified mean (n_eff = p(1-p) / sum_b w_b^2 p_b(1-p_b)/n_b, w_b = 1/4).
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np

from ...fileio import write_text_atomic
from .stats import wilson_interval

PROTOCOLS = {"starvla-mt50": "Meta-World MT50 as starVLA evaluates it: corner2 camera, seed 4042, "
                             "10 episodes per task, 400 steps, overall = mean of 4 bucket rates",
             "lerobot-metaworld": "Meta-World as LeRobot evaluates it (SmolVLA, Evo-1): MT1 envs, corner2 flipped, "
                                  "reset seed 1000 + episode, 10 episodes per task, 500 steps, "
                                  "overall = mean of 4 bucket rates"}
DEFAULT = "starvla-mt50"


VALIDATION_NOTE = ("Validation scenes (`--validation`): scenes neither the protocol's evaluation nor the recording "
                   "starts from; not the protocol's episodes, so no published row stands beside them.")


def _module(name: str | None):
    from ...sim import protocol_module

    return protocol_module(name or DEFAULT)


def run_task(connect, make_adapter, task: str, episodes: int, gif_dir: str | None = None,
             protocol: str | None = None, scenes: list[int] | None = None) -> dict:
    """Every episode of one task: {task, episodes: [{episode, scene, success, steps, queries}]}.
    scenes: instead of the protocol's episodes, one episode from each of these scenes (validation)."""
    from .metaworld import RequestBuilder

    P = _module(protocol)
    warnings.filterwarnings("ignore", module="gymnasium")
    with connect() as client:
        builder = RequestBuilder(client.metadata, instruction=P.instruction)
        adapter = make_adapter(client.metadata)
        size = builder.image_size or 64
        reset = client.reset if client.metadata.get("server") == "graphvla" else None
        env = P.make_env(task, size)
        rows, frames = [], []
        try:
            for ep in range(episodes if scenes is None else len(scenes)):
                obs, _ = P.start_episode(env, ep) if scenes is None else P.start_scene(env, scenes[ep])
                scene = P.scene_of(env)
                scene_vec = P.scene_vector(env)
                if reset:
                    reset()
                adapter.reset()
                record = gif_dir is not None and ep == 0
                success, steps = False, 0
                for steps in range(1, P.MAX_STEPS + 1):
                    need = adapter.scheduler.needs_query()
                    frame = P.frame(env, size) if (record or (need and builder.needs_image)) else None
                    if record:
                        frames.append(frame)
                    action = adapter.act(builder(task, obs, frame) if need else {}, client.infer)
                    obs, _, terminated, truncated, info = env.step(P.clip_action(env, action))
                    if info.get("success", 0.0) == 1.0:
                        success = True
                        break
                    if terminated or truncated:
                        break
                rows.append({"episode": ep, "scene": scene, "scene_vector": scene_vec, "success": success,
                             "steps": steps, "queries": adapter.queries})
        finally:
            env.close()
    if gif_dir is not None and frames:
        from .runner import write_gif

        write_gif(Path(gif_dir) / f"{task}.gif", frames)
    return {"task": task, "episodes": rows}


def _run_task_job(args):
    return run_task(*args)


def evaluate_protocol(connect, make_adapter, tasks: list[str], episodes: int = 10, workers: int = 1,
                      out_dir: Path | None = None, gifs: bool = True, training_scenes: dict | None = None,
                      graph: dict | None = None, log=print, protocol: str | None = None,
                      validation: dict[str, list[int]] | None = None) -> dict:
    """Run the protocol's episodes of `tasks`, return the summary (and write OUT/results.json).

    connect: a picklable factory of a client context manager (metadata, infer, reset).
    make_adapter: a picklable factory metadata -> benchmark adapter (a fresh one per task).
    training_scenes: task -> scene vectors of the training demonstrations, to count evaluation
    episodes that start from a scene the policy was trained on (None: unknown).
    protocol: a name of PROTOCOLS (None: starvla-mt50).
    validation: task -> scenes (`protocol_record.validation_scenes`) to run instead of the protocol's
    episodes; the summary is then marked as validation and set beside no published row."""
    P = _module(protocol)
    started = time.perf_counter()
    gif_dir = str(out_dir) if (gifs and out_dir is not None) else None
    jobs = [(connect, make_adapter, t, episodes, gif_dir, P.NAME, None if validation is None else validation[t])
            for t in tasks]
    results: dict[str, list] = {}
    if hasattr(P, "_benchmark"):
        P._benchmark()  # build the scene cache once, before any worker reads it
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for r in pool.imap_unordered(_run_task_job, jobs):
                results[r["task"]] = r["episodes"]
                _log_task(log, r)
    else:
        for job in jobs:
            r = _run_task_job(job)
            results[r["task"]] = r["episodes"]
            _log_task(log, r)
    summary = summarize_protocol({t: results[t] for t in tasks}, training_scenes, protocol=P.NAME,
                                 validation=validation is not None)
    summary["config"] = {"protocol": P.NAME, "tasks": tasks, "episodes_per_task": episodes, "max_steps": P.MAX_STEPS,
                         "seed": P.SEED, "camera": P.CAMERA, "workers": workers, **(graph or {}),
                         **({"metaworld": P.metaworld_version()} if hasattr(P, "metaworld_version") else {}),
                         "seconds": round(time.perf_counter() - started, 1)}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(out_dir) / "results.json", json.dumps(summary, indent=2))
    return summary


def _log_task(log, r):
    wins = sum(e["success"] for e in r["episodes"])
    log(f"{r['task']}: {wins}/{len(r['episodes'])} successes")


def _rate(flags) -> dict:
    s, n = int(sum(flags)), len(flags)
    return {"success_rate": s / n if n else 0.0, "successes": s, "episodes": n, "ci95": list(wilson_interval(s, n))}


def stratified_interval(rates: list[float], ns: list[int], z: float = 1.959964) -> tuple[float, float]:
    """Wilson interval of an equally weighted mean of proportions at its effective sample size."""
    k = len(rates)
    p = sum(rates) / k
    var = sum((1 / k) ** 2 * r * (1 - r) / n for r, n in zip(rates, ns))
    n_eff = p * (1 - p) / var if var > 0 else 1 / sum((1 / k) ** 2 / n for n in ns)
    denom = 1 + z * z / n_eff
    centre = (p + z * z / (2 * n_eff)) / denom
    half = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize_protocol(per_task: dict[str, list[dict]], training_scenes: dict | None = None,
                       protocol: str | None = None, validation: bool = False) -> dict:
    """Per task, per bucket, the mean over the tasks run and (with all 50 tasks) the protocol's
    overall; the peers' published figures beside each (None where they publish none: a row
    published per bucket only has a figure for a complete bucket); scenes shared with the
    training data. validation: the episodes are validation scenes, not the protocol's, so no
    difference from a published row is computed (`validation: true` marks the summary)."""
    P = _module(protocol)

    tasks = {}
    for task, rows in per_task.items():
        tasks[task] = {**_rate([r["success"] for r in rows]), "bucket": P.bucket_of(task), "peers": P.peer_rates(task)}
    buckets = {}
    for b in P.BUCKETS:
        names = [t for t in per_task if P.bucket_of(t) == b]
        if not names:
            continue
        flags = [r["success"] for t in names for r in per_task[t]]
        peer = {row: _mean([P.peer_rates(t)[row] for t in names]) for row in P.PEER_ROWS}
        if len(names) == len(P.bucket_tasks()[b]):  # a complete bucket: its published figure where given
            peer = {row: v if v is not None else P.peer_rates()[row].get(b) for row, v in peer.items()}
        buckets[b] = {**_rate(flags), "tasks": len(names), "of": len(P.bucket_tasks()[b]), "peers": peer}
    all_flags = [r["success"] for rows in per_task.values() for r in rows]
    task_rates = [t["success_rate"] for t in tasks.values()]
    mean = {"success_rate": sum(task_rates) / len(task_rates), "successes": int(sum(all_flags)),
            "episodes": len(all_flags), "ci95": list(wilson_interval(int(sum(all_flags)), len(all_flags))),
            "peers": {row: _mean([t["peers"][row] for t in tasks.values()]) for row in P.PEER_ROWS}}
    out = {"protocol": P.NAME, "tasks": tasks, "buckets": buckets, "mean": mean}
    if set(per_task) == set(P.tasks()):
        rates = [buckets[b]["success_rate"] for b in P.BUCKETS]
        out["overall"] = {"success_rate": sum(rates) / len(rates),
                          "ci95": list(stratified_interval(rates, [buckets[b]["episodes"] for b in P.BUCKETS])),
                          "peers": {row: P.peer_rates()[row]["overall"] for row in P.PEER_ROWS}}
    seen = None
    if training_scenes is not None:
        seen = 0
        for task, rows in per_task.items():
            known = [np.asarray(v) for v in training_scenes.get(task, [])]
            seen += sum(any(np.allclose(np.asarray(r["scene_vector"]), k) for k in known) for r in rows)
    out["episodes_from_training_scenes"] = seen
    if validation:
        out["validation"] = True
    out["versus_peers"] = None if validation else peer_differences(out)
    out["episodes"] = per_task
    return out


def same_scenes(results: list[dict], names: list[str]) -> str:
    """The protocol that every evaluation (`graphvla eval --protocol` results.json) ran, after
    checking they ran the same tasks from the same scenes, so their episodes can be pooled or
    paired one to one. Raises ValueError naming the first evaluation that differs from names[0]."""
    protocols = {str(r.get("protocol")) for r in results}
    if len(protocols) != 1:
        raise ValueError(f"evaluations of different protocols: {', '.join(sorted(protocols))}")
    first = results[0]["episodes"]
    for name, r in zip(names[1:], results[1:]):
        if set(r["episodes"]) != set(first):
            raise ValueError(f"{name}: its tasks are not {names[0]}'s")
        for task, eps in r["episodes"].items():
            if [e["scene"] for e in eps] != [e["scene"] for e in first[task]]:
                raise ValueError(f"{name}: the episodes of {task} are not {names[0]}'s scenes")
    return protocols.pop()


def _mean(values):
    """The mean, or None when some value is unknown."""
    return None if any(v is None for v in values) else sum(values) / len(values)


def _pct(v, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def format_protocol_table(summary: dict, label: str = "GraphVLA") -> str:
    """Buckets (+ overall) beside the peers' published rows; then per task when not all 50 ran."""
    P = _module(summary.get("protocol"))

    validation = bool(summary.get("validation"))
    peers = [] if validation else list(P.PEER_ROWS)  # validation scenes are not the peers' episodes
    lines = [VALIDATION_NOTE, ""] if validation else []
    head = ["", *[f"{b} ({v['tasks']}/{v['of']})" for b, v in summary["buckets"].items()]]
    overall = summary.get("overall")
    head.append("overall" if overall else f"mean of {len(summary['tasks'])} tasks")
    ours = [label, *[f"{100 * v['success_rate']:.1f}% [{100 * v['ci95'][0]:.0f}, {100 * v['ci95'][1]:.0f}]"
                     for v in summary["buckets"].values()]]
    tot = overall or summary["mean"]
    ours.append(f"{100 * tot['success_rate']:.1f}% [{100 * tot['ci95'][0]:.0f}, {100 * tot['ci95'][1]:.0f}]")
    rows = [head, ours]
    for row in peers:
        rows.append([P.PEER_ROWS[row], *[_pct(v['peers'][row]) for v in summary["buckets"].values()],
                     _pct(tot['peers'][row])])
    lines += _table(rows)
    if not overall:
        lines.append("")
        per_task_peers = [r for r in peers if any(v["peers"][r] is not None for v in summary["tasks"].values())]
        trows = [["task", "bucket", label, *(P.PEER_ROWS[r].replace("starVLA ", "") for r in per_task_peers)]]
        for task, v in summary["tasks"].items():
            trows.append([task, v["bucket"], f"{v['successes']}/{v['episodes']} [{100 * v['ci95'][0]:.0f}, "
                          f"{100 * v['ci95'][1]:.0f}]", *(_pct(v['peers'][r], 0) for r in per_task_peers)])
        lines += _table(trows)
    if not validation:
        lines += ["", format_peer_differences(summary.get("versus_peers") or peer_differences(summary), P.NAME)]
    seen = summary.get("episodes_from_training_scenes")
    lines.append("")
    lines.append("episodes starting from a scene in the training data: "
                 + ("unknown (no --data, and the run names none)" if seen is None else f"{seen} of {summary['mean']['episodes']}"))
    return "\n".join(lines)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for i, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def format_protocol_markdown(summary: dict, label: str = "GraphVLA") -> str:
    """The same figures as `format_protocol_table`, as Markdown: buckets (+ overall) beside
    the peers' rows, then every task with its interval and the peers' per-task rates."""
    P = _module(summary.get("protocol"))
    pct = _pct
    validation = bool(summary.get("validation"))
    peer_rows = {} if validation else P.PEER_ROWS

    def ci(v):
        return f"{pct(v['success_rate'])} [{100 * v['ci95'][0]:.1f}, {100 * v['ci95'][1]:.1f}]"

    buckets = summary["buckets"]
    tot = summary.get("overall") or summary["mean"]
    last = "overall (mean of buckets)" if summary.get("overall") else f"mean of {len(summary['tasks'])} tasks"
    lines = [VALIDATION_NOTE, ""] if validation else []
    lines += ["| | " + " | ".join(f"{b} ({v['tasks']}/{v['of']})" for b, v in buckets.items()) + f" | {last} |",
             "|---" * (len(buckets) + 2) + "|",
             f"| {label} | " + " | ".join(ci(v) for v in buckets.values()) + f" | **{ci(tot)}** |"]
    for row, name in peer_rows.items():
        lines.append(f"| {name} | " + " | ".join(pct(v["peers"][row]) for v in buckets.values())
                     + f" | {pct(tot['peers'][row])} |")
    per_task_peers = [r for r in peer_rows if any(v["peers"][r] is not None for v in summary["tasks"].values())]
    # a protocol whose peers publish no per-task rates (lerobot-metaworld) gets no empty peer columns
    lines += ["", "| " + " | ".join(["task", "bucket", label] + [P.PEER_ROWS[r] for r in per_task_peers]) + " |",
              "|---" * (3 + len(per_task_peers)) + "|"]
    for task, v in summary["tasks"].items():
        cells = [task, v["bucket"], f"{v['successes']}/{v['episodes']} [{100 * v['ci95'][0]:.0f}, {100 * v['ci95'][1]:.0f}]"]
        lines.append("| " + " | ".join(cells + [_pct(v["peers"][r], 0) for r in per_task_peers]) + " |")
    if not validation:
        lines += [""] + [f"- {line}" for line in
                         format_peer_differences(summary.get("versus_peers") or peer_differences(summary),
                                                 P.NAME).splitlines()]
    seen = summary.get("episodes_from_training_scenes")
    lines += ["", "Episodes starting from a scene in the training data: "
              + ("unknown" if seen is None else f"{seen} of {summary['mean']['episodes']}") + "."]
    return "\n".join(lines) + "\n"


def peer_differences(summary: dict, z: float = 1.959964) -> dict:
    """Ours minus each starVLA row on the headline figure, with a 95% interval and a two-sided
    p-value from a stratified two-sample z-test. The strata are the buckets for the protocol's
    overall (each weighs 1/4), else the tasks run (each weighs equally). starVLA's side counts
    10 episodes per task, as its protocol runs. The variance uses (s + 1) / (n + 2) per stratum
    and side (Agresti-Caffo), so a stratum at 0/10 or 10/10 is not taken as certain. A row that
    publishes only its overall figure (no per-bucket rates held) is compared on the overall, with
    its side's variance bounded by p(1 - p) <= 1/4 in every stratum: a conservative test
    ("bounded": true), whose "significant" holds whatever the row's bucket rates are. A row
    without the figures a comparison needs (per-task rows, a subset of buckets) is not compared."""
    P = _module(summary.get("protocol"))
    if summary.get("overall"):
        strata = [(summary["buckets"][b]["success_rate"], summary["buckets"][b]["episodes"],
                   summary["buckets"][b]["peers"], P.EPISODES * summary["buckets"][b]["tasks"]) for b in P.BUCKETS]
    else:
        strata = [(v["success_rate"], v["episodes"], v["peers"], P.EPISODES) for v in summary["tasks"].values()]
    w = 1.0 / len(strata)
    out = {}
    overall_peers = (summary.get("overall") or {}).get("peers") or {}
    for row in P.PEER_ROWS:
        bounded = any(peers[row] is None for _, _, peers, _ in strata)
        if bounded and overall_peers.get(row) is None:
            continue
        if bounded:  # only the row's overall is published: bound its side's spread
            diff = sum(w * p for p, _, _, _ in strata) - overall_peers[row]
            var = sum(w * w * (_smoothed_var(p, n) + 0.25 / (m + 2)) for p, n, _, m in strata)
        else:
            diff = sum(w * (p - peers[row]) for p, _, peers, _ in strata)
            var = sum(w * w * (_smoothed_var(p, n) + _smoothed_var(peers[row], m)) for p, n, peers, m in strata)
        se = math.sqrt(var)
        pval = math.erfc(abs(diff) / se / math.sqrt(2)) if se > 0 else (0.0 if diff else 1.0)
        out[row] = {"difference": diff, "ci95": [diff - z * se, diff + z * se], "p_value": pval,
                    "significant": pval < 0.05, "bounded": bounded}
    return out


def _smoothed_var(rate: float, n: int) -> float:
    p = (rate * n + 1) / (n + 2)
    return p * (1 - p) / (n + 2)


def format_peer_differences(diffs: dict, protocol: str | None = None) -> str:
    P = _module(protocol)
    if not diffs:
        return ("no difference tested: the published rows give bucket figures only; "
                "run all 50 tasks for the overall comparison")
    lines = []
    for row, d in diffs.items():
        verdict = ("significant at 95%" if d["significant"] else "not significant at 95%")
        if d.get("bounded"):
            verdict += "; the row publishes its overall only: conservative test"
        lines.append(f"GraphVLA - {P.PEER_ROWS[row]}: {100 * d['difference']:+.1f} points "
                     f"[{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}], p = {d['p_value']:.3g} ({verdict})")
    return "\n".join(lines)
