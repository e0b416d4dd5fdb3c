"""Per action head: CPU `predict` latency and training-step time, as ratios against head.mlp
measured in the same run on the same backbone; for head.dual_system also the speed-up of running
System 2 (the backbone) only every k-th call (`infer: {every: k}`).

    python bench/heads.py                 # small from-scratch encoders (seconds)
    python bench/heads.py --graph tiny    # graphvla/graphs/tiny/*.yaml on the tiny Qwen3-VL (slower), with
                                          # fast-lm: FAST decoded by the VLM itself

FAST decodes until its end token, so an untrained model's latency depends on where it happens to
stop. The FAST variants are therefore first fitted to the benchmark batch (--fit-steps) so that
they generate chunks of realistic length; the table says how many tokens each one generated.

Absolute times depend on the machine; only the ratios are meant to be compared.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import graphvla
from graphvla.processors.fast_tokenizer import FASTTokenizer
from graphvla.policy.caches import CallRows, cached_infer, reset_caches

ROOT = Path(__file__).resolve().parent.parent
HEADS = ["head.mlp", "head.query_transformer", "head.flow_matching", "head.dual_system", "head.fast"]

SMALL = """
graphvla: 1
name: bench-{name}
inputs:
  images:      {{kind: image, views: 1, size: [64, 64]}}
  instruction: {{kind: text}}
  state:       {{kind: state, dim: 8}}
  actions:     {{kind: action, dim: 7, horizon: 8, train_only: true}}
blocks:
  vision:   {{type: encoder.image, in: {{images: inputs.images}}, with: {{width: 128, patch: 8, layers: 2}}{every}}}
  language: {{type: encoder.text, in: {{text: inputs.instruction}}, with: {{width: 128, layers: 2}}{every}}}
  fuse:     {{type: glue.fuse, in: {{a: vision.hidden, b: language.hidden}}, with: {{width: 128}}{every}}}
  head:
    type: {head}
    in: {{context: fuse.hidden, state: inputs.state, target: inputs.actions}}
    with: {params}
losses:
  action: {{from: head.loss}}
outputs:
  actions: head.actions
"""
SMALL_PARAMS = {
    "head.mlp": "{hidden: 256}",
    "head.query_transformer": "{width: 128, layers: 2}",
    "head.flow_matching": "{width: 128, layers: 4, num_steps: 10}",
    "head.dual_system": "{width: 128, layers: 4, num_steps: 10}",
    "head.fast": "{tokenizer: tok, vocab_size: 512, width: 128, layers: 2}",
}
TINY_FILES = {"head.query_transformer": "querytf.yaml", "head.flow_matching": "flowdit.yaml", "head.dual_system": "dualsystem.yaml", "head.fast": "fast.yaml",
              "fast-lm (VLM decodes)": "fast-lm.yaml"}
TINY_MLP = ["blocks.head.type=head.mlp", "blocks.head.with={hidden: 256}",
            "blocks.head.in={context: vlm.hidden, state: inputs.state, target: inputs.actions}"]


def small_spec(folder: Path, head: str, every: int = 1) -> Path:
    path = folder / f"{head}{'-every' if every > 1 else ''}.yaml"
    infer = f", infer: {{every: {every}}}" if every > 1 else ""
    path.write_text(SMALL.format(name=head.replace(".", "-").replace("_", "-"), head=head, params=SMALL_PARAMS[head], every=infer))
    return path


def batch_for(cg, b: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, decl in cg.spec.inputs.items():
        kind = decl["kind"]
        if kind == "image":
            h, w = decl["size"]
            out[name] = torch.rand(b, decl.get("views", 1), decl.get("channels", 3), h, w, generator=g)
        elif kind == "text":
            out[name] = [f"pick up the block number {i} and put it in the bin" for i in range(b)]
        elif kind == "state":
            out[name] = torch.randn(b, decl["dim"], generator=g)
        elif kind == "action":
            out[name] = torch.cumsum(torch.randn(b, decl["horizon"], decl["dim"], generator=g) * 0.1, dim=1).clamp(-1, 1)
        elif kind == "mask":
            out[name] = torch.ones(b, *decl["shape"], dtype=torch.bool)
    return out


def interleaved_ms(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """name -> fastest time in ms. The functions run round-robin, so load from other processes
    hits all of them alike, and the minimum is the least disturbed run."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: 1000 * min(ts) for name, ts in times.items()}


