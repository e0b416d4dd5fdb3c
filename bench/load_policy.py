"""load_policy time and peak memory on a tiny VLM run: the old path against the new, in one run.

The run: tiny/querytf (a tiny Qwen3-VL read from a model folder, as a real base model is, plus
head.query_transformer) with random weights, written as training writes a checkpoint (policy/checkpoint.py
write_policy_files). `--width W --layers L` widen the VLM's language model (a ~100M-parameter
model with --width 1024 --layers 8) to show how both paths scale with the weights.

- old: what load_policy did before: compile the graph for real on the CPU (the VLM's weights
  initialized, then read from its base folder by from_pretrained) and copy the checkpoint's
  weights over them (safetensors load_model);
- new: load_policy: the blocks built with their parameters on meta, the checkpoint's tensors read
  once and assigned (safetensors maps the file: pages are read on first use, so memory is also
  reported with the first inference call).

Each measurement runs in a fresh subprocess (imports done before the clock starts): seconds of the
load, and the peak resident memory during the load above the resident memory before it (Linux:
VmHWM after resetting it with /proc/self/clear_refs; elsewhere ru_maxrss). Both paths
must give the same actions. Runs alternate (old, new, old, ...); the figures are medians, and the
ratio is new / old. The machine's load average is printed before and after: others' work inflates
the times (less so the memory).

    python bench/load_policy.py [--repeats 5] [--width 1024 --layers 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = Path(__file__).resolve().parent.parent / "graphvla" / "graphs" / "tiny"
STATS = {"state": {"mean": [0.1, -0.2, 0.3, 0.5], "std": [0.5, 2.0, 1.5, 0.25]},
         "actions": {"mean": [0.2, -0.1, 0.0, 0.4], "std": [1.5, 0.5, 2.0, 1.0]}}


def make_run(folder: Path, width: int | None, layers: int | None) -> Path:
    """A checkpoint of tiny/querytf whose VLM is read from folder/model (weights, config, processor)."""
    import torch
    import yaml
    from transformers import AutoConfig, AutoModelForImageTextToText

    from graphvla.blocks.backbones.tiny_hf import save_tiny
    from graphvla.compiler.compile import compile_graph
    from graphvla.policy import checkpoint as C

    model_dir = save_tiny("qwen3_vl", folder / "model")
    if width or layers:  # a wider/deeper language model on the same tokenizer and processor
        config = AutoConfig.from_pretrained(model_dir)
        text = config.text_config
        text.hidden_size = width or text.hidden_size
        text.intermediate_size = 4 * text.hidden_size
        text.num_hidden_layers = layers or text.num_hidden_layers
        config.vision_config.out_hidden_size = text.hidden_size
        torch.manual_seed(0)
        AutoModelForImageTextToText.from_config(config).save_pretrained(model_dir)
    doc = yaml.safe_load((TINY / "base" / "qwen3vl.yaml").read_text())
    doc["name"] = "tiny-qwen3vl-querytf-from-folder"
    doc["blocks"]["vlm"]["with"] = {"model": "model"}
    doc["blocks"]["head"] = yaml.safe_load((TINY / "querytf.yaml").read_text())["blocks"]["head"]
    (folder / "graph.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    torch.manual_seed(0)
    cg = compile_graph(str(folder / "graph.yaml"), device="cpu")
    modes = {"state": "mean_std", "actions": "mean_std"}
    C.write_checkpoint(folder / "run", 1, lambda d: C.write_policy_files(
        d, cg.spec, cg.preprocess.with_statistics(STATS, modes), cg.postprocess.with_statistics(STATS, modes),
        {"stats": STATS, "modes": modes}, model=cg.model))
    return folder / "run"


def old_load(run: Path):
    """The sequence load_policy ran before this change: a real compile, then load_model over it."""
    from safetensors.torch import load_model

    from graphvla.compiler.compile import compile_graph
    from graphvla.policy.checkpoint import read_pipelines, resolve_checkpoint
    from graphvla.policy.loading import _with_copied_assets
    from graphvla.policy.policy import Policy
    from graphvla.spec.loader import load_spec

    ckpt = resolve_checkpoint(run)
    spec = load_spec(str(ckpt / "spec.yaml"))
    origin = json.loads((ckpt / "graph.json").read_text()).get("spec_file")
    if origin and Path(origin).parent.is_dir():
        spec.file = origin
    cg = compile_graph(_with_copied_assets(spec, ckpt), device="cpu")
    cg.spec = spec
    load_model(cg.model, str(ckpt / "model.safetensors"), strict=True)
    preprocess, postprocess = read_pipelines(ckpt, cg)
    return Policy.from_compiled(cg, preprocess=preprocess, postprocess=postprocess)


def measure(path: str, run: Path, actions_file: Path, threads: int) -> dict:
    """One load in this (fresh) process: seconds and peak RSS above the post-import peak."""
    import numpy as np
    import torch

    import graphvla.policy.loading  # noqa: F401 - imports (torch, transformers, the blocks) before the clock
    from graphvla.blocks.backbones import hf_vlm  # noqa: F401
    import transformers.models.qwen3_vl.modeling_qwen3_vl  # noqa: F401

    torch.set_num_threads(threads)
    base = _start_peak()
    start = time.perf_counter()
    policy = old_load(run) if path == "old" else graphvla.policy.loading.load_policy(run)
    seconds = time.perf_counter() - start
    peak = _peak()
    rng = np.random.default_rng(0)
    obs = {"images": rng.integers(0, 255, (128, 128, 3), dtype=np.uint8), "instruction": "reach the goal",
           "state": rng.standard_normal(4).astype(np.float32)}
    np.save(actions_file, policy.infer(obs)["actions"])
    served = _peak()  # with the first call: the new path's weights are mapped from the file, paged in on use
    params = sum(p.numel() for p in policy.cg.model.parameters())
    return {"seconds": seconds, "peak_mb": (peak - base) / 1024, "served_mb": (served - base) / 1024, "params": params}


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _start_peak() -> int:
    """KiB resident now, with the peak reset to it (Linux: clear_refs 5), so the imports' own peak
    does not hide the load's; elsewhere the peak so far (ru_maxrss)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kb("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak() -> int:
    return _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(path: str, run: Path, folder: Path, threads: int) -> dict:
    out = folder / f"actions-{path}.npy"
    res = subprocess.run([sys.executable, __file__, "--measure", path, str(run), str(out), "--threads", str(threads)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{path} load failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--width", type=int, default=None, help="the VLM language model's hidden size (tiny: 64)")
    ap.add_argument("--layers", type=int, default=None, help="its decoder layers (tiny: 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--measure", nargs=3, metavar=("PATH", "RUN", "ACTIONS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        path, run, actions = args.measure
        print(json.dumps(measure(path, Path(run), Path(actions), args.threads)))
        return
    import numpy as np

    print(f"load average before: {os.getloadavg()} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run = make_run(folder, args.width, args.layers)
        size = (run / "checkpoints" / "step_0000001" / "model.safetensors").stat().st_size
        rows = {"old": [], "new": []}
        for _ in range(args.repeats):
            for path in rows:
                rows[path].append(child(path, run, folder, args.threads))
        old, new = np.load(folder / "actions-old.npy"), np.load(folder / "actions-new.npy")
        assert np.array_equal(old, new), f"old and new loads predict differently (max diff {np.abs(old - new).max()})"
    print(f"load average after:  {os.getloadavg()}")
    params = rows["new"][0]["params"]
    print(f"tiny/querytf from a model folder: {params / 1e6:.2f}M parameters, model.safetensors {size / 2**20:.1f} MiB; "
          f"{args.threads} thread(s), median of {args.repeats} fresh processes each; same actions: yes")
    keys = ("seconds", "peak_mb", "served_mb")
    med = {p: {k: statistics.median(r[k] for r in rs) for k in keys} for p, rs in rows.items()}
    print(f"{'path':<5} {'load s':>8} {'peak MiB (load)':>16} {'peak MiB (load + 1st call)':>27}")
    for p in ("old", "new"):
        print(f"{p:<5} {med[p]['seconds']:>8.3f} {med[p]['peak_mb']:>16.1f} {med[p]['served_mb']:>27.1f}")
    ratio = {k: med["new"][k] / max(med["old"][k], 1e-9) for k in keys}
    print(f"new/old: time {ratio['seconds']:.2f}x, peak memory {ratio['peak_mb']:.2f}x during the load, "
          f"{ratio['served_mb']:.2f}x with the first call")


if __name__ == "__main__":
    main()
