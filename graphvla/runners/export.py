"""Export a trained policy as a frozen inference graph: `export_policy(RUN, DIR, fmt)`.

What is exported is the checkpoint's inference graph run as Policy runs it, between the
checkpoint's own processing pipelines (compiler/pipelines.py, processors/): the preprocess
pipeline's tensor steps (normalization) and the postprocess pipeline (un-normalization) are folded
into the graph, called as they are, so the graph takes the raw state and returns actions in dataset
units and a runtime needs no statistics. Two formats:
- `torch-export`: a `torch.export` ExportedProgram (`policy.pt2`, `torch.export.load`);
- `onnx`: the same program through torch.onnx's dynamo exporter (`policy.onnx`, onnxruntime).

What stays in Python, before the graph (runners/exported.py does it when serving):
- checking each observation value (policy/observation.py, as for the checkpoint) and turning
  uint8 frames into float [V, C, H, W] in [0, 1] (data/images.py), then stacking the batch;
- the preprocess pipeline's other steps, in their order (`Pipeline.split_for_export`): the blocks'
  tokenizers and processors (encoder.text's byte tokens, glue.state_text's prompts, a
  backbone.hf_vlm's chat template and processor), and any tensor step one of them reads. They are
  saved in the folder as a pipeline (`preprocess.json` plus `preprocess/<i>-<kind>/` asset folders:
  a VLM's processor files), which loads without the training code. What they make
  (`language.ids`, `vlm.input_ids`, `vlm.pixel_values`, ...) are graph inputs named by their
  batch keys; a token axis is dynamic up to the tokenizer's length (a VLM: its text model's
  context). A backbone.hf_vlm's model is traced for the graph's one declared image size (only
  Qwen3-VL, through blocks/backbones/hf_vlm_export.py);
- text a block takes itself (backbone.world_model) is tokenized into byte ids by the manifest's
  `tokenizers` (the 256 UTF-8 byte values + 1; 0 pads).

The folder holds `graphvla-export.json` (the manifest: format, graph file and its sha256, the
graph inputs in order with dtype and shape, the Python steps and the folded ones, the tokenizers,
the outputs, the metadata the server publishes, the `serve:` section and the source checkpoint's
fingerprint), the graph file, the Python steps' pipeline and the checkpoint's spec.yaml,
graph.json and normalization.json (for reference: the graph already applies the statistics). It is
written under a temporary name and renamed into place, so a failed export leaves no half-written
folder.

A sampling head (head.flow_matching, head.dual_system) takes its starting noise as an input of
predict; in the exported graph that is the graph input `noise` [batch, H, A], which the server draws
from each session's generator as Policy does (runners/exported.py). The Euler loop is unrolled
(with.num_steps steps). head.layerwise_discrete_diffusion's `noise` holds its decoding draws (the
manifest's `distribution` says which kind) and its rounds are unrolled; real-time chunking is not
part of an export.

A graph is refused, before anything is written, with an ExportError naming the graph, the block
id, its type and why, when a block keeps state between calls (`infer: {every: k}`), draws noise
inside predict (a `generator` argument: a generator per session, which an exported graph cannot
hold), several blocks sample, decodes autoregressively (FAST, or a VLM with action tokens), is a
VLM other than Qwen3-VL (export_vlm.refusal), takes text it cannot tokenize outside the graph,
makes text inside the graph, or has a postprocess step that is not a tensor step; a block
torch.export fails on is named the same way."""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import sys
import uuid
import warnings
from pathlib import Path

import torch
from torch import fx, nn

from ..blocks.base import Block
from ..blocks.encoders import byte_tokenize
from ..blocks.heads.noise import NORMAL
from ..compiler.lower import graph_argument
from ..processors.base import Pipeline
from .export_vlm import VLM_TYPE, TensorVLM, onnx_refusal, refusal, vlm_exports
from ..policy.loading import load_policy
from ..policy.plain_data import plain_data
from ..policy.checkpoint import resolve_checkpoint

FORMATS = {"torch-export": "policy.pt2", "onnx": "policy.onnx"}
MANIFEST = "graphvla-export.json"
MANIFEST_FORMAT = "graphvla-export"
MANIFEST_VERSION = 2  # 2: the processor steps run before the graph are saved as a pipeline
EXAMPLE_BATCH = 2
EXAMPLE_TEXTS = ("pick up the red block and place it", "open")  # two lengths: the token axis stays dynamic