def placeholders(gm) -> set:
    return {n.target for n in gm.graph.nodes if n.op == "placeholder"}


def step_functions(cg, b: int) -> tuple:
    """(train_step, predict) closures for one compiled graph."""
    full = batch_for(cg, b)
    batch = {k: v for k, v in full.items() if k in placeholders(cg.train["action"])}
    obs = {k: v for k, v in full.items() if k in placeholders(cg.infer)}
    opt = torch.optim.AdamW([p for p in cg.model.parameters() if p.requires_grad], lr=1e-4)

    def train_step():
        cg.model.train()
        loss = cg.train["action"](**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    def predict():  # a full call: cg.infer keeps no cache, so System 2 is recomputed even where the spec caches it
        cg.model.eval()
        with torch.no_grad():
            cg.infer(**obs)

    return train_step, predict


def head_params(cg) -> int:
    """Parameters of the head; for FAST through the VLM, the action-token embedding rows it added."""
    vlm = cg.model["vlm"] if "vlm" in cg.model else None
    if getattr(vlm, "action_base", None) is not None:
        return vlm.params["action_vocab"] * vlm.width
    return sum(p.numel() for p in cg.model["head"].parameters())


def fit(cg, b: int, steps: int):
    """Overfit a graph to the benchmark batch, so a FAST decoder stops where a trained one would."""
    full = batch_for(cg, b)
    batch = {k: v for k, v in full.items() if k in placeholders(cg.train["action"])}
    opt = torch.optim.AdamW([p for p in cg.model.parameters() if p.requires_grad], lr=3e-3)
    cg.model.train()
    for _ in range(steps):
        loss = cg.train["action"](**batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def generated_tokens(cg, b: int) -> float:
    """Mean number of FAST tokens one predict call decodes per sample (before its end token),
    counted where the tokens are turned into actions."""
    obs = {k: v for k, v in batch_for(cg, b).items() if k in placeholders(cg.infer)}
    head, counts = cg.model["head"], []
    name = "generate" if hasattr(head, "generate") else "forward"  # head.fast's own decoder, or fast.decode
    original = getattr(head, name)

    def counting(*args, **kwargs):
        if name == "generate":
            rows = original(*args, **kwargs)
            counts.append(sum(map(len, rows)) / len(rows))
            return rows
        tokens = kwargs["tokens"] if "tokens" in kwargs else args[0]
        counts.append(float((tokens >= 0).sum()) / tokens.shape[0])
        return original(*args, **kwargs)

    setattr(head, name, counting)
    try:
        cg.model.eval()
        with torch.no_grad():
            cg.infer(**obs)
    finally:
        delattr(head, name)
    return counts[0]


def cache_functions(cached, every: int, b: int) -> tuple:
    """(k calls recomputing System 2 each time, one k-call episode with the cache)."""
    obs = {k: v for k, v in batch_for(cached, b).items() if k in placeholders(cached.infer)}
    with_cache = cached_infer(cached, CallRows())  # the runtime's every-k caches, as a Policy runs them

    def episode():
        cached.model.eval()
        with torch.no_grad():
            reset_caches(with_cache)  # each episode: 1 System-2 call, then every-1 cached calls
            for _ in range(every):
                with_cache(**obs)

    def recompute_every_call():
        cached.model.eval()
        with torch.no_grad():
            for _ in range(every):
                cached.infer(**obs)  # cg.infer keeps no cache

    return recompute_every_call, episode


def compile_variants(graph: str, folder: Path):
    """head -> (compiled graph, cached dual-system graph or None, every)."""
    out = {}
    if graph == "small":
        rng = np.random.default_rng(0)
        chunks = np.clip(np.cumsum(rng.normal(size=(2000, 8, 7)) * 0.1, axis=1), -1, 1)
        FASTTokenizer(8, 7, scale=10, vocab_size=512).fit(chunks).save(folder / "tok")
        for head in HEADS:
            torch.manual_seed(0)
            out[head] = graphvla.compile_graph(small_spec(folder, head), device="cpu")
        every = 4
        torch.manual_seed(0)
        cached = graphvla.compile_graph(small_spec(folder, "head.dual_system", every), device="cpu")
    else:
        tiny = ROOT / "graphvla" / "graphs" / "tiny"
        torch.manual_seed(0)
        out["head.mlp"] = graphvla.compile_graph(tiny / "querytf.yaml", TINY_MLP, device="cpu")
        for head, name in TINY_FILES.items():
            torch.manual_seed(0)
            out[head] = graphvla.compile_graph(tiny / name, device="cpu")
        torch.manual_seed(0)
        cached = out["head.dual_system"]
        every = int(cached.spec.blocks["vlm"].get("infer", {}).get("every", 1))
        if every == 1:
            every = 4
            cached = graphvla.compile_graph(tiny / "dualsystem.yaml", ["blocks.vlm.infer.every=4"], device="cpu")
    return out, cached, every


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", choices=["small", "tiny"], default="small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--fit-steps", type=int, default=100, help="steps fitting the FAST variants before timing")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    # an untrained head.fast decodes garbage: expected here, and its warnings would drown the table
    logging.getLogger("graphvla.blocks.heads.fast").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        graphs, cached, every = compile_variants(args.graph, Path(tmp))
        fitted = {head: fit(cg, args.batch, args.fit_steps) for head, cg in graphs.items() if "fast" in head}
        tokens = {head: generated_tokens(graphs[head], args.batch) for head in fitted}
        fns = {}
        for head, cg in graphs.items():
            fns[(head, "train")], fns[(head, "predict")] = step_functions(cg, args.batch)
        has_cache = bool(cached.every_k)
        if has_cache:
            fns["recompute"], fns["cached"] = cache_functions(cached, every, args.batch)
        ms = interleaved_ms(fns, args.repeats)
    results = {head: {"params": head_params(cg), "train": ms[(head, "train")], "predict": ms[(head, "predict")]}
               for head, cg in graphs.items()}
    recompute, with_cache = (ms["recompute"] / every, ms["cached"] / every) if has_cache else (None, None)
    base = results["head.mlp"]
    print(f"graph: {args.graph}, batch {args.batch}, {args.threads} thread(s), torch {torch.__version__}, "
          f"fastest of {args.repeats} interleaved runs")
    print(f"{'head':22s} {'head params':>11s} {'train ms':>9s} {'x mlp':>6s} {'predict ms':>10s} {'x mlp':>6s}")
    for head, r in results.items():
        print(f"{head:22s} {r['params']:11,d} {r['train']:9.1f} {r['train'] / base['train']:6.2f} "
              f"{r['predict']:10.1f} {r['predict'] / base['predict']:6.2f}")
    for head, loss in fitted.items():
        print(f"{head}: fitted {args.fit_steps} steps (loss {loss:.3f}), then {tokens[head]:.1f} tokens generated per sample")
    if recompute is None:
        print("head.dual_system cache: the compiler has no infer.every cache", file=sys.stderr)
    else:
        print(f"head.dual_system, System 2 every {every} calls: {with_cache:.1f} ms/call vs {recompute:.1f} ms/call "
              f"recomputing ({recompute / with_cache:.2f}x faster)")


if __name__ == "__main__":
    main()
