"""Offline action error of trained runs on frames of a recording: for N frames drawn with a fixed
seed, the L1 distance between the policy's predicted chunk and the recorded actions that follow
(first action and the whole chunk, within the frame's episode), beside the mean |action|
(what predicting zeros would score). A diagnostic, not a benchmark: it tells a policy that did
not learn its conditioning (error near |action|) from one that did but fails in closed loop.

    python scripts/offline_action_error.py DATASET RUN [RUN ...] [--frames 40] [--seed 0]

The recording's image, task and state columns are those `graphvla data metaworld` writes
(observation.images.<camera>, task, observation.state, action); the run's inputs must be
images + instruction + state."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from graphvla.data.lerobot import open_lerobot
from graphvla.policy.loading import load_policy


def action_errors(source, policy, rows, camera: str) -> dict:
    actions, states = source.columns["action"], source.columns["observation.state"]
    first, chunk = [], []
    for i in map(int, rows):
        obs = {"images": source.image(camera, i)[None], "instruction": source.task(i),
               "state": np.asarray(states[i], np.float32)}
        predicted = np.asarray(policy.infer(obs)["actions"])
        end = min(source.episode_rows(i)[1], i + len(predicted))
        recorded = actions[i:end]
        first.append(np.abs(predicted[0] - actions[i]).mean())
        chunk.append(np.abs(predicted[: len(recorded)] - recorded).mean())
    return {"first_action_l1": float(np.mean(first)), "chunk_l1": float(np.mean(chunk))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    source = open_lerobot(args.dataset)
    if not source.image_keys:
        raise SystemExit(f"{args.dataset}: no image column")
    camera = source.image_keys[0]
    rows = np.random.default_rng(args.seed).choice(len(source), args.frames, replace=False)
    zero = float(np.abs(source.columns["action"][rows]).mean())
    print(f"{args.frames} frames of {args.dataset} (seed {args.seed}); mean |action| {zero:.4f}")
    for run in args.runs:
        e = action_errors(source, load_policy(run), rows, camera)
        print(f"{run}: first-action L1 {e['first_action_l1']:.4f}, chunk L1 {e['chunk_l1']:.4f}", flush=True)


if __name__ == "__main__":
    main()