# Block types an exported graph cannot hold, and why (checked before tracing).
NOT_EXPORTABLE = {
    "head.fast": "it decodes action tokens autoregressively until an end token (a data-dependent loop)",
}
SAMPLING_REASON = ("it draws sampling noise inside predict (a generator argument), which an export cannot take as "
                   "an input (a sampling head takes `noise`)")


class ExportError(ValueError):
    """A graph (or one of its blocks) that cannot be exported; the message names graph, block, type, why."""


def block_error(cg, bid: str, why: str) -> ExportError:
    kind = cg.block(bid).type_name
    return ExportError(f"graph '{cg.name}': block '{bid}' ({kind}) cannot be exported: {why}")


# --- what the exported graph takes ------------------------------------------------------------

# Block types that turn their text into byte ids with blocks/encoders.byte_tokenize (which passes
# ids through), and the `with:` key of their longest kept instruction.
BYTE_TEXT = {"encoder.text": "max_length", "backbone.world_model": "max_text"}
PYTHON_STEPS = "preprocess"  # the saved pipeline of the processor steps run before the graph
NOISE = "noise"  # the graph input that holds a sampling head's starting noise (its predict argument)


def text_tokenizers(cg, inputs: dict) -> dict:
    """{text port: tokenizer description} for the manifest; ExportError when a text port feeds a
    block that cannot take token ids, or blocks that tokenize differently. Only text the graph
    takes itself is here: what a processor step reads is tokenized by that step."""
    out = {}
    arguments = {n.target for n in cg.infer.graph.nodes if n.op == "placeholder"}
    for port, decl in inputs.items():
        if decl["kind"] != "text" or port not in arguments:
            continue  # a processor step tokenizes it (preprocess, run before the graph)
        found = {}
        for bid in cg.input_consumers(port):
            kind = cg.block(bid).type_name
            if kind not in BYTE_TEXT:
                raise block_error(cg, bid, f"it takes the text input '{port}' itself; an exported graph takes token "
                                           f"ids, made in Python by the blocks' processor steps, or as byte ids for "
                                           f"{', '.join(BYTE_TEXT)}")
            found[bid] = {"tokenizer": "bytes", "max_length": int(cg.model[bid].params[BYTE_TEXT[kind]])}
        if len({v["max_length"] for v in found.values()}) > 1:
            lengths = ", ".join(f"{b}: {v['max_length']} bytes" for b, v in found.items())
            raise ExportError(f"graph '{cg.name}': text input '{port}' feeds blocks that keep different lengths "
                              f"({lengths}); one tensor of token ids cannot serve both")
        if found:
            out[port] = {**next(iter(found.values())), "blocks": sorted(found)}
    return out


def sampling_block(cg) -> str | None:
    """The one block that samples (takes `noise` in predict), or None; ExportError for several, or
    for a block that draws its noise itself (a `generator` argument)."""
    for bid in cg.infer_block_ids():
        if "generator" in cg.block(bid).predict_kwargs:
            raise block_error(cg, bid, SAMPLING_REASON)
    found = [b for b in cg.infer_block_ids() if "noise" in cg.block(b).predict_kwargs]
    if len(found) > 1:
        raise ExportError(f"graph '{cg.name}': blocks {', '.join(found)} all sample; an export takes the noise of "
                          "one block as its input")
    for bid in found:
        if not callable(getattr(cg.model[bid], "draw_noise", None)):
            raise block_error(cg, bid, "it takes `noise` but does not say how it is drawn (draw_noise, "
                                       "blocks/heads/noise.SamplingHead)")
    return found[0] if found else None


def check_blocks(cg) -> None:
    """Refuse what an exported graph cannot hold (module docstring), naming the block."""
    for bid in cg.infer_block_ids():
        node = cg.block(bid)
        cls = node.cls
        if node.every > 1:
            raise block_error(cg, bid, f"infer.every={node.every} keeps its outputs between calls for each "
                                       "session; an exported graph is stateless")
        if cls.type_name in NOT_EXPORTABLE:
            raise block_error(cg, bid, NOT_EXPORTABLE[cls.type_name])
        why = refusal(cg, bid) if cls.type_name == VLM_TYPE else None
        if why is not None:
            raise block_error(cg, bid, why)
        for port, spec in cls.out_ports.items():
            if spec.kind == "text" and cg.port_consumers(bid, port):
                raise block_error(cg, bid, f"it makes text ('{port}') inside the graph; strings cannot pass "
                                           "through torch.export")


