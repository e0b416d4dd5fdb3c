"""Training-step speed of `starvla/qwen3vl-oft` beside starVLA's own QwenOFT module, same model, same batch.

    python bench/starvla_step.py [--starvla-python /tmp/starvla-venv/bin/python] [--starvla-repo /tmp/starvla]
                                 [--batch 2] [--steps 100] [--warmup 3] [--rounds 7] [--threads 1]

One training step is forward and backward (no optimizer) on a batch made from the starVLA parity
fixture (tests/fixtures/starvla/qwenoft: its 2 samples, 2 views of 64 x 64, horizon 4, 7-d actions,
repeated to --batch), on the fixture's weights (starVLA's state_dict, float32, CPU), from the raw
batch on:

- GraphVLA: `cg.feed(batch, "action")` (the VLM's processor step: prompt with the placeholder
  suffix, chat template, image patches) then `cg.train["action"](...)["loss"].backward()`, on the
  graph compiled and loaded as tests/test_starvla_parity.py does;
- starVLA: `Qwenvl_OFT.forward(examples)["action_loss"].backward()` (its forward builds the VLM
  inputs with the processor from PIL images, as its training loop hands them over), starVLA's
  own code at the checkout --starvla-repo, run by --starvla-python (a side virtual environment,
  see scripts/parity/README.md) in a subprocess: starVLA is never imported in this process.

Both processes use --threads torch threads. The first step's losses of the two must agree within
1e-5 and their gradients' global norms within a relative 1e-4, or the bench stops: the timing
then compares the same computation. After --warmup more untimed steps each, every round times
--steps steps of each side, the order alternating between rounds so that drifting load hits both
alike; per round it prints samples/s of both, their ratio GraphVLA / starVLA (above 1: GraphVLA
faster) and the time each side spent building the VLM's inputs (the processor) inside the step.
The median of the per-round ratios is the figure, printed with the ratio of process CPU time per
step (less blurred by other jobs), the load average (the machine may be shared) and where a step
goes: building the inputs, the rest of the forward, the backward.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARITY_SCRIPT = REPO / "scripts" / "parity" / "starvla.py"
FIXTURE = REPO / "tests" / "fixtures" / "starvla" / "qwenoft"
LOSS_TOL = 1e-5
GRAD_RTOL = 1e-4


def fixture_batch(batch: int):
    """(case.json, uint8 images [B, V, H, W, 3], actions [B, H, A], instructions): the fixture's
    samples repeated to `batch` rows."""
    from safetensors.torch import load_file

    meta = json.loads((FIXTURE / "case.json").read_text())
    data = load_file(str(FIXTURE / "case.safetensors"))
    n = len(meta["instructions"])
    rows = [i % n for i in range(batch)]
    return meta, data["images"][rows].contiguous(), data["actions"][rows].contiguous(), \
        [meta["instructions"][i] for i in rows]


def grad_norm(params) -> float:
    return float(sum(float(p.grad.double().pow(2).sum()) for p in params if p.grad is not None) ** 0.5)


class Timed:
    """Wraps a callable; adds the seconds spent in it to .seconds."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *a, **k):
        t = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            self.seconds += time.perf_counter() - t


def time_steps(step, inputs: Timed, steps: int) -> dict:
    """Per step, over `steps` steps: wall seconds, process CPU seconds, and of the wall seconds those
    building the VLM's inputs and those of the whole forward (inputs included; the rest is backward)."""
    inputs.seconds, forward = 0.0, [0.0]
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step(forward)
    return {"wall": (time.perf_counter() - wall) / steps, "cpu": (time.process_time() - cpu) / steps,
            "inputs": inputs.seconds / steps, "forward": forward[0] / steps}


# ---- starVLA's side: this file run by the side environment's python with --worker ----------------

