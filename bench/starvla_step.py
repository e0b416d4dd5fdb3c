"""Training-step speed of GraphVLA's starVLA graphs beside starVLA's own framework modules, same model,
same batch, one framework at a time or all of them.

    python bench/starvla_step.py [--framework {oft,gr00t,pi_v3,pi,fast,dd,all}] [--batch 2] [--steps 100]
                                 [--warmup 3] [--rounds 7] [--threads 1]
                                 [--starvla-python /tmp/starvla-venv/bin/python] [--starvla-repo /tmp/starvla]
                                 [--fast-code /tmp/fast-ref]

--framework picks the starVLA framework and its parity fixture (tests/fixtures/starvla/NAME, made by
starVLA's own code on a tiny Qwen3-VL: 2 samples, 2 views of 64 x 64, horizon 4, 7-d actions; the
samples repeated to --batch): oft QwenOFT (qwenoft, the default), gr00t QwenGR00T (qwengr00t), pi_v3
QwenPI_v3 (qwenpi_v3), pi QwenPI (qwenpi), fast QwenFast (qwenfast), dd QwenDiscreteDiffusion (qwendd,
with the fixture's state); all runs them one after the other and ends with a table. One training step
is forward and backward (no optimizer) from the raw batch, on the fixture's weights (starVLA's
state_dict, float32, CPU):

- GraphVLA: `cg.feed(batch, "action")` (the processor steps: the VLM's prompt and image patches, and
  QwenFast's action tokens) then `cg.train["action"](...)["loss"].backward()`, on the packaged graph
  built on the fixture by that framework's test (`fixture_graph` of tests/test_starvla_parity.py,
  test_starvla_gr00t.py, test_starvla_pi.py, test_starvla_fast.py, test_starvla_dd.py);
- starVLA: `framework.forward(examples)["action_loss"].backward()` (its forward builds the VLM inputs
  with the processor from PIL images, as its training loop hands them over), the framework built by
  the builder of its parity script (scripts/parity/starvla*.py) from starVLA's own code at the
  checkout --starvla-repo, run by --starvla-python (a side virtual environment, see
  scripts/parity/README.md) in a subprocess: starVLA is never imported in this process. QwenFast's
  FAST tokenizer is the fixture's, with physical-intelligence/fast's processor code from --fast-code.

Both processes use --threads torch threads. First both sides take one step in eval mode (no
dropout) on the same draws: starVLA's flow-matching heads (QwenGR00T, QwenPI_v3, QwenPI) draw their
noise and times, QwenDiscreteDiffusion its masking uniforms, recorded there by the parity scripts'
recorders and handed to GraphVLA's head as its noise / time / mask_noise inputs for that step only.
The two losses must agree within 1e-5 and their gradients' global norms within a relative 1e-4, or
the bench stops: the timing then compares the same computation. Then both sides switch to training
mode (dropout on, each side drawing its own noise) and, after --warmup untimed steps each, every
round times --steps steps of each side, the order alternating between rounds so that drifting load
hits both alike; per round it prints samples/s of both, their ratio GraphVLA / starVLA (above 1:
GraphVLA faster) and the time each side spent building the model's inputs (its processor) inside
the step. The median of the per-round ratios is the figure, printed with the ratio of process CPU
time per step (less blurred by other jobs), the load average (the machine may be shared) and where
a step goes: building the inputs, the rest of the forward, the backward.
"""
from __future__ import annotations

import argparse
import functools
import importlib
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
PARITY = REPO / "scripts" / "parity"
FIXTURES = REPO / "tests" / "fixtures" / "starvla"
LOSS_TOL = 1e-5
GRAD_RTOL = 1e-4

