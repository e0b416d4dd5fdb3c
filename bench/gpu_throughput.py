"""Training throughput of the full-size starVLA graphs on one GPU: samples/s and peak memory, with
gradient checkpointing on and off, beside starVLA's published figure.

    python bench/gpu_throughput.py [--device cuda] [--config full|tiny] [--steps 10] [--warmup 3]
                                   [--batch 8] [--heads gr00t oft] [--budget 420] [--processor DIR]
                                   [--fp32-masters] [--out DIR]

What runs: GraphVLA's own packaged graphs `starvla/qwen3vl-gr00t` (starVLA's QwenGR00T) and
`starvla/qwen3vl-oft` (starVLA's QwenOFT), each compiled on --device with its VLM built from the
bundled Qwen3-VL-4B config (`backbone.hf_vlm` `with.config: qwen3_vl_4b`: random weights, nothing
read from the Hub) in the graph's dtype (bfloat16), its head at the graph's sizes (float32), with
the block option `gradient_checkpointing` set false, then true (the option every starVLA graph
has; `backbone.hf_vlm` turns on the Hugging Face model's checkpointing). One training step is what
`graphvla train` does on a GPU: the graph's train stream under bf16 autocast (accelerate's bf16
mixed precision), backward, gradient clipping at the graph's trainer.grad_clip, AdamW (one group per
block at its train.lr, fused on CUDA), zero_grad. The batch (--batch rows, 8 as in starVLA's
figure) is synthetic: two random 224 x 224 views, instructions, a 7-d state where the graph takes
one, 8 x 7 actions in [-1, 1]; it is processed once by the graph's own processor steps (chat
template, placeholder tokens, image patches) before timing, as the trainer's DataLoader workers
do it beside the GPU; that processing's time is printed on its own. After --warmup steps,
--steps steps are timed (torch.cuda.synchronize around them); peak memory is
torch.cuda.max_memory_allocated over the whole configuration (build, warm-up, timed steps).

Precision. By default the VLM's parameters stay bfloat16 and AdamW keeps its state in bfloat16
(36 GB of weights, gradients and optimizer state for the 4.4B parameters: fits one 80 GB GPU).
`--fp32-masters` does what `graphvla train` does for a bf16 block (graphvla/runners/train/precision.py:
float32 master weights, bf16 autocast): 16 bytes per parameter, over 70 GB, an H200-size card.
starVLA itself trains under DeepSpeed ZeRO-2 (bf16) across its 8 GPUs, which shards the float32
master weights and optimizer state.

Tokenizer. The real Qwen3-VL-4B-Instruct processor is used when --processor names its folder or the
Hugging Face cache holds Qwen/Qwen3-VL-4B-Instruct (never downloaded). Otherwise a stand-in: the
tiny byte-level BPE of tests/fixtures/starvla/qwenoft/vlm (its special tokens, starVLA's placeholder
among them) with the bundled 4B image processor settings, and the 4B config's image/video/vision
token ids set to that tokenizer's ids. The model's computation is the same; the prompt's text part
tokenizes longer (the JSON records tokens per sample and which tokenizer was used).

Time budget. The whole run stops within --budget seconds (420: the issue asks for under 8 minutes):
a configuration is skipped when the time left cannot hold it, and timed steps are cut when the time
left is short (both recorded: skipped / steps_cut, stopped_early); what was measured is printed.

--config tiny swaps in the tiny Qwen3-VL of the starVLA parity fixtures (tests/fixtures/starvla/
qwenoft/vlm, 64 x 64 images) and a tiny GR00T DiT, so the same code runs on a CPU in seconds (the
test, tests/test_gpu_throughput_bench.py); its figures mean nothing.

Output: a markdown table (head, checkpointing, samples/s, seconds/step, peak memory, and starVLA's
anchor beside the GR00T rows) and a JSON object, printed and, with --out DIR, written to
DIR/gpu_throughput.json and DIR/gpu_throughput.md. Anchor: starVLA reports 56.6 samples/s for
Qwen3-VL-4B GR00T on 8 x A100 80GB at batch 8 per GPU, 7.1 per GPU (its training-efficiency
report, starVLA/starVLA issue #158: RoboCasa-GR1 data, DeepSpeed, data loading and communication
included; A100, not this card).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from graphvla import hub
from graphvla.blocks.backbones.hf_config import bundled_dir
from graphvla.compiler.compile import compile_graph
from graphvla.fileio import write_text_atomic
from graphvla.runners.train.optim import block_param_groups, build_optimizer, set_lrs
from graphvla.runners.train.precision import TrainModes, keep_fp32_masters
from graphvla.spec.library import resolve_graph
from graphvla.spec.loader import load_spec

REPO = Path(__file__).resolve().parents[1]
TINY_VLM = REPO / "tests" / "fixtures" / "starvla" / "qwenoft" / "vlm"  # tiny Qwen3-VL + tokenizer (starVLA's parity fixture)
HUB_ID = "Qwen/Qwen3-VL-4B-Instruct"
GRAPHS = {"gr00t": "starvla/qwen3vl-gr00t", "oft": "starvla/qwen3vl-oft"}
FRAMEWORK = {"gr00t": "QwenGR00T", "oft": "QwenOFT"}
# the tiny GR00T DiT of the parity fixture (scripts/parity/starvla_gr00t.py), for --config tiny
TINY_GR00T = {"width": 32, "heads": 4, "layers": 4, "output_dim": 20, "hidden": 24, "future_tokens": 3,
              "max_seq_len": 16, "repeated_diffusion_steps": 3}
TINY_IMAGE = 64
ANCHOR = {"framework": "QwenGR00T", "vlm": "Qwen3-VL-4B", "samples_per_s_total": 56.6, "gpus": 8, "gpu": "A100 80GB",
          "batch_per_gpu": 8, "samples_per_s_per_gpu": round(56.6 / 8, 1),
          "source": "starVLA training-efficiency report (github.com/starVLA/starVLA/issues/158): RoboCasa-GR1, "
                    "DeepSpeed, data loading and communication included"}
INSTRUCTIONS = ["pick up the red cube and place it in the bowl", "open the top drawer",
                "put the bowl on the plate", "turn on the stove"]
TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def gib(n) -> float | None:
    return None if n is None else round(n / 2 ** 30, 2)


def vlm_source(config: str, processor: str | None, tmp: Path) -> tuple[object, Path, str]:
    """(with.config, with.processor folder, what the tokenizer is) for the VLM block."""
    if config == "tiny":
        return json.loads((TINY_VLM / "config.json").read_text()), TINY_VLM, f"tiny fixture tokenizer ({TINY_VLM.relative_to(REPO)})"
    real = Path(processor) if processor else hub.cached_snapshot(HUB_ID)
    if real is not None and (real / "tokenizer_config.json").is_file():
        return "qwen3_vl_4b", real, f"Qwen3-VL-4B-Instruct's own ({real})"
    if processor:
        raise SystemExit(f"--processor {processor}: no tokenizer_config.json there (a Qwen3-VL-4B-Instruct folder)")
    # stand-in: the fixture's tokenizer, the 4B's image processor settings, the 4B config on its token ids
    folder = tmp / "standin-processor"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(TINY_VLM / name, folder / name)
    proc = json.loads((TINY_VLM / "processor_config.json").read_text())
    settings = json.loads((bundled_dir("qwen3_vl_4b") / "preprocessor_config.json").read_text())
    proc["image_processor"].update({k: v for k, v in settings.items() if k != "processor_class"})
    (folder / "processor_config.json").write_text(json.dumps(proc, indent=2))
    cfg = json.loads((bundled_dir("qwen3_vl_4b") / "config.json").read_text())
    tiny = json.loads((TINY_VLM / "config.json").read_text())
    cfg.update({k: tiny[k] for k in TOKEN_IDS})
    return cfg, folder, ("stand-in: the tiny fixture tokenizer (tests/fixtures/starvla/qwenoft/vlm) with the 4B's image "
                         "processor settings; the 4B config's image/video/vision token ids set to its ids")


def bench_spec(head: str, config: str, vlm_config, processor: Path, checkpointing: bool) -> dict:
    spec = copy.deepcopy(load_spec(str(resolve_graph(GRAPHS[head]))).data)
    vlm = spec["blocks"]["vlm"]["with"]
    vlm.pop("model", None)  # no Hub: random weights from the config
    vlm.update(config=vlm_config, processor=str(processor), gradient_checkpointing=checkpointing)
    if config == "tiny":
        spec["inputs"]["images"]["size"] = [TINY_IMAGE, TINY_IMAGE]
        if head == "gr00t":
            spec["blocks"]["head"]["with"].update(TINY_GR00T)
    return spec


def synthetic_batch(spec: dict, batch: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    inputs = spec["inputs"]
    img = inputs["images"]
    out = {"images": torch.rand(batch, img["views"], 3, *img["size"], generator=g),
           "instruction": [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(batch)]}
    act = inputs["actions"]
    out["actions"] = torch.rand(batch, act["horizon"], act["dim"], generator=g) * 2 - 1
    if "actions_mask" in inputs:
        out["actions_mask"] = torch.ones(batch, act["horizon"], dtype=torch.bool)
    if "state" in inputs:
        out["state"] = torch.rand(batch, inputs["state"]["dim"], generator=g) * 2 - 1
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(head: str, checkpointing: bool, args, vlm_config, processor: Path, deadline: float, left: int) -> dict:
    """One configuration: build, process the batch, warm up, time. `left`: configurations still to
    run after this one (the time left is shared with them)."""
    device = torch.device(args.device)
    row = {"graph": GRAPHS[head], "framework": FRAMEWORK[head], "head": head, "gradient_checkpointing": checkpointing,
           "status": "ok"}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    spec = bench_spec(head, args.config, vlm_config, processor, checkpointing)
    cg = compile_graph(spec, device=str(device))
    row["build_s"] = round(time.perf_counter() - t, 2)
    # what the block option did to the Hugging Face model (active in train mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers 5 renames it is_activation_checkpointing
        row["checkpointing_active"] = bool(getattr(cg.model["vlm"].model, "is_gradient_checkpointing", False))
    counts = cg.param_counts()
    row["parameters"] = sum(total for total, _ in counts.values())
    row["vlm_parameters"] = counts["vlm"][0]
    trainer = cg.spec.section("trainer")
    masters = keep_fp32_masters(cg.model) if args.fp32_masters else {}
    row["precision"] = ("fp32 masters, bf16 autocast" if masters else "bf16 parameters (VLM), bf16 autocast")
    opt = build_optimizer(block_param_groups(cg.model, {b: cg.block(b).train for b in cg.model}, trainer),
                          {**trainer, "fused_optimizer": device.type == "cuda"})
    params = [p for group in opt.param_groups for p in group["params"]]
    modes = TrainModes(cg.model)

    t = time.perf_counter()
    fed = cg.feed(synthetic_batch(spec, args.batch), "action")
    row["preprocess_s"] = round(time.perf_counter() - t, 3)
    fed = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in fed.items()}
    ids = fed.get("vlm_input_ids")
    row["tokens_per_sample"] = int(ids.shape[1]) if isinstance(ids, torch.Tensor) and ids.dim() == 2 else None
    train = cg.train["action"]
    clip = float(trainer.get("grad_clip", 0) or 0)

    done = [0]

    def step():
        modes.apply()
        set_lrs(opt, done[0], trainer)  # the trainer's warm-up and cosine schedule
        done[0] += 1
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = train(**fed)["loss"]
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    losses, warm = [], 0.0
    for _ in range(args.warmup):  # the last warm-up step estimates a step (the first carries one-off costs)
        t = time.perf_counter()
        losses.append(step())
        synchronize(device)
        warm = time.perf_counter() - t
    # the time left, shared with the configurations after this one (each needing about this one's build too)
    share = (deadline - time.perf_counter() - left * (row["build_s"] + args.warmup * warm)) / (left + 1)
    steps = max(1, min(args.steps, int(share / warm))) if warm > 0 else args.steps
    if steps < args.steps:
        row["status"] = "steps_cut"
    t = time.perf_counter()
    for _ in range(steps):
        losses.append(step())
    synchronize(device)
    seconds = (time.perf_counter() - t) / steps
    row.update(steps_timed=steps, warmup=args.warmup, step_s=round(seconds, 4),
               samples_per_s=round(args.batch / seconds, 3),
               loss_first=float(losses[0]), loss_last=float(losses[-1]),
               peak_memory_gib=gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None)
    if not all(torch.isfinite(x) for x in losses):
        row["status"] = "non-finite loss"
    del cg, opt, params, fed, train, modes
    return row


def table(result: dict) -> str:
    anchor = result["anchor"]
    lines = [f"GraphVLA starVLA graphs, {result['config']} config, batch {result['batch']} on {result['device_name']} "
             f"({result['precision']}; tokenizer: {result['tokenizer_kind']})", "",
             "| graph | gradient checkpointing | samples/s | s/step | peak memory (GiB) | starVLA (per GPU) |",
             "|---|---|---|---|---|---|"]
    for r in result["results"]:
        ref = f"{anchor['samples_per_s_per_gpu']} ({anchor['gpus']} x {anchor['gpu']})" if r["head"] == "gr00t" else "-"
        if r["status"] in ("ok", "steps_cut", "non-finite loss"):
            note = "" if r["status"] == "ok" else f" ({r['status']}: {r['steps_timed']} steps)"
            mem = "-" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
            lines.append(f"| {r['graph']} | {'on' if r['gradient_checkpointing'] else 'off'} | "
                         f"{r['samples_per_s']:.2f}{note} | {r['step_s']:.3f} | {mem} | {ref} |")
        else:
            lines.append(f"| {r['graph']} | {'on' if r['gradient_checkpointing'] else 'off'} | {r['status']} | - | - | {ref} |")
    lines += ["", f"Anchor: {anchor['source']}; {anchor['samples_per_s_total']} samples/s on {anchor['gpus']} GPUs = "
                  f"{anchor['samples_per_s_per_gpu']} per GPU. Different card and setup: a reference point, not a ratio."]
    if result["stopped_early"]:
        lines.append(f"Stopped early by the time budget ({result['budget_s']} s): see status.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", choices=("full", "tiny"), default="full",
                    help="full: the bundled Qwen3-VL-4B config (the graphs as packaged); tiny: a tiny Qwen3-VL and DiT (CPU test)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=8, help="samples per step (starVLA's figure: 8 per GPU)")
    ap.add_argument("--heads", nargs="+", choices=tuple(GRAPHS), default=["gr00t", "oft"])
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run")
    ap.add_argument("--processor", default=None, help="a Qwen3-VL-4B-Instruct folder to take the tokenizer and processor from")
    ap.add_argument("--fp32-masters", action="store_true",
                    help="float32 master weights as graphvla train keeps them (over 70 GB: an H200-size card)")
    ap.add_argument("--out", type=Path, default=None, help="also write gpu_throughput.json and gpu_throughput.md here")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        ap.error("--steps and --batch must be at least 1, --warmup at least 0")
    start = time.perf_counter()
    deadline = start + args.budget
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (run with --device cpu --config tiny to check the script)")
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    configurations = [(h, gc_on) for h in args.heads for gc_on in (False, True)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        vlm_config, processor, tokenizer = vlm_source(args.config, args.processor, Path(tmp))
        for i, (head, checkpointing) in enumerate(configurations):
            left = len(configurations) - i - 1
            done = [r for r in results if "build_s" in r]
            needed = (sum(r["build_s"] + (r["warmup"] + 1) * r["step_s"] for r in done) / len(done)) if done else 0.0
            if time.perf_counter() + needed > deadline:
                results.append({"graph": GRAPHS[head], "framework": FRAMEWORK[head], "head": head,
                                "gradient_checkpointing": checkpointing, "status": "skipped (time budget)"})
                continue
            try:
                row = measure(head, checkpointing, args, vlm_config, processor, deadline, left)
            except torch.OutOfMemoryError as e:
                row = {"graph": GRAPHS[head], "framework": FRAMEWORK[head], "head": head,
                       "gradient_checkpointing": checkpointing, "status": f"out of memory: {str(e).splitlines()[0]}"}
            results.append(row)
            print(json.dumps(row), flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    import transformers

    result = {
        "bench": "bench/gpu_throughput.py", "config": args.config, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "budget_s": args.budget,
        "precision": "fp32 masters + bf16 autocast" if args.fp32_masters else "bf16 VLM parameters + bf16 autocast",
        "tokenizer": tokenizer, "tokenizer_kind": tokenizer.split(":")[0].split(" (")[0],
        "results": results, "anchor": ANCHOR,
        "stopped_early": any(r["status"] not in ("ok", "non-finite loss") for r in results),
        "wall_s": round(time.perf_counter() - start, 1),
        "peak_rss_gib": gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    md = table(result)
    print(md)
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "gpu_throughput.json", json.dumps(result, indent=2) + "\n")
        write_text_atomic(args.out / "gpu_throughput.md", md)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
