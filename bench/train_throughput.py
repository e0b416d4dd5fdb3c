"""Training-step throughput of the GraphVLA trainer.

Two comparisons, each against a baseline measured in the same run:

    python bench/train_throughput.py [--spec graphvla/graphs/tiny/mlp.yaml] [--steps 200] [--batch 32] [--rounds 5] [--threads 1]

the trainer against a hand-written PyTorch loop over the same compiled model, the same samples,
sampler, collate and normalization. Prints samples/s of both and their ratio (trainer /
hand-written; target >= 0.95). Rounds alternate the two so that load from other processes hits
both alike; the median is reported. Each trainer round is one `run()` session; its rate leaves out
the checkpoint written at the end of the session (a one-off cost, printed separately).

    python bench/train_throughput.py --engines [--processes 2] [--steps 60] [--batch 32] [--rounds 3] [--repeat 2]

the distributed engines (DDP, DeepSpeed ZeRO-2, ZeRO-3, FSDP), each launched with `accelerate
launch --config_file configs/accelerate/<engine>.yaml --num_processes P` on this machine (CPU
processes over gloo without GPUs), as ratios of samples/s against DDP. `--batch` is the global
batch. Each launch times `--rounds` trainer sessions after 3 warm-up steps and reports their
median; the engine list is run `--repeat` times in turn, so drifting load hits every engine, and
each engine's figure is the median over its launches.

Synthetic samples shaped like the spec's input ports keep the data side cheap and identical.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from graphvla.compiler.compile import compile_graph
from graphvla.data.api import DataBundle, collate
from graphvla.data.normalize import Normalizer
from graphvla.data.stats import compute_stats
from graphvla.runners.train import Trainer
from graphvla.runners.train.optim import block_param_groups, build_optimizer, set_lrs
from graphvla.spec.loader import load_spec


class PortSamples(torch.utils.data.Dataset):
    """n random samples for the spec's input ports (images in [0, 1], text, state, actions)."""

    def __init__(self, spec, n=256, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            item = {}
            for port, d in spec.inputs.items():
                k = d["kind"]
                if k == "image":
                    item[port] = torch.rand(d.get("views", 1), d.get("channels", 3), *d["size"], generator=g)
                elif k == "text":
                    item[port] = ["pick up the cube", "open the drawer", "press the button"][i % 3]
                elif k == "state":
                    item[port] = torch.randn(d["dim"], generator=g)
                elif k == "action":
                    item[port] = torch.randn(d["horizon"], d["dim"], generator=g)
            self.items.append(item)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def vector_stats(ds, spec):
    ports = [p for p, d in spec.inputs.items() if d["kind"] in ("state", "action")]
    return {p: compute_stats(torch.stack([ds[i][p] for i in range(len(ds))]).reshape(-1, ds[0][p].shape[-1]).numpy())
            for p in ports}


def bundle_for(spec, n):
    ds = PortSamples(spec, n)
    return DataBundle({s: ds for s in compile_graph(spec).streams}, vector_stats(ds, spec))


class TrainerRunner:
    """`Trainer.run()` as `graphvla train` runs it (progress bar off): each round continues the
    same run for `steps` more steps. The rate is the session's `samples_per_s`: data feed,
    forward/backward, loss checks, clipping, optimizer, TensorBoard logging; the checkpoint
    written at the end of each session is reported separately."""

    def __init__(self, spec, bundle, run_dir):
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (import once, outside timing)

        self.t = Trainer.from_spec(spec, bundle, run_dir, progress=False)
        for _ in range(3):  # warm-up steps, not timed
            self.t.train_step()

    def __call__(self, steps):
        self.t.cfg["max_steps"] = self.t.step + steps
        start = time.perf_counter()
        result = self.t.run()
        self.session_seconds = time.perf_counter() - start
        return result.samples_per_s  # steps, data, logging, loss checks; not the checkpoint write


class HandWritten:
    """What one would write by hand: DataLoader, normalize, forward, backward, clip, step."""

    def __init__(self, spec, bundle):
        cfg = self.cfg = spec.section("trainer")
        torch.manual_seed(cfg["seed"])
        cg = compile_graph(spec, device="cpu")
        stream = cg.streams[0]
        self.gm = cg.train[stream]
        train_cfg = {bid: cg.block(bid).train for bid in cg.model}
        self.opt = build_optimizer(block_param_groups(cg.model, train_cfg, cfg), cfg)
        self.steps = 0
        self.norm = Normalizer(bundle.stats, cfg.get("normalization") or {})
        it = iter(bundle.sampler(stream, seed=cfg["seed"]))
        batches = ([next(it) for _ in range(cfg["batch_size"])] for _ in iter(int, 1))
        self.loader = iter(torch.utils.data.DataLoader(bundle.streams[stream], batch_sampler=batches, collate_fn=collate))
        self.params = [p for p in cg.model.parameters() if p.requires_grad]
        self.names = [n.target for n in self.gm.graph.nodes if n.op == "placeholder"]
        for _ in range(3):
            self.step()

    def step(self):
        batch = self.norm.normalize(next(self.loader))
        out = self.gm(**{k: batch[k] for k in self.names if k in batch})
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg["grad_clip"])
        set_lrs(self.opt, self.steps, self.cfg)
        self.opt.step()
        self.steps += 1
        self.opt.zero_grad(set_to_none=True)
        return out["loss"].item()

    def __call__(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * self.cfg["batch_size"] / (time.perf_counter() - start)


ENGINES = ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]
REPO = Path(__file__).parent.parent


