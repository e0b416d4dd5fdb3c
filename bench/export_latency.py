"""Exported against eager predict latency on CPU, measured in the same run.

Builds a checkpoint of each graph with random weights and mean/std statistics (by default
metaworld/mt10: keypoint CNN + byte text encoder + MLP head, and tiny/querytf: a tiny Qwen3-VL +
head.query_transformer), exports it with `graphvla export` in both formats, and times `infer_batch` of the same
observations (a uint8 frame of the graph's image size, 4-d state, instruction) through the eager
checkpoint Policy, the torch.export program and onnxruntime. Every path includes the Python-side
work a server does (checks, uint8 -> float, tokenization or the VLM's processor,
un-normalization), so the ratios are what a served request sees. Median of `--repeats` calls after
a warm-up, per batch size; the ratio is eager / exported (> 1: the export is faster).

    python bench/export_latency.py [--graphs metaworld/mt10 tiny/querytf] [--batches 1 8] [--repeats 200] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def median_ms(fn, repeats: int) -> float:
    for _ in range(max(5, repeats // 10)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", nargs="+", default=["metaworld/mt10", "tiny/querytf"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for graph in args.graphs:
        with tempfile.TemporaryDirectory() as tmp:
            bench_graph(graph, Path(tmp), args)


def bench_graph(graph: str, tmp: Path, args) -> None:
    from test_export import STATS, make_run, observations

    from graphvla.runners.export import export_policy
    from graphvla.runners.exported import load_exported
    from graphvla.policy.loading import load_policy
    from graphvla.spec.library import resolve_graph

    make_run(str(resolve_graph(graph)), tmp / "run", STATS)  # metaworld/mt10 and tiny/querytf: 4-d state and actions
    eager = load_policy(tmp / "run")
    size = int(eager.inputs["images"]["size"][0])
    paths = {"eager": eager, "torch-export": load_exported(export_policy(tmp / "run", tmp / "pt2"))}
    try:
        paths["onnx"] = load_exported(export_policy(tmp / "run", tmp / "onnx", "onnx"))
    except Exception as e:  # noqa: BLE001 - onnx is optional
        print(f"(onnx skipped: {e})")
    print(f"graph {eager.cg.name}, CPU, {args.threads} thread(s), median of {args.repeats} calls")
    print(f"{'batch':>5}  " + "  ".join(f"{k:>14}" for k in paths) + "  " +
          "  ".join(f"{'eager/' + k:>20}" for k in paths if k != "eager"))
    for b in args.batches:
        obs = observations(b, size=size)
        ms = {k: median_ms(lambda p=p, obs=obs: p.infer_batch(obs), args.repeats) for k, p in paths.items()}
        for k, p in paths.items():  # the same answers, or the timing means nothing
            if k != "eager":
                diff = max(float(np.abs(x["actions"] - y["actions"]).max())
                           for x, y in zip(p.infer_batch(obs), eager.infer_batch(obs)))
                assert diff <= 1e-5, f"{k} differs from eager by {diff}"
        print(f"{b:>5}  " + "  ".join(f"{ms[k]:>11.3f} ms" for k in paths) + "  " +
              "  ".join(f"{ms['eager'] / ms[k]:>20.2f}" for k in paths if k != "eager"))


if __name__ == "__main__":
    main()