# --framework: starVLA's framework (and its file under starVLA/model/framework/VLM4A/), the parity
# fixture, the test module whose fixture_graph builds GraphVLA's graph on it (with these arguments),
# the draws of starVLA's training forward that GraphVLA's head is given for the first step ("flow":
# noise and time; "mask": mask_noise; None: none), and the seed the fixture's training forward ran
# under (then the first step's loss is also the fixture's; None: not reproduced here)
FRAMEWORKS = {
    "oft": {"name": "QwenOFT", "fixture": "qwenoft", "test": "test_starvla_parity", "args": (), "draws": None},
    "gr00t": {"name": "QwenGR00T", "fixture": "qwengr00t", "test": "test_starvla_gr00t", "args": ("FIXTURE",),
              "draws": "flow", "seed": lambda meta: meta["seed"] + 1},
    "pi_v3": {"name": "QwenPI_v3", "fixture": "qwenpi_v3", "test": "test_starvla_pi", "args": ("qwen3vl",),
              "draws": "flow", "seed": lambda meta: meta["train_seed"]},
    "pi": {"name": "QwenPI", "fixture": "qwenpi", "test": "test_starvla_pi", "args": ("pi-qwen3vl",),
           "draws": "flow", "seed": lambda meta: meta["train_seed"]},
    "fast": {"name": "QwenFast", "fixture": "qwenfast", "test": "test_starvla_fast", "args": ("qwen3vl",), "draws": None},
    "dd": {"name": "QwenDiscreteDiffusion", "fixture": "qwendd", "test": "test_starvla_dd", "args": (), "draws": "mask",
           "seed": None},
}


def fixture_batch(framework: str, batch: int):
    """(case.json, uint8 images [B, V, H, W, 3], actions [B, H, A], instructions, state [B, S] or
    None): the fixture's samples repeated to `batch` rows (the state where the fixture's training
    case has one: QwenDiscreteDiffusion's)."""
    from safetensors.torch import load_file

    fixture = FIXTURES / FRAMEWORKS[framework]["fixture"]
    meta = json.loads((fixture / "case.json").read_text())
    data = load_file(str(fixture / "case.safetensors"))
    n = len(meta["instructions"])
    rows = [i % n for i in range(batch)]
    state = None
    if framework == "dd":
        state = load_file(str(fixture / "case_state.safetensors"))["state"][rows].contiguous()
    return meta, data["images"][rows].contiguous(), data["actions"][rows].contiguous(), \
        [meta["instructions"][i] for i in rows], state


def fixture_state(framework: str) -> dict:
    """starVLA's state_dict of the fixture: its state.json in the fixtures' weights store, rebuilt and
    checked against its sha256 by bench/starvla_weights.py (which the tests read it with too)."""
    from starvla_weights import load_state

    return load_state(FIXTURES / FRAMEWORKS[framework]["fixture"])


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

def starvla_framework(framework: str, repo: str, fast_code: str, tmp: Path):
    """starVLA's framework for `framework`, built by its parity script's builder on the same tiny VLM
    (the scripts' seeded tiny_qwen3_vl; for QwenFast with starVLA's own add_new_tokens, as its script
    does), then given the fixture's weights."""
    import torch

    sys.path.insert(0, str(PARITY))  # the parity scripts import each other by module name
    if framework in ("gr00t", "pi_v3", "pi", "dd"):
        # diffusers (starVLA's DiT) probes for torchvision when first imported: before the stub, as
        # the parity scripts do
        import diffusers.models.attention  # noqa: F401
        import diffusers.models.embeddings  # noqa: F401
    import starvla as parity

    commit, interface = parity.open_starvla(repo, "QWen3")
    meta = json.loads((FIXTURES / FRAMEWORKS[framework]["fixture"] / "case.json").read_text())
    if framework == "fast":
        import shutil

        import starvla_fast
        base = parity.tiny_qwen3_vl(tmp / "base-tiny-Qwen3-VL-Action")
        vlm_dir = tmp / "tiny-Qwen3-VL-Action"  # "-Action": the interface reads the action-token range
        token_range = starvla_fast.action_vlm(Path(repo), base, vlm_dir)
        if list(token_range) != [meta["action_token_min"], meta["action_token_max"]]:
            raise SystemExit(f"the rebuilt action tokens {token_range} are not the fixture's")
        fast_dir = tmp / "fast"  # the fixture's fitted FAST tokenizer with the reference's processor code
        fast_dir.mkdir()
        for name in ("tokenizer.json", "processor_config.json"):
            shutil.copy(FIXTURES / "qwenfast" / "fast" / name, fast_dir / name)
        shutil.copy(Path(fast_code) / "processing_action_tokenizer.py", fast_dir)
        model = starvla_fast.build_qwenfast(vlm_dir, fast_dir, interface, token_range)
    else:
        vlm_dir = parity.tiny_qwen3_vl(tmp / "tiny-Qwen3-VL")  # starVLA picks Qwen3-VL from the folder's name
        if framework == "oft":
            model = parity.build_qwenoft(vlm_dir)
        elif framework == "gr00t":
            import starvla_gr00t
            model = starvla_gr00t.build_qwengr00t(vlm_dir)
        elif framework in ("pi_v3", "pi"):
            import starvla_pi
            model = starvla_pi.build(FRAMEWORKS[framework]["name"], vlm_dir)
        else:
            import starvla_dd
            model = starvla_dd.build(vlm_dir)
    model = model.float()
    model.load_state_dict(fixture_state(framework), strict=True)
    return model, commit


