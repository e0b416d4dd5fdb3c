"""Step time of the tiny VLM graphs with the data work in the training step (before) against in
the DataLoader workers (after), measured in the same run. The data work is the normalization, the
HF processor and chat template, and on the FAST graphs the FAST BPE (fast.encode's tokens for the
VLM's answers in tiny/fast-lm, head.fast's targets in tiny/fast) and glue.state_text's prompt.

    python bench/vlm_step.py [--graphs tiny/querytf tiny/flowdit tiny/fast tiny/fast-lm] [--steps 20] [--batch 4]
                             [--rounds 3] [--workers 1] [--threads 1]

Both sides are `Trainer` sessions over the same synthetic samples with `trainer.num_workers`
DataLoader workers, their steps timed as `run()` takes them (waiting for data included, starting
and stopping the workers not); "before" passes encode_in_workers=False (the preprocess pipeline runs in the step),
"after" the default. Rounds alternate the two; the median seconds per step and their ratio
(after / before; below 1 is faster) are printed per graph, with the training process's CPU time
per step (the work that left it, which a loaded machine blurs less than the wall time), and a
table of both ratios at the end.
The data work's share of a step is largest where the model is cheap relative to it (small models,
large images). Figures from a loaded machine are not idle figures: rerun on an idle one.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from vlm_samples import VLMSamples, vlm_bundle  # noqa: E402

from graphvla.runners.train import Trainer  # noqa: E402
from graphvla.spec.library import resolve_graph  # noqa: E402
from graphvla.spec.loader import load_spec  # noqa: E402


def session_seconds_per_step(spec, bundle, run_dir, steps, in_workers) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the training process) per step."""
    t = Trainer.from_spec(spec, bundle, run_dir, progress=False, encode_in_workers=in_workers)
    try:
        for _ in range(2):  # warm-up: workers start, first allocations
            t.train_step()
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(steps):  # the steps as run() takes them: waiting for data included, losses read at the end
            t.train_step(check=i == steps - 1)
        return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps
    finally:
        for feed in t.feeds.values():  # stopping the workers is not a step
            feed.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", nargs="+", default=["tiny/querytf", "tiny/flowdit", "tiny/fast", "tiny/fast-lm"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = vlm_bundle(VLMSamples(4 * args.batch))
    ratios = {}
    for name in args.graphs:
        spec = load_spec(str(resolve_graph(name)), [f"trainer.batch_size={args.batch}", "trainer.warmup_steps=1",
                                                    f"trainer.num_workers={args.workers}", "trainer.save_every=1000000",
                                                    "trainer.log_every=1000000", "trainer.max_steps=1000000"])
        before, after = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                before.append(session_seconds_per_step(spec, bundle, Path(tmp) / f"b{r}", args.steps, False))
                after.append(session_seconds_per_step(spec, bundle, Path(tmp) / f"a{r}", args.steps, True))
                print(f"{name} round {r + 1}: in the step {before[-1][0] * 1e3:7.1f} ms/step "
                      f"(CPU {before[-1][1] * 1e3:6.1f})   in workers {after[-1][0] * 1e3:7.1f} ms/step "
                      f"(CPU {after[-1][1] * 1e3:6.1f})")
        (b, b_cpu), (a, a_cpu) = [[statistics.median(x[i] for x in side) for i in (0, 1)] for side in (before, after)]
        ratios[name] = a / b, a_cpu / b_cpu
        print(f"{name}: batch {args.batch}, {args.workers} worker(s), {args.steps} steps x {args.rounds} rounds: "
              f"{b * 1e3:.1f} -> {a * 1e3:.1f} ms/step, ratio after/before {a / b:.3f}; "
              f"training process CPU {b_cpu * 1e3:.1f} -> {a_cpu * 1e3:.1f} ms/step, ratio {a_cpu / b_cpu:.3f}\n")
    print("data work in the workers / in the step, medians of rounds (below 1: less per step)")
    print(f"  {'graph':<16} {'step time':>9} {'training-process CPU':>21}")
    for name, (wall, cpu) in ratios.items():
        print(f"  {name:<16} {wall:9.3f} {cpu:21.3f}")


if __name__ == "__main__":
    main()
