"""What the graph compiler costs, measured in one run:

(a) forward+backward of the compiled train graph of graphvla/graphs/tiny/mlp.yaml divided by a
    hand-written eager nn.Module that calls the same block modules in the same order
    (target <= 1.02). Both share the same weights; the two are timed in interleaved rounds,
    alternating which goes first, and the ratio of the medians is reported.
(b) the time to validate and compile a ~4B-parameter spec (graphvla/graphs/examples/big-4b.yaml) on the
    meta device (target < 1 s), with its parameter count.

Both are reported in CPU time of this process (what a free core would take; a shared machine's
other load does not count) and in wall time.

    python bench/compile_overhead.py [--rounds 30] [--iters 20] [--batch 16] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import graphvla
from graphvla.spec.validate import validate_spec

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "graphvla" / "graphs" / "tiny" / "mlp.yaml"
BIG = ROOT / "graphvla" / "graphs" / "examples" / "big-4b.yaml"


class EagerTinyMLP(nn.Module):
    """graphvla/graphs/tiny/mlp.yaml written by hand: the same block modules, called in the same order."""

    def __init__(self, blocks: nn.ModuleDict):
        super().__init__()
        self.vision, self.language = blocks["vision"], blocks["language"]
        self.fuse, self.head = blocks["fuse"], blocks["head"]

    def forward(self, images, instruction, state, actions):
        vision = self.vision(images=images)
        language = self.language(text=instruction)
        fused = self.fuse(a=vision["hidden"], b=language["pooled"], c=state)
        head = self.head(context=fused["hidden"], state=state, target=actions)
        return {"loss": head["loss"], "losses": {"action": head["loss"]}}


def make_batch(b: int):
    g = torch.Generator().manual_seed(0)
    words = ["pick up the red cube", "open the drawer", "push the button", "close the window"]
    return {
        "images": torch.rand(b, 1, 3, 64, 64, generator=g),
        "instruction": [words[i % len(words)] for i in range(b)],
        "state": torch.randn(b, 8, generator=g),
        "actions": torch.randn(b, 8, 4, generator=g),
    }


def step_time(fn, params, batch, iters: int, clock) -> float:
    start = clock()
    for _ in range(iters):
        for p in params:
            p.grad = None
        fn(**batch)["loss"].backward()
    return (clock() - start) / iters


def bench_overhead(rounds: int, iters: int, batch_size: int, clock):
    torch.manual_seed(0)
    cg = graphvla.compile_graph(TINY, device="cpu")
    compiled, eager = cg.train["action"], EagerTinyMLP(cg.model)
    params = list(cg.model.parameters())
    batch = make_batch(batch_size)
    # same numbers from both: the comparison is between equal computations
    torch.testing.assert_close(compiled(**batch)["loss"], eager(**batch)["loss"])
    for fn in (compiled, eager):  # warm up allocator and kernels
        step_time(fn, params, batch, iters, clock)
    times = {"compiled": [], "eager": []}
    for r in range(rounds):
        order = [("compiled", compiled), ("eager", eager)]
        if r % 2:
            order.reverse()
        for name, fn in order:
            times[name].append(step_time(fn, params, batch, iters, clock))
    c, e = statistics.median(times["compiled"]), statistics.median(times["eager"])
    # paired per-round ratios say how noisy the machine was
    ratios = sorted(a / b for a, b in zip(times["compiled"], times["eager"]))
    q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    return c, e, q1, q3


def bench_big_compile(repeats: int = 5):
    graphvla.compile_graph(BIG)  # import and registry loading are not part of the cost
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        spec = graphvla.load_spec(BIG, validate=False)
        validate_spec(spec)
        cg = graphvla.compile_graph(spec, device="meta")
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    total = sum(t for t, _ in cg.param_counts().values())
    allocated = sum(p.numel() for p in cg.model.parameters() if not p.is_meta)
    return statistics.median(wall), statistics.median(cpu), total, allocated


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared machine's noise down)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, torch threads {args.threads}")
    print(f"(a) {TINY.relative_to(ROOT)} forward+backward, batch {args.batch}, {args.rounds} interleaved rounds x {args.iters} steps")
    for label, clock in (("CPU time", time.process_time), ("wall time", time.perf_counter)):
        c, e, q1, q3 = bench_overhead(args.rounds, args.iters, args.batch, clock)
        print(f"    {label:9s}: compiled {c * 1e3:7.3f} ms/step, eager {e * 1e3:7.3f} ms/step, "
              f"ratio {c / e:.4f} (per-round quartiles {q1:.4f} .. {q3:.4f}; target <= 1.02)")

    wall, cpu, total, allocated = bench_big_compile()
    print(f"(b) {BIG.relative_to(ROOT)}: {total:,} parameters ({total / 1e9:.2f}B), {allocated} allocated")
    print(f"    validate + compile on meta: {wall:.3f} s wall, {cpu:.3f} s CPU (median of 5; target < 1 s)")

if __name__ == "__main__":
    main()