class Draws:
    """While active, records what starVLA's training forward draws (the parity scripts' recorders)
    and gives it as GraphVLA's head takes it: noise and time (flow matching), mask_noise (discrete
    diffusion)."""

    def __init__(self, kind, model):
        self.kind, self.model, self.rec, self.tensors = kind, model, None, {}

    def __enter__(self):
        if self.kind == "flow":
            import starvla_pi
            self.rec = starvla_pi.Recorder(self.model.action_model).__enter__()
        elif self.kind == "mask":
            import starvla_dd
            self.rec = starvla_dd.Recorder().__enter__()
        return self

    def __exit__(self, *exc):
        if self.rec is None:
            return
        self.rec.__exit__(*exc)
        if exc[0] is not None:
            return
        import torch

        if self.kind == "flow":
            assert len(self.rec.noise) == 1 and len(self.rec.times) == 1, (len(self.rec.noise), len(self.rec.times))
            self.tensors = {"noise": self.rec.noise[0], "time": self.rec.times[0]}
        else:  # apply_mask's rand(B k) and rand(B k, H, A), laid out as starvla_dd.py records them
            assert len(self.rec.rand) == 2 and not self.rec.exp, [t.shape for t in self.rec.rand]
            rows, length = self.rec.rand[0].shape[0], self.rec.rand[1][0].numel()
            mask_noise = torch.zeros(rows, 1 + 2 * length)
            mask_noise[:, 0] = self.rec.rand[0]
            mask_noise[:, 1:1 + length] = self.rec.rand[1].reshape(rows, length)
            self.tensors = {"mask_noise": mask_noise}
        self.tensors = {k: v.float().contiguous() for k, v in self.tensors.items()}


