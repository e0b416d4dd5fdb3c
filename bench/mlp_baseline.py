"""A plain state-only MLP baseline for Meta-World, evaluated exactly like a GraphVLA policy.

The MLP maps the 39-dim Meta-World observation to an 8-step action chunk (masked L1 on the
chunk, state standardized with the dataset's statistics), is trained for a fixed wall-clock
budget on a recorded dataset (`graphvla data metaworld`), then served by the same policy
server and driven through the same client, adapter and seeds as `graphvla eval`.

    python bench/mlp_baseline.py DATASET [--minutes 2] [--tasks mt10] [--episodes 10]
        [--compare RUN/eval-metaworld/results.json] [-o OUT]
    python bench/mlp_baseline.py --from-results OUT/results.json --compare RUN/eval-metaworld/results.json

With --compare, prints the baseline and a `graphvla eval` result side by side."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

HORIZON = 8


def load_chunks(root: Path, horizon: int = HORIZON):
    """(states [N, 39], chunks [N, H, 4], masks [N, H]) from every episode of a LeRobot folder."""
    states, chunks, masks = [], [], []
    for f in sorted((root / "data").glob("chunk-*/episode_*.parquet")):
        d = pd.read_parquet(f, columns=["observation.environment_state", "action"])
        s = np.stack(d["observation.environment_state"].to_numpy()).astype(np.float32)
        a = np.stack(d["action"].to_numpy()).astype(np.float32)
        T = len(a)
        idx = np.arange(T)[:, None] + np.arange(horizon)[None, :]
        masks.append(idx < T)
        chunks.append(a[np.minimum(idx, T - 1)])
        states.append(s)
    if not states:
        raise SystemExit(f"{root}: no data/chunk-*/episode_*.parquet (record one with `graphvla data metaworld`)")
    return np.concatenate(states), np.concatenate(chunks), np.concatenate(masks)


class MLPPolicy:
    """The Policy API (metadata / infer / infer_batch / reset) around a torch MLP."""

    def __init__(self, net, mean, std, horizon=HORIZON):
        self.net, self.mean, self.std = net.eval(), mean, std
        self.metadata = {"name": "mlp-baseline", "fingerprint": "mlp-baseline", "action_horizon": horizon,
                         "action_dim": 4, "inputs": {"state": {"kind": "state", "dim": 39}},
                         "outputs": ["actions"], "normalization": {"state": "mean_std"}}

    @torch.no_grad()
    def infer_batch(self, observations):
        s = torch.from_numpy(np.stack([o["state"] for o in observations]).astype(np.float32))
        out = self.net((s - self.mean) / self.std).view(len(observations), -1, 4)
        return [{"actions": a.numpy()} for a in out]

    def infer(self, obs):
        return self.infer_batch([obs])[0]

    def reset(self):
        pass


def train(states, chunks, masks, minutes: float, seed: int = 0):
    torch.manual_seed(seed)
    s, a, m = torch.from_numpy(states), torch.from_numpy(chunks), torch.from_numpy(masks)
    mean, std = s.mean(0), s.std(0).clamp_min(1e-3)
    net = nn.Sequential(nn.Linear(39, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                        nn.Linear(512, HORIZON * 4))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    start, steps, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < minutes * 60:
        i = torch.randint(0, len(s), (256,), generator=gen)
        pred = net((s[i] - mean) / std).view(-1, HORIZON, 4)
        err = (pred - a[i]).abs().mean(-1)
        loss = (err * m[i]).sum() / m[i].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        losses.append(loss.item())
    return net, mean, std, {"steps": steps, "seconds": time.perf_counter() - start,
                            "loss_first": float(np.mean(losses[:20])), "loss_last": float(np.mean(losses[-50:]))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dataset", type=Path, nargs="?")
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--tasks", default="mt10")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed-offset", type=int, default=100000)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--compare", type=Path, default=None, help="results.json of a `graphvla eval` run")
    ap.add_argument("--from-results", type=Path, default=None,
                    help="skip training: compare the results.json of an earlier baseline run")
    ap.add_argument("-o", "--out", type=Path, default=Path("runs/mlp-baseline"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (more only helps on an idle machine)")
    args = ap.parse_args()
    if args.dataset is None and args.from_results is None:
        ap.error("give a DATASET (or --from-results FILE)")
    torch.set_num_threads(args.threads)

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
        states, chunks, masks = load_chunks(args.dataset)
        print(f"training a state-only MLP on {len(states)} frames for {args.minutes} min ...")
        net, mean, std, info = train(states, chunks, masks, args.minutes)
        print(f"  {info['steps']} steps in {info['seconds']:.0f} s, L1 {info['loss_first']:.3f} -> {info['loss_last']:.3f}")
        args.out.mkdir(parents=True, exist_ok=True)
        with ServerThread(MLPPolicy(net, mean, std), ServeOptions(port=0)) as srv, PolicyClient(srv.url, None) as c:
            summary = evaluate_metaworld(c.infer, c.metadata, load_adapter("metaworld"), tasks, args.episodes,
                                         args.seed_offset, args.out, max_steps=args.max_steps, gifs=False,
                                         reset=c.reset)
        summary["training"] = info
        (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(format_table(summary))
    if args.compare:
        other = json.loads(args.compare.read_text())
        name = other.get("config", {}).get("graph", "graphvla")
        print(f"\n{'task':26s} {'MLP baseline':>14s} {name:>24s}")
        for task in tasks:
            a = summary["tasks"][task]["success_rate"]
            b = other["tasks"].get(task, {}).get("success_rate", float("nan"))
            print(f"{task:26s} {100 * a:13.1f}% {100 * b:23.1f}%")
        print(f"{'mean':26s} {100 * summary['mean']['success_rate']:13.1f}% {100 * other['mean']['success_rate']:23.1f}%")
        print(f"training time: MLP {info['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