def tensor_graph(cg, vlms: dict) -> fx.GraphModule:
    """cg.infer with each backbone.hf_vlm's model traced on its processor step's tensors (same
    weights, same fx code); the sampling head's `noise` is already a graph input."""
    vlm_owners = {cg.block(bid).owner: vlm for bid, vlm in vlms.items()}
    root = nn.Module()
    for name, module in cg.infer.named_children():
        if name in vlm_owners:
            module = vlm_owners[name].module()
        root.add_module(name, module)
    return fx.GraphModule(root, copy.deepcopy(cg.infer.graph), class_name=type(cg.infer).__name__ + "Tensors")


class FoldedPolicy(nn.Module):
    """The exported function: graph inputs in `names` order (batch keys: raw state, float images,
    what the Python steps made such as token ids, a VLM's processor tensors, noise) -> the outputs
    in `outputs` order. It runs the folded preprocess steps (normalization), the inference graph and
    the postprocess steps (un-normalization): the checkpoint's own steps, called as Policy calls
    them. `fixed`: graph arguments the traced blocks ignore (a VLM's image grid), passed as None."""

    def __init__(self, graph: fx.GraphModule, names: list, outputs: list, preprocess: list, postprocess: list,
                 fixed=()):
        super().__init__()
        self.inner, self.names, self.outputs = graph, list(names), list(outputs)
        self.preprocess, self.postprocess = Pipeline("folded-preprocess", preprocess), Pipeline("postprocess", postprocess)
        self.fixed = [graph_argument(k) for k in fixed]
        self.arguments = {n.target for n in graph.graph.nodes if n.op == "placeholder"}

    def forward(self, *tensors):
        batch = self.preprocess(dict(zip(self.names, tensors)))
        args = {graph_argument(k): v for k, v in batch.items() if graph_argument(k) in self.arguments}
        result = self.inner(**args, **{name: None for name in self.fixed})
        result = self.postprocess(dict(result))
        return tuple(result[name] for name in self.outputs)


def _example_port(port, decl, texts):
    """An example batch value of one graph input port (random, the declared shape)."""
    if decl["kind"] == "text":
        return list(texts)
    shape = _port_shape(decl)
    dtype = {"mask": torch.bool, "tokens": torch.int64}.get(decl["kind"], torch.float32)
    if dtype == torch.float32:
        return torch.rand(len(texts), *shape)
    return torch.zeros(len(texts), *shape, dtype=dtype)


def _varying_axes(python: Pipeline, raw: dict, other: dict) -> dict:
    """{key: axes whose length depends on the batch's contents} of the Python steps' tensors
    (token axes: the longest instruction sets them), found by running them on two batches."""
    a, b = python(dict(raw)), python(dict(other))
    out = {}
    for key, value in a.items():
        if isinstance(value, torch.Tensor) and isinstance(b.get(key), torch.Tensor):
            out[key] = [i for i in range(1, value.dim()) if value.shape[i] != b[key].shape[i]]
    return out