def worker(args):
    """Builds starVLA's framework on the fixture's weights and answers the parent, one JSON line
    each: first the first step's loss and gradient norm (eval mode; its draws written to --draws),
    then, for each `time N` on stdin, the timings of N training-mode steps (`quit` ends it)."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything starVLA or transformers prints goes to stderr, not into the replies
    sys.stdout = sys.stderr
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    fw = FRAMEWORKS[args.framework]
    meta, images, actions, instructions, state = fixture_batch(args.framework, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = starvla_framework(args.framework, args.starvla_repo, args.fast_code, Path(tmp))
        examples = [{"image": [Image.fromarray(v) for v in images[i].numpy()], "lang": instructions[i],
                     "action": actions[i].numpy().astype(np.float32)} for i in range(args.batch)]
        if state is not None:
            for i, e in enumerate(examples):
                e["state"] = state[i][None].numpy().astype(np.float32)  # starVLA's [1, S] per example
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

        model.eval()  # the compared step: no dropout, the draws recorded
        seed = fw.get("seed")
        if seed is not None:
            torch.manual_seed(seed(meta))
        with Draws(fw["draws"], model) as draws:
            loss = step()
        if draws.tensors:
            save_file(draws.tensors, args.draws)
        reply.write(json.dumps({"loss": float(loss), "grad_norm": grad_norm(params), "torch": torch.__version__,
                                "threads": torch.get_num_threads(), "draws": sorted(draws.tensors)}) + "\n")
        model.train()
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

    def __init__(self, args, framework: str, draws: Path):
        self.err = tempfile.TemporaryFile("w+")
        cmd = [args.starvla_python, str(Path(__file__).resolve()), "--worker", "--framework", framework,
               "--starvla-repo", args.starvla_repo, "--fast-code", args.fast_code, "--draws", str(draws),
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

def graphvla_side(args, framework: str, draws: dict):
    """(first-step loss, gradient norm, step function, the timed processor steps). The first step
    runs in eval mode with starVLA's draws given to the head (`draws`: its noise / time / mask_noise
    keyword inputs, bound for that step only); then the graph trains, drawing its own."""
    import torch

    fw = FRAMEWORKS[framework]
    sys.path.insert(0, str(REPO / "tests"))
    test = importlib.import_module(fw["test"])  # its fixture_graph: the fixture's sizes, starVLA's keys mapped
    cg = test.fixture_graph(*(getattr(test, a) if a.isupper() else a for a in fw["args"]))
    meta, images, actions, instructions, state = fixture_batch(framework, args.batch)
    batch = {"images": images.permute(0, 1, 4, 2, 3).float() / 255, "instruction": instructions, "actions": actions}
    if "actions_mask" in cg.spec.data["inputs"]:
        batch["actions_mask"] = torch.ones(actions.shape[:2], dtype=torch.bool)
    if state is not None:
        batch["state"] = state
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

    cg.model.eval()
    head = cg.model["head"]
    if draws:  # the training graph's head module, called with starVLA's draws as its inputs
        head.forward = functools.partial(type(head).forward, head, **draws)
    try:
        loss = step()
    finally:
        head.__dict__.pop("forward", None)  # back to the class's forward: the graph draws its own
    norm = grad_norm(params)
    cg.model.train()
    for _ in range(args.warmup):
        step()
    return float(loss), norm, step, feed, meta


def missing_reference(args, frameworks) -> str | None:
    problems = []
    if not Path(args.starvla_python).is_file():
        problems.append(f"--starvla-python {args.starvla_python}: no such file (the side environment's python)")
    repo = Path(args.starvla_repo)
    for framework in frameworks:
        source = repo / "starVLA" / "model" / "framework" / "VLM4A" / f"{FRAMEWORKS[framework]['name']}.py"
        if not source.is_file():
            problems.append(f"--starvla-repo {args.starvla_repo}: not a starVLA checkout with {FRAMEWORKS[framework]['name']} "
                            f"({source.relative_to(repo)} is missing)")
    if "fast" in frameworks and not (Path(args.fast_code) / "processing_action_tokenizer.py").is_file():
        problems.append(f"--fast-code {args.fast_code}: no processing_action_tokenizer.py there "
                        "(physical-intelligence/fast's processor code, see scripts/parity/README.md)")
    if problems:
        return ("starVLA's side cannot run:\n  " + "\n  ".join(problems) +
                "\nMake them as scripts/parity/README.md says (git clone github.com/starVLA/starVLA, checkout 0ed0aad; "
                "python3 -m venv --system-site-packages /tmp/starvla-venv; /tmp/starvla-venv/bin/pip install omegaconf "
                "diffusers), or pass their paths.")
    return None


def bench(args, framework: str) -> dict:
    """One framework: the equality check, the alternating rounds, the printed figures."""
    fw = FRAMEWORKS[framework]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        draws_file = Path(tmp) / "draws.safetensors"
        ref = StarVLA(args, framework, draws_file)
        try:
            theirs = ref.read()
            draws = {}
            if theirs["draws"]:
                from safetensors.torch import load_file
                draws = load_file(str(draws_file))
            loss, norm, step, feed, meta = graphvla_side(args, framework, draws)
            n = len(meta["instructions"])
            print(f"== {fw['name']} (--framework {framework}): fixture tests/fixtures/starvla/{fw['fixture']}, "
                  f"batch {args.batch} (its {n} samples repeated), {args.threads} thread(s) each (starVLA's side "
                  f"reports {theirs['threads']})")
            same_draws = f"starVLA's {' / '.join(theirs['draws'])} given to GraphVLA's head" if theirs["draws"] else "no draws"
            fixture = ""
            if args.batch == n and (fw["draws"] is None or fw.get("seed") is not None):
                fixture = f"; the fixture's {meta['loss']:.7f}"
            print(f"first step (eval mode, {same_draws}): loss GraphVLA {loss:.7f}, starVLA {theirs['loss']:.7f} "
                  f"(|diff| {abs(loss - theirs['loss']):.1e}{fixture}); gradient norm {norm:.6g} vs "
                  f"{theirs['grad_norm']:.6g} (relative diff {abs(norm - theirs['grad_norm']) / max(theirs['grad_norm'], 1e-12):.1e})")
            if abs(loss - theirs["loss"]) > LOSS_TOL:
                raise SystemExit(f"{fw['name']}: the first step's losses differ by {abs(loss - theirs['loss']):.2e} > "
                                 f"{LOSS_TOL}: the two sides do not compute the same thing, timing them would compare nothing")
            if abs(norm - theirs["grad_norm"]) > GRAD_RTOL * max(theirs["grad_norm"], 1e-12):
                raise SystemExit(f"{fw['name']}: the first step's gradient norms differ ({norm:.8g} vs "
                                 f"{theirs['grad_norm']:.8g}): the two backward passes are not the same computation")
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
        print(f"  {name:<8} ms/step {wall:6.1f} = building the inputs {inputs:5.1f} + rest of the forward "
              f"{forward - inputs:5.1f} + backward {wall - forward:5.1f} (medians)")
    ratio = statistics.median(ratios)
    print(f"ratio GraphVLA / starVLA samples/s (median of per-round ratios; goal >= 1.0): {ratio:.3f} "
          f"(process CPU time: {cpu_ratio:.3f}); load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    return {"framework": fw["name"], "ratio": ratio, "cpu": cpu_ratio, "ours": args.batch / med(ours_rounds, "wall"),
            "theirs": args.batch / med(theirs_rounds, "wall"), "load": (load_before[0], load_after[0]),
            "loss_diff": abs(loss - theirs["loss"]),
            "norm_rdiff": abs(norm - theirs["grad_norm"]) / max(theirs["grad_norm"], 1e-12)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--framework", choices=(*FRAMEWORKS, "all"), default="oft",
                    help="the starVLA framework (and its parity fixture) to time; all: each in turn")
    ap.add_argument("--starvla-python", default="/tmp/starvla-venv/bin/python",
                    help="python of a side virtual environment that can import starVLA (scripts/parity/README.md)")
    ap.add_argument("--starvla-repo", default="/tmp/starvla", help="a checkout of github.com/starVLA/starVLA")
    ap.add_argument("--fast-code", default="/tmp/fast-ref",
                    help="folder with physical-intelligence/fast's processing_action_tokenizer.py (--framework fast)")
    ap.add_argument("--batch", type=int, default=2, help="rows: the fixture's 2 samples repeated")
    ap.add_argument("--steps", type=int, default=100, help="timed steps per side and round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--draws", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch < 1 or args.steps < 1 or args.rounds < 1 or args.threads < 1 or args.warmup < 0:
        ap.error("--batch, --steps, --rounds and --threads must be >= 1, --warmup >= 0")
    if args.worker:
        return worker(args)
    frameworks = list(FRAMEWORKS) if args.framework == "all" else [args.framework]
    problem = missing_reference(args, frameworks)
    if problem:
        raise SystemExit(problem)
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    commit = subprocess.run(["git", "-C", args.starvla_repo, "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    print("command: python bench/starvla_step.py " + " ".join(sys.argv[1:]))
    print(f"starVLA {args.starvla_repo} at {commit[:7]} (fixtures made at 0ed0aad), torch {torch.__version__}, "
          f"{os.cpu_count()} CPU(s), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = []
    for framework in frameworks:
        print()
        results.append(bench(args, framework))
    if len(results) > 1:
        print("\nframework               GraphVLA / starVLA samples/s   CPU time   samples/s GraphVLA   starVLA   load")
        for r in results:
            print(f"{r['framework']:<24}{r['ratio']:>28.3f}{r['cpu']:>11.3f}{r['ours']:>21.2f}{r['theirs']:>10.2f}"
                  f"   {r['load'][0]:.2f}-{r['load'][1]:.2f}")


if __name__ == "__main__":
    main()