def worker(args):
    """Builds starVLA's Qwenvl_OFT on the fixture's weights and answers the parent, one JSON line
    each: first the first step's loss and gradient norm, then, for each `time N` on stdin, the
    timings of N steps (`quit` ends it)."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything starVLA or transformers prints goes to stderr, not into the replies
    sys.stdout = sys.stderr
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("starvla_parity", PARITY_SCRIPT)
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    sys.path.insert(0, str(Path(args.starvla_repo).resolve()))
    parity.stub_torchvision()  # same import-only stubs as the fixture script (no math is stubbed)
    from omegaconf import OmegaConf
    from PIL import Image
    from safetensors.torch import load_file
    from starVLA.model.framework.VLM4A.QwenOFT import Qwenvl_OFT
    import starVLA.model.modules.vlm.QWen3 as qwen3_interface

    from graphvla.processors.hf_processor import load_processor
    qwen3_interface.AutoProcessor = types.SimpleNamespace(from_pretrained=lambda path: load_processor(Path(path)))
    meta, images, actions, instructions = fixture_batch(args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        vlm_dir = parity.tiny_qwen3_vl(Path(tmp) / "tiny-Qwen3-VL")  # starVLA picks Qwen3-VL from the name
        cfg = OmegaConf.create({
            "framework": {
                "name": "QwenOFT",
                "qwenvl": {"base_vlm": str(vlm_dir), "attn_implementation": "sdpa"},
                "action_model": {"action_model_type": "MLP", "action_dim": meta["action_dim"],
                                 "action_horizon": meta["horizon"]},
            },
            "datasets": {"vla_data": {}},
        })
        torch.manual_seed(meta["seed"])
        model = Qwenvl_OFT(cfg).float()
    model.load_state_dict(load_file(str(FIXTURE / "state.safetensors")), strict=True)
    model.train()
    examples = [{"image": [Image.fromarray(v) for v in images[i].numpy()], "lang": instructions[i],
                 "action": actions[i].numpy().astype(np.float32)} for i in range(args.batch)]
    inputs = Timed(model.qwen_vl_interface.build_qwenvl_inputs)
    model.qwen_vl_interface.build_qwenvl_inputs = inputs  # the same method, timed
    params = [p for p in model.parameters() if p.requires_grad]

    def step(forward=None):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        loss = model(examples)["action_loss"]
        if forward is not None:
            forward[0] += time.perf_counter() - t
        loss.backward()
        return loss

    loss = step()
    reply.write(json.dumps({"loss": float(loss), "grad_norm": grad_norm(params), "torch": torch.__version__,
                            "threads": torch.get_num_threads()}) + "\n")
    for _ in range(args.warmup):
        step()
    for line in sys.stdin:
        cmd = line.split()
        if cmd[:1] == ["time"]:
            reply.write(json.dumps(time_steps(step, inputs, int(cmd[1]))) + "\n")
        elif cmd[:1] == ["quit"]:
            return
        else:
            raise SystemExit(f"starvla_step worker: unknown command {line!r}")


class StarVLA:
    """The worker subprocess, driven over stdin/stdout."""

    def __init__(self, args):
        self.err = tempfile.TemporaryFile("w+")
        cmd = [args.starvla_python, str(Path(__file__).resolve()), "--worker", "--starvla-repo", args.starvla_repo,
               "--batch", str(args.batch), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     cwd=str(REPO), env={**os.environ, "PYTHONWARNINGS": "ignore"})

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.err.seek(0)
            tail = self.err.read()[-4000:]
            raise SystemExit(f"starVLA's worker ({self.proc.args[0]}) stopped with exit code {self.proc.returncode}; "
                             f"its stderr ends with:\n{tail}")
        return json.loads(line)

    def time(self, steps: int) -> dict:
        self.proc.stdin.write(f"time {steps}\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=60)
        self.err.close()


# ---- GraphVLA's side ------------------------------------------------------------------------------

def graphvla_side(args):
    """(first-step loss, gradient norm, step function, the timed processor steps)."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from test_starvla_parity import fixture_graph  # the fixture's spec sizes and starVLA's keys mapped

    meta, images, actions, instructions = fixture_batch(args.batch)
    cg = fixture_graph()
    cg.model.train()
    batch = {"images": images.permute(0, 1, 4, 2, 3).float() / 255, "instruction": instructions,
             "actions": actions, "actions_mask": torch.ones(actions.shape[:2], dtype=torch.bool)}
    feed = Timed(cg.feed)
    train = cg.train["action"]
    params = [p for p in cg.model.parameters() if p.requires_grad]

    def step(forward=None):
        cg.model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        loss = train(**feed(dict(batch), "action"))["loss"]
        if forward is not None:
            forward[0] += time.perf_counter() - t
        loss.backward()
        return loss

    loss = step()
    norm = grad_norm(params)
    for _ in range(args.warmup):
        step()
    return float(loss), norm, step, feed, float(json.loads((FIXTURE / "case.json").read_text())["loss"])


