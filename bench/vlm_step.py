"""Step time of the tiny VLM graphs with the HF processor and chat template in the training step
(before) against in the DataLoader workers (after), measured in the same run.

    python bench/vlm_step.py [--graphs tiny/oft tiny/pi] [--steps 20] [--batch 4] [--rounds 3] [--workers 1] [--threads 1]

Both sides are `Trainer.run()` sessions over the same synthetic samples with `trainer.num_workers`
DataLoader workers; "before" passes encode_in_workers=False (the block encodes in its forward),
"after" the default. Rounds alternate the two; the median seconds per step and their ratio
(after / before; below 1 is faster) are printed per graph. The processor's share of a step is
largest where the model is cheap relative to the image processing (small models, large images).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from vlm_samples import VLMSamples, vlm_bundle  # noqa: E402

from graphvla.runners.train import Trainer  # noqa: E402
from graphvla.spec.library import resolve_graph  # noqa: E402
from graphvla.spec.loader import load_spec  # noqa: E402


def session_seconds_per_step(spec, bundle, run_dir, steps, in_workers) -> float:
    t = Trainer(spec, bundle, run_dir, progress=False, encode_in_workers=in_workers)
    for _ in range(2):  # warm-up: workers start, first allocations
        t.train_step()
    t.cfg["max_steps"] = t.step + steps
    return t.run().seconds / steps  # the session's steps, data and logging; not its closing checkpoint


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--graphs", nargs="+", default=["tiny/oft", "tiny/pi"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = vlm_bundle(VLMSamples(4 * args.batch))
    for name in args.graphs:
        spec = load_spec(str(resolve_graph(name)), [f"trainer.batch_size={args.batch}", "trainer.warmup_steps=1",
                                                    f"trainer.num_workers={args.workers}", "trainer.save_every=1000000",
                                                    "trainer.log_every=1000000", "trainer.max_steps=1000000"])
        before, after = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                before.append(session_seconds_per_step(spec, bundle, Path(tmp) / f"b{r}", args.steps, False))
                after.append(session_seconds_per_step(spec, bundle, Path(tmp) / f"a{r}", args.steps, True))
                print(f"{name} round {r + 1}: in the step {before[-1] * 1e3:7.1f} ms/step   in workers {after[-1] * 1e3:7.1f} ms/step")
        b, a = statistics.median(before), statistics.median(after)
        print(f"{name}: batch {args.batch}, {args.workers} worker(s), {args.steps} steps x {args.rounds} rounds: "
              f"{b * 1e3:.1f} -> {a * 1e3:.1f} ms/step, ratio after/before {a / b:.3f}\n")


if __name__ == "__main__":
    main()
