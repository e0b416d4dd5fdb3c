"""A plain MLP baseline for Meta-World, evaluated exactly like a GraphVLA policy.

The MLP maps the robot state (`--state-key`, default `observation.state`: hand xyz + gripper, 4 dims)
and the task (a one-hot of the dataset's task_index, which stands for the instruction: at evaluation
the instruction the client sends is looked up in the dataset's meta/tasks.jsonl) to an 8-step action
chunk (masked L1 on the chunk, state standardized with the dataset's statistics). It trains for as
many steps, of as many samples, as the graph it is compared with (that graph's trainer.max_steps
and trainer.batch_size; --steps, --batch or a wall-clock --minutes override them), then is served
by the same policy server and driven through the same client, adapter and seeds as `graphvla eval`.

`--state-key observation.environment_state` gives it the full 39-dim observation (object and goal
positions): privileged information a camera policy does not get, so its result is an upper bound,
not a baseline, and is labelled so.

`--protocol NAME` (any protocol `graphvla eval --protocol` takes: starvla-mt50, lerobot-metaworld;
the names come from the same registry, `graphvla.sim.protocol_module`) evaluates it instead on
exactly that protocol's episodes of --tasks (default MT10; task names, MT10, MT50 or bucket names),
with --workers processes, through the same `evaluate_protocol` and `ProtocolAdapter` as
`graphvla eval --protocol`: the protocol's environments, seeds, episode length and instructions
(lerobot-metaworld: LeRobot's task descriptions, matched against the dataset's meta/tasks.jsonl),
each chunk executed the compared graph's serve.execute_steps at a time (else the adapter's;
--execute overrides). Train it on a dataset recorded with `graphvla data metaworld --protocol NAME`
(it reads no images); a recording made for another protocol is refused naming both, and the
evaluation episodes that start from a recorded scene are counted. With --compare of a
`graphvla eval --protocol NAME` results.json it prints both per task, both means (and with all 50
tasks the bucket-mean overall) with Wilson intervals, an exact McNemar test over the paired
episodes and a two-proportion test.

    python bench/mlp_baseline.py DATASET [--graph metaworld/mt10] [--steps N | --minutes M]
        [--state-key observation.state] [--no-task] [--tasks mt10] [--episodes 10]
        [--compare RUN/eval-metaworld/results.json] [-o OUT]
    python bench/mlp_baseline.py DATASET --protocol starvla-mt50|lerobot-metaworld [--tasks MT10] [--workers 2]
        [--graph RUN] [--compare RUN/eval-PROTOCOL/results.json] [-o OUT]
    python bench/mlp_baseline.py --from-results OUT/results.json --compare RUN/eval-metaworld/results.json

The graph whose budget it takes: --graph (a graph path or packaged name, or a run or checkpoint
folder), else the run behind --compare (RUN/eval-*/results.json -> RUN's latest checkpoint spec),
else metaworld/mt10-small-privileged (with --protocol: metaworld/mt10). No graph is read for the
budget with both --steps and --batch, nor with --minutes alone (batch 256, the earlier wall-clock
baseline). With --compare, prints the baseline and a `graphvla eval` result side by side."""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from graphvla.runners.eval.protocol import PROTOCOLS
from graphvla.runners.eval.stats import mcnemar_exact

HORIZON = 8
STATE_KEYS = {"observation.state": 4, "observation.environment_state": 39}
PRIVILEGED = "observation.environment_state"
DEFAULT_GRAPH = "metaworld/mt10-small-privileged"  # the graph of the README's MT10 table
PROTOCOL_GRAPH = "metaworld/mt10"  # the graph `graphvla quickstart` trains and evaluates on the protocol


def load_tasks(root: Path) -> list[str]:
    """The dataset's instructions by task_index (meta/tasks.jsonl)."""
    rows = [json.loads(line) for line in (root / "meta" / "tasks.jsonl").read_text().splitlines() if line.strip()]
    tasks = [""] * len(rows)
    for r in rows:
        tasks[int(r["task_index"])] = r["task"]
    return tasks