def missing_reference(args) -> str | None:
    problems = []
    if not Path(args.starvla_python).is_file():
        problems.append(f"--starvla-python {args.starvla_python}: no such file (the side environment's python)")
    repo = Path(args.starvla_repo)
    if not (repo / "starVLA" / "model" / "framework" / "VLM4A" / "QwenOFT.py").is_file():
        problems.append(f"--starvla-repo {args.starvla_repo}: not a starVLA checkout "
                        "(starVLA/model/framework/VLM4A/QwenOFT.py is missing)")
    if problems:
        return ("starVLA's side cannot run:\n  " + "\n  ".join(problems) +
                "\nMake both as scripts/parity/README.md says (git clone github.com/starVLA/starVLA, checkout 0ed0aad; "
                "python3 -m venv --system-site-packages /tmp/starvla-venv; /tmp/starvla-venv/bin/pip install omegaconf), "
                "or pass their paths.")
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starvla-python", default="/tmp/starvla-venv/bin/python",
                    help="python of a side virtual environment that can import starVLA (scripts/parity/README.md)")
    ap.add_argument("--starvla-repo", default="/tmp/starvla", help="a checkout of github.com/starVLA/starVLA")
    ap.add_argument("--batch", type=int, default=2, help="rows: the fixture's 2 samples repeated")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per side and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch < 1 or args.steps < 1 or args.rounds < 1 or args.threads < 1 or args.warmup < 0:
        ap.error("--batch, --steps, --rounds and --threads must be >= 1, --warmup >= 0")
    if args.worker:
        return worker(args)
    problem = missing_reference(args)
    if problem:
        raise SystemExit(problem)
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "-C", args.starvla_repo, "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    load_before = os.getloadavg()
    ref = StarVLA(args)
    try:
        theirs = ref.read()
        loss, norm, step, feed, fixture_loss = graphvla_side(args)
        print(f"starVLA {args.starvla_repo} at {commit[:7]} (fixture made at 0ed0aad); batch {args.batch} "
              f"(the fixture's {len(json.loads((FIXTURE / 'case.json').read_text())['instructions'])} samples repeated), "
              f"{args.threads} thread(s) each (starVLA's side reports {theirs['threads']}), torch {torch.__version__}")
        print(f"first step: loss GraphVLA {loss:.7f}, starVLA {theirs['loss']:.7f} (|diff| {abs(loss - theirs['loss']):.1e}; "
              f"the fixture's {fixture_loss:.7f}); gradient norm {norm:.6g} vs {theirs['grad_norm']:.6g} "
              f"(relative diff {abs(norm - theirs['grad_norm']) / max(theirs['grad_norm'], 1e-12):.1e})")
        if abs(loss - theirs["loss"]) > LOSS_TOL:
            raise SystemExit(f"the first step's losses differ by {abs(loss - theirs['loss']):.2e} > {LOSS_TOL}: "
                             "the two sides do not compute the same thing, timing them would compare nothing")
        if abs(norm - theirs["grad_norm"]) > GRAD_RTOL * max(theirs["grad_norm"], 1e-12):
            raise SystemExit(f"the first step's gradient norms differ ({norm:.8g} vs {theirs['grad_norm']:.8g}): "
                             "the two backward passes are not the same computation")
        ours_rounds, theirs_rounds, ratios = [], [], []
        for r in range(args.rounds):
            if r % 2 == 0:
                a = time_steps(step, feed, args.steps)
                b = ref.time(args.steps)
            else:
                b = ref.time(args.steps)
                a = time_steps(step, feed, args.steps)
            ours_rounds.append(a)
            theirs_rounds.append(b)
            ratios.append(b["wall"] / a["wall"])
            print(f"round {r + 1}: GraphVLA {args.batch / a['wall']:7.2f} samples/s ({a['wall'] * 1e3:6.1f} ms/step, "
                  f"inputs {a['inputs'] * 1e3:5.1f} ms)   starVLA {args.batch / b['wall']:7.2f} samples/s "
                  f"({b['wall'] * 1e3:6.1f} ms/step, inputs {b['inputs'] * 1e3:5.1f} ms)   ratio {ratios[-1]:.3f}")
    finally:
        ref.close()
    load_after = os.getloadavg()

    def med(rounds, key):
        return statistics.median(x[key] for x in rounds)

    cpu_ratio = statistics.median(b["cpu"] / a["cpu"] for a, b in zip(ours_rounds, theirs_rounds))
    print(f"median over {args.rounds} rounds of {args.steps} steps: GraphVLA {args.batch / med(ours_rounds, 'wall'):.2f} "
          f"samples/s, starVLA {args.batch / med(theirs_rounds, 'wall'):.2f} samples/s")
    for name, rounds in (("GraphVLA", ours_rounds), ("starVLA", theirs_rounds)):
        wall, inputs, forward = (med(rounds, k) * 1e3 for k in ("wall", "inputs", "forward"))
        print(f"  {name:<8} ms/step {wall:6.1f} = building the VLM's inputs {inputs:5.1f} + rest of the forward "
              f"{forward - inputs:5.1f} + backward {wall - forward:5.1f} (medians)")
    print(f"ratio GraphVLA / starVLA samples/s (median of per-round ratios; goal >= 1.0): {statistics.median(ratios):.3f} "
          f"(process CPU time: {cpu_ratio:.3f}); load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")


if __name__ == "__main__":
    main()