def folded_policy(policy, tokenizers: dict, sampler: str | None, vlms: dict, python: list, folded: list):
    """(module, example inputs, input descriptions) for `policy`: the graph takes what the Python
    steps `python` leave in the batch that the folded steps or the inference graph read."""
    cg = policy.cg
    arguments = {n.target for n in cg.infer.graph.nodes if n.op == "placeholder"}
    steps = Pipeline("preprocess", python)
    raw = {port: _example_port(port, decl, EXAMPLE_TEXTS) for port, decl in policy.inputs.items()}
    batch = steps(dict(raw))
    short = {port: _example_port(port, decl, ("x", "o")) for port, decl in policy.inputs.items()}
    varying = _varying_axes(steps, raw, short)
    folded_reads = {k for step in folded for k in step.reads}
    folded_writes = {k for step in folded for k in step.writes} - folded_reads
    vlm_keys = {k: vlm for vlm in vlms.values() for k in vlm.keys()}
    fixed = [k for k in batch if k.split(".", 1)[0] in vlms and k not in vlm_keys]  # fixed by the static grid
    names, example, described = [], [], []
    for key, value in batch.items():
        wanted = key in folded_reads or (graph_argument(key) in arguments and key not in folded_writes)
        if not wanted or key == NOISE or key in fixed:
            continue
        if key in policy.inputs and policy.inputs[key]["kind"] == "text":  # a block takes the text itself
            t = tokenizers[key]
            names.append(key)
            example.append(byte_tokenize(list(value), t["max_length"], "cpu"))
            described.append({"name": key, "port": key, "kind": "text", "dtype": "int64",
                              "shape": ["batch", "tokens"], "tokenizer": key})
            continue
        if not isinstance(value, torch.Tensor):
            raise ExportError(f"graph '{cg.name}': the graph input '{key}' is made as {type(value).__name__} by the "
                              "processor steps; an exported graph takes tensors")
        names.append(key)
        example.append(value)
        about = {"name": key, "kind": policy.inputs[key]["kind"] if key in policy.inputs else "step",
                 "dtype": str(value.dtype).split(".")[-1],
                 "shape": ["batch", *[("tokens" if i in varying.get(key, ()) else int(n))
                                      for i, n in enumerate(value.shape) if i > 0]]}
        if key in policy.inputs:
            about["port"] = key
        else:
            step = next(s for s in python if key in s.writes)
            about["step"] = step.block
            text = [k for k in step.reads if policy.inputs.get(k, {}).get("kind") == "text"]
            if varying.get(key):  # a token axis: at most the tokenizer's (or the VLM's context) length
                about["max_length"] = vlm_keys[key].max_tokens if key in vlm_keys else \
                    int(getattr(step, "max_length", 1 << 16))
                if text:
                    about["text"] = text[0]
        described.append(about)
    if sampler is not None:
        head = cg.model[cg.block(sampler).owner]
        shape = list(head.noise_shape(EXAMPLE_BATCH)[1:])
        names.append(NOISE)
        example.append(torch.randn(EXAMPLE_BATCH, *shape))
        described.append({"name": NOISE, "kind": "noise", "dtype": "float32", "shape": ["batch", *shape],
                          "block": sampler,
                          "num_steps": int(head.params["num_steps"] if "num_steps" in head.params else head.sampling_steps)})
        if head.noise_distribution != NORMAL:  # not standard normal: the head's own draws (blocks/heads/noise.py)
            described[-1]["distribution"] = head.noise_distribution
    post = list(policy.postprocess or [])
    for step in post:
        if not step.tensor_only:
            raise ExportError(f"graph '{cg.name}': the postprocess step {step.describe()} runs Python after the "
                              "graph; an exported graph folds only tensor steps")
    module = FoldedPolicy(tensor_graph(cg, vlms), names, policy.outputs, folded, post, fixed).eval()
    return module, example, described


def _port_shape(decl) -> list:
    from ..policy.observation import expected_shape

    return [int(x) for x in expected_shape(decl)]