def load_chunks(root: Path, state_key: str = "observation.state", horizon: int = HORIZON):
    """(states [N, D], task ids [N], chunks [N, H, 4], masks [N, H]) from every episode of a LeRobot folder."""
    states, task_ids, chunks, masks = [], [], [], []
    for f in sorted((root / "data").glob("chunk-*/episode_*.parquet")):
        d = pd.read_parquet(f, columns=[state_key, "task_index", "action"])
        s = np.stack(d[state_key].to_numpy()).astype(np.float32)
        a = np.stack(d["action"].to_numpy()).astype(np.float32)
        T = len(a)
        idx = np.arange(T)[:, None] + np.arange(horizon)[None, :]
        masks.append(idx < T)
        chunks.append(a[np.minimum(idx, T - 1)])
        states.append(s)
        task_ids.append(d["task_index"].to_numpy().astype(np.int64))
    if not states:
        raise SystemExit(f"{root}: no data/chunk-*/episode_*.parquet (record one with `graphvla data metaworld`)")
    return np.concatenate(states), np.concatenate(task_ids), np.concatenate(chunks), np.concatenate(masks)


def net_input(states, task_ids, mean, std, n_tasks):
    """Standardized state, then the task one-hot (no columns when n_tasks is 0)."""
    x = (states - mean) / std
    if not n_tasks:
        return x
    return torch.cat([x, nn.functional.one_hot(task_ids, n_tasks).to(x.dtype)], -1)


class MLPPolicy:
    """The Policy API (metadata / new_session / infer / infer_batch / reset) around a torch MLP."""

    def __init__(self, net, mean, std, tasks, state_dim, horizon=HORIZON):
        self.net, self.mean, self.std = net.eval(), mean, std
        self.tasks = {t: i for i, t in enumerate(tasks)}  # instruction -> task id; empty: state only
        inputs = {"state": {"kind": "state", "dim": state_dim}}
        if state_dim == STATE_KEYS[PRIVILEGED]:  # the simulator's own observation: evaluation requires the flag
            inputs["state"]["privileged"] = True
        if self.tasks:
            inputs["instruction"] = {"kind": "text"}
        self.metadata = {"name": "mlp-baseline", "fingerprint": "mlp-baseline", "action_horizon": horizon,
                         "action_dim": 4, "inputs": inputs, "outputs": ["actions"], "normalization": {"state": "mean_std"},
                         "privileged": state_dim == STATE_KEYS[PRIVILEGED]}

    def task_id(self, instruction) -> int:
        if instruction not in self.tasks:
            raise ValueError(f"instruction {instruction!r} is none of the dataset's {len(self.tasks)} tasks")
        return self.tasks[instruction]

    def new_session(self, seed: int = 0):  # the server gives each connection one; the MLP keeps no state
        from graphvla.policy.session import Session

        return Session(seed)

    def check_rtc_request(self, value):
        raise ValueError("the MLP baseline does no real-time chunking")

    @torch.no_grad()
    def infer_batch(self, observations, sessions=None, **options):
        s = torch.from_numpy(np.stack([o["state"] for o in observations]).astype(np.float32))
        ids = torch.tensor([self.task_id(o["instruction"]) for o in observations] if self.tasks else [0] * len(s))
        out = self.net(net_input(s, ids, self.mean, self.std, len(self.tasks))).view(len(observations), -1, 4)
        return [{"actions": a.numpy()} for a in out]

    def infer(self, obs, session=None, **options):
        return self.infer_batch([obs])[0]

    def reset(self):
        pass