def engine_worker(args):
    """Inside `accelerate launch`: time `rounds` trainer sessions, the main process writes JSON."""
    import json

    spec = load_spec(args.spec, [f"trainer.batch_size={args.batch}", "trainer.save_every=1000000",
                                 "trainer.log_every=10", "trainer.max_steps=1000000"])
    bundle = bundle_for(spec, max(4 * args.batch, 128))
    with tempfile.TemporaryDirectory() as tmp:
        runner = TrainerRunner(spec, bundle, Path(tmp) / "run")
        rates = [runner(args.steps) for _ in range(args.rounds)]
        t = runner.t
        if t.accelerator.is_main_process:
            Path(args.out).write_text(json.dumps({"engine": t.engine, "processes": t.accelerator.num_processes,
                                                  "layout": t.layout.describe(), "rates": rates}))


def compare_engines(args):
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads or 1), DS_ACCELERATOR="cpu")
    results = {e: [] for e in ENGINES}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            for engine in ENGINES:
                out = Path(tmp) / f"{engine}-{rep}.json"
                cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       str(REPO / "configs" / "accelerate" / f"{engine}.yaml"), "--num_processes", str(args.processes),
                       __file__, "--engine-worker", "--spec", args.spec, "--steps", str(args.steps),
                       "--batch", str(args.batch), "--rounds", str(args.rounds), "--out", str(out)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
                if proc.returncode != 0:
                    sys.exit(f"{engine} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(out.read_text())
                assert r["engine"] == engine and r["processes"] == args.processes, r
                results[engine].append(statistics.median(r["rates"]))
                print(f"pass {rep + 1} {engine:16s} {results[engine][-1]:8.1f} samples/s   ({r['layout']})")
    rates = {e: statistics.median(v) for e, v in results.items()}
    print(f"\n{Path(args.spec).stem}, global batch {args.batch}, {args.processes} processes, {args.steps} steps x "
          f"{args.rounds} rounds per launch, {args.repeat} launches per engine")
    for e in ENGINES:
        print(f"{e:16s} {rates[e]:8.1f} samples/s   ratio vs DDP {rates[e] / rates['ddp']:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(Path(__file__).parent.parent / "graphvla" / "graphs" / "tiny" / "mlp.yaml"))
    ap.add_argument("--steps", type=int, default=None, help="steps per timed session (default 200; 60 with --engines)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=None, help="timed sessions (default 5; 3 per launch with --engines)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared machine more threads make both sides erratic; 0 keeps torch's default)")
    ap.add_argument("--engines", action="store_true", help="compare DDP, ZeRO-2, ZeRO-3 and FSDP (ratios against DDP)")
    ap.add_argument("--processes", type=int, default=2, help="with --engines: processes per launch")
    ap.add_argument("--repeat", type=int, default=2, help="with --engines: launches per engine, taken in turn")
    ap.add_argument("--engine-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.engine_worker or args.engines:
        args.steps, args.rounds = args.steps or 60, args.rounds or 3
        return engine_worker(args) if args.engine_worker else compare_engines(args)
    args.steps, args.rounds = args.steps or 200, args.rounds or 5
    spec = load_spec(args.spec, [f"trainer.batch_size={args.batch}", "trainer.save_every=1000000",
                                 "trainer.log_every=10", "trainer.max_steps=1000000"])
    bundle = bundle_for(spec, max(4 * args.batch, 128))
    trainer_rates, hand_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        hand, trainer = HandWritten(spec, bundle), TrainerRunner(spec, bundle, Path(tmp) / "run")
        for r in range(args.rounds):
            hand_rates.append(hand(args.steps))
            trainer_rates.append(trainer(args.steps))
            ckpt = trainer.session_seconds - args.steps * args.batch / trainer_rates[-1]
            print(f"round {r + 1}: hand-written {hand_rates[-1]:8.1f} samples/s   trainer {trainer_rates[-1]:8.1f} samples/s"
                  f"   (+{ckpt:.2f} s checkpoint at the session end)")
    ratios = [t / h for t, h in zip(trainer_rates, hand_rates)]
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"\n{spec.name}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds on {device}")
    print(f"hand-written loop : {statistics.median(hand_rates):8.1f} samples/s (median)")
    print(f"graphvla trainer  : {statistics.median(trainer_rates):8.1f} samples/s (median)")
    print(f"ratio trainer/hand: {statistics.median(ratios):.3f} (median of per-round ratios; target >= 0.95)")
    print(f"ratio of best rounds: {max(trainer_rates) / max(hand_rates):.3f} (least disturbed by other load)")


if __name__ == "__main__":
    main()