def dynamic_shapes(described: list, tokenizers: dict):
    """The batch axis of every input, and the token axis of token ids (and of a VLM's attention
    mask, which has its ids' length), stay dynamic. The token axes are Dim.DYNAMIC within the
    tokenizer's range: a named Dim's range check cannot prove guards that hold for every length,
    e.g. min(L + 9, 4 * (L + 9)) == L + 9 from head.query_transformer's attention over a VLM's tokens."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    shapes = []
    for d in described:
        axes = {0: batch}
        if d["kind"] in ("text", "text_mask"):
            axes[1] = Dim.DYNAMIC(min=1, max=int(tokenizers[d["port"]]["max_length"]))
        for i, n in enumerate(d["shape"][1:], start=1):  # a processor step's token axes
            if n == "tokens" and i not in axes:
                axes[i] = Dim.DYNAMIC(min=1, max=int(d.get("max_length", 1 << 16)))
        shapes.append(axes)
    return (tuple(shapes),)  # one entry: forward's *tensors


# --- tracing and writing ------------------------------------------------------------------------

def _blamed_block(cg, tb):
    """The id of the innermost graphvla block in a traceback (the block torch.export failed in)."""
    modules = {id(m): bid for bid, m in cg.model.items()}
    found = None
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, Block) and id(owner) in modules:
            found = modules[id(owner)]
        elif isinstance(owner, TensorVLM):
            found = owner.block_id
        tb = tb.tb_next
    return found


def trace(cg, module, example, described, tokenizers):
    """torch.export.export of the folded module; a failure names the block it happened in."""
    try:
        with torch.no_grad():
            return torch.export.export(module, tuple(example), dynamic_shapes=dynamic_shapes(described, tokenizers),
                                       strict=False)
    except Exception as e:  # reported in the user's terms below
        bid = _blamed_block(cg, sys.exc_info()[2])
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        why = f"torch.export failed: {type(e).__name__}: {first}"
        if bid is not None:
            raise block_error(cg, bid, why) from e
        raise ExportError(f"graph '{cg.name}' cannot be exported: {why}") from e


def write_onnx(program, described, outputs, path: Path) -> None:
    """The traced program through torch.onnx's dynamo exporter (the dynamic axes carry over)."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError:
        raise ExportError("--format onnx needs the onnx and onnxscript packages: pip install 'graphvla[export]'") from None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # axis-renaming notes of the exporter
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notes
        torch.onnx.export(program, (), str(path), dynamo=True, external_data=False,
                          input_names=[d["name"] for d in described], output_names=list(outputs), verbose=False)


def export_policy(run, out_dir, fmt: str = "torch-export") -> Path:
    """Export RUN (a run folder or a checkpoint) to the folder `out_dir` (module docstring).
    Returns the folder. Refuses an existing non-empty folder, an unknown format, and graphs that
    cannot be exported (ExportError), writing nothing."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; choose a new output folder")
    ckpt = resolve_checkpoint(run)
    policy = load_policy(ckpt)
    cg = policy.cg
    check_blocks(cg)
    vlms = vlm_exports(cg)
    for bid in vlms if fmt == "onnx" else ():
        why = onnx_refusal(cg, bid)
        if why is not None:
            raise block_error(cg, bid, why)
    tokenizers = text_tokenizers(cg, policy.inputs)
    sampler = sampling_block(cg)
    python, folded = (list(part) for part in policy.preprocess.split_for_export())
    module, example, described = folded_policy(policy, tokenizers, sampler, vlms, python, folded)
    for name in policy.outputs:
        if not isinstance(module(*example)[policy.outputs.index(name)], torch.Tensor):
            raise ExportError(f"graph '{cg.name}': output '{name}' is not a tensor; an exported graph returns tensors")
    program = trace(cg, module, example, described, tokenizers)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        graph_file = tmp / FORMATS[fmt]
        if fmt == "torch-export":
            torch.export.save(program, str(graph_file))
        else:
            write_onnx(program, described, policy.outputs, graph_file)
        for name in ("spec.yaml", "graph.json", "normalization.json"):
            if (ckpt / name).is_file():
                shutil.copy2(ckpt / name, tmp / name)
        if python:  # the steps the server runs before the graph, with their files
            Pipeline(PYTHON_STEPS, python).save(tmp)
        manifest = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "graph_format": fmt, "graph_file": graph_file.name,
            "graph_sha256": hashlib.sha256(graph_file.read_bytes()).hexdigest(),
            "inputs": described, "tokenizers": tokenizers, "outputs": list(policy.outputs),
            "preprocess": {"file": f"{PYTHON_STEPS}.json" if python else None,
                           "steps": [step.describe() for step in python],
                           "folded": [step.describe() for step in folded]},
            "postprocess": {"folded": [step.describe() for step in policy.postprocess or []]},
            "metadata": plain_data(policy.metadata, for_json=True),
            "serve": plain_data(dict(cg.spec.section("serve") or {}), for_json=True),
            "source": {"checkpoint": str(ckpt.resolve()), "fingerprint": cg.fingerprint, "torch": torch.__version__},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_export_folder(path) -> bool:
    """Whether `path` is a folder written by export_policy (it holds the manifest)."""
    return (Path(path) / MANIFEST).is_file()