def train(states, task_ids, chunks, masks, n_tasks: int, steps: int | None, batch: int, minutes: float | None = None,
          seed: int = 0):
    """`steps` optimizer steps of `batch` samples (or as many as fit in `minutes` when steps is None)."""
    torch.manual_seed(seed)
    s, k, a, m = (torch.from_numpy(x) for x in (states, task_ids, chunks, masks))
    mean, std = s.mean(0), s.std(0).clamp_min(1e-3)
    net = nn.Sequential(nn.Linear(s.shape[1] + n_tasks, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                        nn.Linear(512, 512), nn.GELU(), nn.Linear(512, HORIZON * 4))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    start, done, losses = time.perf_counter(), 0, []
    while (done < steps) if steps is not None else (time.perf_counter() - start < minutes * 60):
        i = torch.randint(0, len(s), (batch,), generator=gen)
        pred = net(net_input(s[i], k[i], mean, std, n_tasks)).view(-1, HORIZON, 4)
        err = (pred - a[i]).abs().mean(-1)
        loss = (err * m[i]).sum() / m[i].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += 1
        losses.append(loss.item())
    return net, mean, std, {"steps": done, "batch": batch, "seconds": time.perf_counter() - start,
                            "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-50:]))}


def compared_spec(graph, compare: Path | None, default: str = DEFAULT_GRAPH):
    """(where the graph came from, its spec): the graph the baseline is compared with."""
    from graphvla.policy.checkpoint import resolve_checkpoint
    from graphvla.spec.loader import load_spec

    source = graph
    if source is not None and Path(source).is_dir():  # a run or checkpoint folder: its spec.yaml
        source = str(resolve_checkpoint(source) / "spec.yaml")
    if source is None and compare is not None:
        try:  # RUN/eval-metaworld/results.json -> RUN's latest checkpoint
            source = str(resolve_checkpoint(compare.resolve().parent.parent) / "spec.yaml")
        except FileNotFoundError:
            source = None
    source = source or default
    return source, load_spec(source)


def graph_budget(graph, compare: Path | None, default: str = DEFAULT_GRAPH):
    """(where the graph came from, trainer.max_steps, trainer.batch_size) of the graph compared with."""
    source, spec = compared_spec(graph, compare, default)
    trainer = spec.section("trainer")
    return source, int(trainer["max_steps"]), int(trainer["batch_size"])


# --- the protocol path (--protocol NAME) --------------------------------------------------------

def protocol_label(info: dict) -> str:
    """The baseline's row label in the protocol's tables."""
    if info.get("state_key", PRIVILEGED) == PRIVILEGED:
        return "MLP upper bound (privileged 39-d state" + (" + task" if info.get("task_one_hot") else "") + ", no camera)"
    return "MLP baseline (state + task, no camera)" if info.get("task_one_hot") else "MLP baseline (state only, no camera)"


def protocol_scenes(root: Path, protocol: str) -> dict | None:
    """task -> scene vectors of a protocol recording's demonstrations (None: not a protocol
    recording), as `graphvla eval --protocol --data` reads them; a recording made for another
    protocol is refused naming both."""
    from graphvla.data.protocol_record import check_recording_protocol
    from graphvla.runners.eval.evaluate import training_scenes

    try:
        check_recording_protocol([root], protocol)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return training_scenes([root]) or None


def two_proportion(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p) of the pooled two-proportion z-test."""
    p = (s1 + s2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (s1 / n1 - s2 / n2) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def p_text(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def verdict(p: float, name_a: str, name_b: str, diff: float) -> str:
    if p >= 0.05:
        return "not significant at 95%"
    return f"significant at 95%: {name_a if diff > 0 else name_b} is higher"


def protocol_comparison(ours: dict, other: dict, label: str, other_label: str) -> str:
    """Per task side by side on the episodes both ran, both means with Wilson intervals, an exact
    McNemar test over the paired episodes and a pooled two-proportion test."""
    from graphvla.runners.eval.protocol import _table, summarize_protocol

    if other.get("protocol") != ours.get("protocol"):
        raise SystemExit(f"--compare: not a `graphvla eval --protocol {ours.get('protocol')}` results.json "
                         f"(its protocol: {other.get('protocol')})")
    mine, theirs = {}, {}
    mismatched, dropped = 0, 0
    for task, rows in ours["episodes"].items():
        if task not in other.get("episodes", {}):
            continue
        a = {r["episode"]: r for r in rows}
        b = {r["episode"]: r for r in other["episodes"][task]}
        common = sorted(set(a) & set(b))
        dropped += len(b) - len(common)
        if not common:
            continue
        mismatched += sum(a[e].get("scene") != b[e].get("scene") for e in common)
        mine[task], theirs[task] = [a[e] for e in common], [b[e] for e in common]
    if not mine:
        raise SystemExit("--compare: the two results share no task episodes")
    lines = []
    missing = [t for t in ours["episodes"] if t not in mine]
    n_pairs = sum(len(v) for v in mine.values())
    note = f"compared on the {n_pairs} episodes both ran ({len(mine)} tasks)"
    if dropped or len(other["episodes"]) > len(mine):
        note += f"; the other result's further {dropped} episodes of these tasks and " \
                f"{len(other['episodes']) - len(mine)} other tasks are left out"
    if missing:
        note += f"; not in the other result: {', '.join(missing)}"
    lines.append(note)
    A, B = summarize_protocol(mine), summarize_protocol(theirs)

    def cell(v):
        return f"{v['successes']}/{v['episodes']} [{100 * v['ci95'][0]:.0f}, {100 * v['ci95'][1]:.0f}]"

    rows = [["task", "bucket", label, other_label, "only MLP", "only other", "McNemar p"]]
    tot_b = tot_c = 0
    for task in mine:
        b = sum(x["success"] and not y["success"] for x, y in zip(mine[task], theirs[task]))
        c = sum(y["success"] and not x["success"] for x, y in zip(mine[task], theirs[task]))
        tot_b, tot_c = tot_b + b, tot_c + c
        rows.append([task, A["tasks"][task]["bucket"], cell(A["tasks"][task]), cell(B["tasks"][task]),
                     str(b), str(c), f"{mcnemar_exact(b, c):.3f}"])
    lines.append("")
    lines += _table(rows)
    lines.append("")
    ma, mb = A["mean"], B["mean"]
    rows = [["", label, other_label]]
    rows.append([f"mean of {len(mine)} tasks", *(f"{100 * m['success_rate']:.1f}% [{100 * m['ci95'][0]:.1f}, "
                                                  f"{100 * m['ci95'][1]:.1f}]" for m in (ma, mb))])
    if "overall" in A and "overall" in B:
        rows.append(["overall (mean of 4 buckets)", *(f"{100 * o['success_rate']:.1f}% [{100 * o['ci95'][0]:.1f}, "
                                                       f"{100 * o['ci95'][1]:.1f}]" for o in (A["overall"], B["overall"]))])
    lines += _table(rows)
    lines.append("(Wilson 95% intervals; the mean's pools its episodes"
                 + ("; the tests below compare the pooled episodes, not the bucket-weighted overall)" if "overall" in A else ")"))
    diff = ma["success_rate"] - mb["success_rate"]
    lines.append("")
    if mismatched:
        lines.append(f"McNemar: not applicable, {mismatched} paired episodes start from different scenes "
                     f"(not the same protocol episodes)")
    else:
        p = mcnemar_exact(tot_b, tot_c)
        lines.append(f"paired, exact McNemar over the same {n_pairs} episodes: MLP alone succeeded in {tot_b}, "
                     f"{other_label} alone in {tot_c}: p = {p_text(p)}, {verdict(p, 'the MLP', other_label, diff)}")
    z, p2 = two_proportion(ma["successes"], ma["episodes"], mb["successes"], mb["episodes"])
    lines.append(f"unpaired, two-proportion z-test: {100 * diff:+.1f} points, z = {z:.2f}, p = {p_text(p2)}, "
                 f"{verdict(p2, 'the MLP', other_label, diff)}")
    if ours.get("config", {}).get("execute_steps") != other.get("config", {}).get("execute_steps"):
        lines.append(f"NOTE: chunks executed {ours.get('config', {}).get('execute_steps')} steps at a time here, "
                     f"{other.get('config', {}).get('execute_steps')} in the compared run (--execute sets it)")
    return "\n".join(lines)


def evaluate_on_protocol(policy, args, tasks: list[str], execute_steps: int | None, scenes: dict | None) -> dict:
    """The baseline served and evaluated as `graphvla eval --protocol` evaluates a graph."""
    from functools import partial

    from graphvla.client import PolicyClient
    from graphvla.runners.eval.evaluate import ProtocolAdapter
    from graphvla.runners.eval.protocol import evaluate_protocol
    from graphvla.runners.serve import ServeOptions, ServerThread

    # declared: the server's metadata carries the graph's serve.execute_steps, which the adapter follows
    make_adapter = ProtocolAdapter("metaworld", {}, args.execute, declared=bool(execute_steps))
    # one request at a time, as `graphvla eval --protocol` serves: no batch composition changes a forward
    with ServerThread(policy, ServeOptions(port=0, max_batch=1, execute_steps=execute_steps)) as srv:
        connect = partial(PolicyClient, srv.url, None)
        with connect() as probe:
            meta = probe.metadata
        graph = {"graph": meta.get("name"), "fingerprint": meta.get("fingerprint"),
                 "privileged": bool(meta.get("privileged")),
                 "execute_steps": getattr(make_adapter(meta).scheduler, "execute", None)}
        return evaluate_protocol(connect, make_adapter, tasks, args.episodes, args.workers, args.out, gifs=False,
                                 training_scenes=scenes, graph=graph, protocol=args.protocol)


def describe(info: dict) -> str:
    state = info.get("state_key", "observation.environment_state")  # results from before the flag: 39-d
    what = f"{STATE_KEYS.get(state, '?')}-d {state}" + (" + task one-hot" if info.get("task_one_hot") else ", no task")
    return what + (" (PRIVILEGED: an upper bound, not a baseline)" if state == PRIVILEGED else "")


def train_for_budget(args, names: list[str], budget_from, graph_steps, graph_batch):
    """Load the dataset's chunks and train the MLP for the given budget (--minutes, --steps/--batch,
    else the compared graph's), printing what it trains on; returns (net, mean, std, info)."""
    steps = None if args.minutes is not None else (args.steps or graph_steps)
    batch = args.batch or graph_batch or 256
    states, task_ids, chunks, masks = load_chunks(args.dataset, args.state_key)
    budget = f"{args.minutes} min" if steps is None else f"{steps} steps"
    if steps is not None and not args.steps:
        budget += f" (trainer.max_steps of {budget_from})"
    budget += f", batch {batch}" + (f" (trainer.batch_size of {budget_from})" if not args.batch and graph_batch else "")
    print(f"training an MLP on {describe({'state_key': args.state_key, 'task_one_hot': bool(names)})}, "
          f"{len(states)} frames of {len(names) or 'all'} task(s), for {budget} ...")
    if args.state_key == PRIVILEGED:
        print(f"  NOTE: {PRIVILEGED} is the full 39-d simulator observation (object and goal positions); "
              f"the result is a privileged upper bound, not a baseline for a camera policy")
    return train(states, task_ids, chunks, masks, len(names), steps, batch, args.minutes)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", type=Path, nargs="?")
    ap.add_argument("--graph", default=None,
                    help=f"graph (path, packaged name, or a run or checkpoint folder) whose trainer.max_steps / "
                         f"batch_size (and, with --protocol, serve.execute_steps) to match (default: the run behind "
                         f"--compare, else {DEFAULT_GRAPH}; with --protocol {PROTOCOL_GRAPH})")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default the graph's trainer.max_steps)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default the graph's trainer.batch_size)")
    ap.add_argument("--minutes", type=float, default=None, help="train for a wall-clock budget instead of a step count")
    ap.add_argument("--state-key", default="observation.state", choices=sorted(STATE_KEYS),
                    help=f"the dataset column the MLP reads; {PRIVILEGED} is privileged (an upper bound)")
    ap.add_argument("--no-task", action="store_true", help="state only: no task one-hot (the baseline before)")
    ap.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                    help="evaluate on a published protocol's episodes, as `graphvla eval --protocol`")
    ap.add_argument("--tasks", default="mt10",
                    help="comma-separated tasks or mt10 (--protocol: also MT50 and bucket names)")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1, help="--protocol: processes taking tasks side by side")
    ap.add_argument("--execute", type=int, default=None,
                    help="--protocol: execute K actions of each chunk (default the graph's serve.execute_steps, "
                         "else the adapter's)")
    ap.add_argument("--seed-offset", type=int, default=100000)
    ap.add_argument("--max-steps", type=int, default=None, help="episode length at evaluation")
    ap.add_argument("--compare", type=Path, default=None,
                    help="results.json of a `graphvla eval` run (`graphvla eval --protocol` with --protocol)")
    ap.add_argument("--from-results", type=Path, default=None,
                    help="skip training: compare the results.json of an earlier baseline run")
    ap.add_argument("-o", "--out", type=Path, default=Path("runs/mlp-baseline"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (more only helps on an idle machine)")
    args = ap.parse_args()
    if args.dataset is None and args.from_results is None:
        ap.error("give a DATASET (or --from-results FILE)")
    if args.steps is not None and args.minutes is not None:
        ap.error("give --steps or --minutes, not both")
    if args.protocol is None and (args.workers != 1 or args.execute is not None):
        ap.error("--workers and --execute need --protocol")
    if args.protocol is not None and (args.max_steps is not None or args.seed_offset != 100000):
        ap.error("--max-steps and --seed-offset belong to the own suite; a protocol fixes its own episodes")
    if args.workers < 1 or args.episodes < 1 or (args.execute is not None and args.execute < 1):
        ap.error("--workers, --episodes and --execute must be >= 1")
    torch.set_num_threads(args.threads)
    protocol = args.protocol or (json.loads(args.from_results.read_text()).get("protocol") if args.from_results else None)
    compared = json.loads(args.compare.read_text()).get("protocol") if args.compare else None
    if args.compare and compared != protocol:  # refuse before training, not after
        ap.error(f"--compare {args.compare}: " + (f"a --protocol {compared} result, not {protocol}; evaluate the "
                 f"baseline on the same episodes with --protocol {compared}" if compared and protocol else
                 f"a --protocol {compared} result; evaluate the baseline on the same episodes with "
                 f"--protocol {compared}" if compared else
                 "a `graphvla eval --suite` result; with --protocol, compare a `graphvla eval --protocol` one"))
    if protocol:
        args.protocol = protocol
        return protocol_main(args)

    from graphvla.client import PolicyClient, load_adapter
    from graphvla.runners.eval.runner import check_disjoint_seeds, evaluate_metaworld, format_table
    from graphvla.runners.serve import ServeOptions, ServerThread
    from graphvla.sim.metaworld import MT10

    if args.from_results:  # only print the comparison of an earlier run
        summary = json.loads(args.from_results.read_text())
        tasks, info = list(summary["tasks"]), summary["training"]
    else:
        tasks = MT10 if args.tasks.lower() == "mt10" else args.tasks.split(",")
        check_disjoint_seeds(args.dataset, tasks, args.seed_offset, args.episodes)
        legacy = args.minutes is not None and args.graph is None and args.compare is None  # the wall-clock baseline
        if legacy or (args.steps and args.batch):
            source, graph_steps, graph_batch = None, None, None
        else:
            source, graph_steps, graph_batch = graph_budget(args.graph, args.compare)
        names = [] if args.no_task else load_tasks(args.dataset)
        net, mean, std, info = train_for_budget(args, names, source, graph_steps, graph_batch)
        info.update({"state_key": args.state_key, "task_one_hot": bool(names), "privileged": args.state_key == PRIVILEGED,
                     "budget_from": source})
        print(f"  {info['steps']} steps in {info['seconds']:.0f} s, L1 {info['loss_first']:.3f} -> {info['loss_last']:.3f}")
        args.out.mkdir(parents=True, exist_ok=True)
        policy = MLPPolicy(net, mean, std, names, STATE_KEYS[args.state_key])
        with ServerThread(policy, ServeOptions(port=0)) as srv, PolicyClient(srv.url, None) as c:
            summary = evaluate_metaworld(c.infer, c.metadata, load_adapter("metaworld"), tasks, args.episodes,
                                         args.seed_offset, args.out, max_steps=args.max_steps, gifs=False,
                                         reset=c.reset)
        summary["training"] = info
        (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(format_table(summary))
    print(f"MLP input: {describe(info)}")
    if args.compare:
        other = json.loads(args.compare.read_text())
        name = other.get("config", {}).get("graph", "graphvla")
        label = "MLP upper bound" if info.get("state_key", PRIVILEGED) == PRIVILEGED else "MLP baseline"
        print(f"\n{'task':26s} {label:>15s} {name:>24s}")
        for task in tasks:
            a = summary["tasks"][task]["success_rate"]
            b = other["tasks"].get(task, {}).get("success_rate", float("nan"))
            print(f"{task:26s} {100 * a:14.1f}% {100 * b:23.1f}%")
        print(f"{'mean':26s} {100 * summary['mean']['success_rate']:14.1f}% {100 * other['mean']['success_rate']:23.1f}%")
        print(f"training: MLP {info['steps']} steps of {info.get('batch', 256)} in {info['seconds'] / 60:.1f} min")


def protocol_main(args):
    """--protocol: train as main() does, evaluate on the protocol's episodes, print its tables."""
    from graphvla.runners.eval.protocol import format_protocol_table
    from graphvla.sim import protocol_module

    P = protocol_module(args.protocol)
    if args.from_results:
        summary = json.loads(args.from_results.read_text())
        if args.protocol and summary.get("protocol") != args.protocol:
            raise SystemExit(f"{args.from_results}: a --protocol {summary.get('protocol')} result, not a "
                             f"--protocol {args.protocol} one")
        info = summary["training"]
    else:
        try:
            tasks = P.select([], [t.strip() for t in args.tasks.split(",") if t.strip()])
        except ValueError as e:
            raise SystemExit(f"--tasks: {e}") from None
        scenes = protocol_scenes(args.dataset, args.protocol)  # refuses another protocol's recording first
        names = [] if args.no_task else load_tasks(args.dataset)
        lacking = [t for t in tasks if names and P.instruction(t) not in names]  # what the protocol's client sends
        if lacking:
            raise SystemExit(f"{args.dataset}: no demonstrations of {', '.join(lacking)} (meta/tasks.jsonl lacks "
                             f"their {args.protocol} instructions); record them with "
                             f"`graphvla data metaworld --protocol {args.protocol}`")
        if scenes is None:
            print(f"  NOTE: {args.dataset} was not recorded with --protocol {args.protocol} (no scenes in "
                  f"meta/episodes.jsonl): evaluation episodes may start from its training scenes")
        legacy = args.minutes is not None and args.graph is None and args.compare is None
        source = spec = None
        if args.execute is None or not (legacy or (args.steps and args.batch)):
            source, spec = compared_spec(args.graph, args.compare, PROTOCOL_GRAPH)
        if spec is not None and not (legacy or (args.steps and args.batch)):
            trainer = spec.section("trainer")
            budget_from, graph_steps, graph_batch = source, int(trainer["max_steps"]), int(trainer["batch_size"])
        else:
            budget_from, graph_steps, graph_batch = None, None, None
        execute_steps = spec.section("serve").get("execute_steps") if spec is not None else None
        if args.compare and spec is not None:
            other_fp = json.loads(args.compare.read_text()).get("config", {}).get("fingerprint")
            if other_fp and other_fp != spec.fingerprint:
                print(f"  NOTE: {source} is not the graph of {args.compare} (fingerprint {spec.fingerprint[:12]} vs "
                      f"{other_fp[:12]}); pass --graph RUN to take that run's budget and execute steps")
        net, mean, std, info = train_for_budget(args, names, budget_from, graph_steps, graph_batch)
        execute_from = "--execute" if args.execute else (f"serve.execute_steps of {source}" if execute_steps
                                                         else "the metaworld adapter's actions.execute")
        info.update({"state_key": args.state_key, "task_one_hot": bool(names), "privileged": args.state_key == PRIVILEGED,
                     "budget_from": budget_from, "execute_from": execute_from})
        print(f"  {info['steps']} steps in {info['seconds']:.0f} s, L1 {info['loss_first']:.3f} -> {info['loss_last']:.3f}")
        print(f"evaluating on {args.protocol}: {len(tasks)} task(s) x {args.episodes} episodes, "
              f"{args.workers} worker(s), chunks executed per {execute_from} ...")
        args.out.mkdir(parents=True, exist_ok=True)
        policy = MLPPolicy(net, mean, std, names, STATE_KEYS[args.state_key])
        summary = evaluate_on_protocol(policy, args, tasks, execute_steps, scenes)
        summary["training"] = info
        summary["config"]["baseline"] = protocol_label(info)
        (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    label = protocol_label(info)
    print(format_protocol_table(summary, label=label))
    print(f"MLP input: {describe(info)}; chunks of {HORIZON} executed {summary['config'].get('execute_steps')} "
          f"steps at a time")
    if not args.from_results:
        print(f"wrote {args.out / 'results.json'}")
    if args.compare:
        other = json.loads(args.compare.read_text())
        cfg = other.get("config", {})
        other_label = str(cfg.get("graph", "graphvla")) + (" (privileged upper bound)" if cfg.get("privileged") else "")
        print()
        print(protocol_comparison(summary, other, label, other_label))
        print(f"training: MLP {info['steps']} steps of {info.get('batch', 256)} in {info['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
