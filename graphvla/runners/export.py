"""Export a trained policy as a frozen inference graph: `export_policy(RUN, DIR, fmt)`.

What is exported is the checkpoint's inference graph with the normalization folded in: the graph
takes the raw state (it normalizes it itself) and returns un-normalized actions, so a runtime
needs no statistics. Two formats:
- `torch-export`: a `torch.export` ExportedProgram (`policy.pt2`, `torch.export.load`);
- `onnx`: the same program through torch.onnx's dynamo exporter (`policy.onnx`, onnxruntime).

What stays in Python, before the graph (runners/exported.py does it when serving):
- checking each observation value (runners/observation.py, as for the checkpoint) and turning
  uint8 frames into float [V, C, H, W] in [0, 1] (data/images.py), then stacking the batch;
- tokenization: strings cannot pass through torch.export, so each text port becomes a tensor
  input `PORT` of token ids [B, L] (int64, 0 = padding, L <= the encoder's max_length), made by the
  tokenizer named in the manifest. encoder.text's byte-level tokenizer has no files: its
  vocabulary is the 256 UTF-8 byte values + 1 (0 pads);
- a backbone.hf_vlm's processor (chat template, tokenization, image resizing and patching;
  runners/export_vlm.py): its images and instruction become the graph inputs `BLOCK.pixel_values`,
  `BLOCK.input_ids` and `BLOCK.attention_mask`, and its files are saved in the folder
  (`processor-BLOCK/`, the manifest's `processors` section). Only Qwen3-VL is traced, through
  blocks/backbones/hf_vlm_export.py, for the graph's one declared image size.

The folder holds `graphvla-export.json` (the manifest: format, graph file and its sha256, the
graph inputs in order with dtype and shape, the tokenizers, the outputs, the metadata the server
publishes, the `serve:` section and the source checkpoint's fingerprint), the graph file, the
VLMs' processor folders and the checkpoint's spec.yaml, graph.json and normalization.json (for
reference: the graph already applies the statistics). It is written under a temporary name and
renamed into place, so a failed export leaves no half-written folder.

A graph is refused, before anything is written, with an ExportError naming the graph, the block
id, its type and why, when a block keeps state between calls (`infer: {every: k}`), draws noise
inside predict (flow matching, dual system: a generator per session, which an exported graph
cannot hold), decodes autoregressively (FAST, or a VLM with action tokens), is a VLM other than
Qwen3-VL (export_vlm.refusal), takes text it cannot tokenize outside the graph, or makes text
inside the graph; a block torch.export fails on is named the same way."""
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
from torch.overrides import TorchFunctionMode

from ..blocks.base import Block
from ..blocks.encoders import byte_tokenize
from ..blocks.heads.flow_matching import FlowHead
from ..compiler import dag as D
from .export_vlm import VLM_TYPE, ProcessorInputVLM, onnx_refusal, refusal, vlm_exports
from ..policy.loading import load_policy
from ..policy.plain_data import plain_data
from ..policy.checkpoint import resolve_checkpoint

FORMATS = {"torch-export": "policy.pt2", "onnx": "policy.onnx"}
MANIFEST = "graphvla-export.json"
MANIFEST_FORMAT = "graphvla-export"
MANIFEST_VERSION = 1
EXAMPLE_BATCH = 2
EXAMPLE_TEXTS = ("pick up the red block and place it", "open")  # two lengths: the token axis stays dynamic

# Block types an exported graph cannot hold, and why (checked before tracing).
NOT_EXPORTABLE = {
    "head.fast": "it decodes action tokens autoregressively until an end token (a data-dependent loop)",
}
SAMPLING_REASON = "it draws sampling noise in a way an export cannot take as an input (only flow heads can)"


class ExportError(ValueError):
    """A graph (or one of its blocks) that cannot be exported; the message names graph, block, type, why."""


def block_error(cg, bid: str, why: str) -> ExportError:
    kind = cg.dag.nodes[bid]["cls"].type_name
    return ExportError(f"graph '{cg.name}': block '{bid}' ({kind}) cannot be exported: {why}")


# --- what the exported graph takes ------------------------------------------------------------

# Block types that turn their text into byte ids with blocks/encoders.byte_tokenize (which passes
# ids through), and the `with:` key of their longest kept instruction.
BYTE_TEXT = {"encoder.text": "max_length", "backbone.world_model": "max_text"}
NOISE = "noise"  # the graph input that holds a sampling head's starting noise


def text_tokenizers(cg, inputs: dict, vlms: dict) -> dict:
    """{text port: tokenizer description} for the manifest; ExportError when a text port feeds a
    block that cannot take token ids, or blocks that tokenize differently. A backbone.hf_vlm's
    text is tokenized by its processor (`vlms`, runners/export_vlm.py)."""
    out = {}
    infer = set(D.infer_blocks(cg.dag))
    for port, decl in inputs.items():
        if decl["kind"] != "text":
            continue
        found = {}
        for _, bid in cg.dag.out_edges(D.INPUT_PREFIX + port):
            if bid not in infer:
                continue
            kind = cg.dag.nodes[bid]["cls"].type_name
            if bid in vlms:
                found[bid] = vlms[bid].tokenizer()
                continue
            if kind not in BYTE_TEXT:
                raise block_error(cg, bid, f"it takes the text input '{port}' itself; an exported graph takes token "
                                           f"ids, made in Python only for {', '.join(BYTE_TEXT)} (byte ids) and "
                                           f"{VLM_TYPE} (its processor)")
            found[bid] = {"tokenizer": "bytes", "max_length": int(cg.model[bid].params[BYTE_TEXT[kind]])}
        if len({v["max_length"] for v in found.values()}) > 1:
            lengths = ", ".join(f"{b}: {v['max_length']} bytes" for b, v in found.items())
            raise ExportError(f"graph '{cg.name}': text input '{port}' feeds blocks that keep different lengths "
                              f"({lengths}); one tensor of token ids cannot serve both")
        if found:
            out[port] = {**next(iter(found.values())), "blocks": sorted(found)}
    return out


def sampling_block(cg) -> str | None:
    """The one block that samples (draws noise in predict), or None; ExportError for several."""
    found = [b for b in D.infer_blocks(cg.dag) if "generator" in cg.dag.nodes[b]["cls"].predict_kwargs]
    if len(found) > 1:
        raise ExportError(f"graph '{cg.name}': blocks {', '.join(found)} all draw sampling noise; an export takes "
                          "the noise of one block as its input")
    for bid in found:
        if not isinstance(cg.model[bid], FlowHead):
            raise block_error(cg, bid, SAMPLING_REASON)
    return found[0] if found else None


def check_blocks(cg) -> None:
    """Refuse what an exported graph cannot hold (module docstring), naming the block."""
    g = cg.dag
    for bid in D.infer_blocks(g):
        data = g.nodes[bid]
        cls = data["cls"]
        if data.get("every", 1) > 1:
            raise block_error(cg, bid, f"infer.every={data['every']} keeps its outputs between calls for each "
                                       "session; an exported graph is stateless")
        if cls.type_name in NOT_EXPORTABLE:
            raise block_error(cg, bid, NOT_EXPORTABLE[cls.type_name])
        why = refusal(cg, bid) if cls.type_name == VLM_TYPE else None
        if why is not None:
            raise block_error(cg, bid, why)
        for port, spec in cls.out_ports.items():
            if spec.kind == "text" and any(e["src_port"] == port for _, _, e in g.out_edges(bid, data=True)):
                raise block_error(cg, bid, f"it makes text ('{port}') inside the graph; strings cannot pass "
                                           "through torch.export")


class GivenNoise(TorchFunctionMode):
    """Within it, torch.randn (the flow heads' one draw of starting noise, initial_noise) returns
    the graph's noise input instead of drawing; a draw of another shape is an error."""

    def __init__(self, noise: torch.Tensor):
        super().__init__()
        self.noise = noise

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.randn:
            shape = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
            if len(shape) != self.noise.dim() or list(shape[1:]) != list(self.noise.shape[1:]):
                raise RuntimeError(f"the head drew noise of shape {list(shape)}, not the noise input's "
                                   f"{['batch', *self.noise.shape[1:]]}")
            return self.noise.to(kwargs.get("dtype") or self.noise.dtype)
        return func(*args, **kwargs)


class NoiseInputHead(nn.Module):
    """A flow head whose starting noise is a graph input: the graph's `generator` argument carries
    the noise tensor here (the head's predict draws it with torch.randn, which GivenNoise answers).
    The Euler loop runs with.num_steps steps, unrolled by torch.export."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def predict(self, generator=None, num_steps=None, **ports):
        with GivenNoise(generator):
            return self.head.predict(**ports)


def tensor_graph(cg, sampler: str | None, vlms: dict) -> fx.GraphModule:
    """cg.infer with the sampling head (if any) taking its noise as an input and each
    backbone.hf_vlm its processor's tensors (same weights, same fx code)."""
    owner = cg.dag.nodes[sampler]["owner"] if sampler else None
    vlm_owners = {cg.dag.nodes[bid]["owner"]: vlm for bid, vlm in vlms.items()}
    root = nn.Module()
    for name, module in cg.infer.named_children():
        if name in vlm_owners:
            module = vlm_owners[name].module()
        elif name == owner:
            module = NoiseInputHead(module)
        root.add_module(name, module)
    return fx.GraphModule(root, copy.deepcopy(cg.infer.graph), class_name=type(cg.infer).__name__ + "Tensors")


class FoldedPolicy(nn.Module):
    """The exported function: graph inputs in `names` order (raw state, float images, token ids,
    a VLM's processor tensors, noise) -> the outputs in `outputs` order, with the saved
    normalization applied in and out. `packed` maps a port to the graph inputs that stand for it,
    {argument: input name}: a backbone.hf_vlm's images are {pixel_values}, its text
    {input_ids, attention_mask}."""

    def __init__(self, graph: fx.GraphModule, names: list, outputs: list, norm_in: dict, norm_out: dict,
                 packed: dict | None = None):
        super().__init__()
        self.inner, self.names, self.outputs = graph, list(names), list(outputs)
        self.packed = dict(packed or {})
        self.norm_in, self.norm_out = list(norm_in), list(norm_out)
        for port, (shift, scale) in norm_in.items():
            self.register_buffer(f"in_shift_{port}", shift)
            self.register_buffer(f"in_scale_{port}", scale)
        for name, (shift, scale) in norm_out.items():
            self.register_buffer(f"out_shift_{name}", shift)
            self.register_buffer(f"out_scale_{name}", scale)

    def forward(self, *tensors):
        batch = dict(zip(self.names, tensors))
        for port in self.norm_in:  # as Normalizer.normalize: (x - shift) / scale
            batch[port] = (batch[port] - getattr(self, f"in_shift_{port}")) / getattr(self, f"in_scale_{port}")
        for port, parts in self.packed.items():
            batch[port] = {arg: batch.pop(name) for arg, name in parts.items()}
        if NOISE in batch:
            batch["generator"] = batch.pop(NOISE)  # NoiseInputHead reads it there
        result = self.inner(**batch)
        outs = []
        for name in self.outputs:
            value = result[name]
            if name in self.norm_out:  # as Normalizer.unnormalize on value.float()
                value = value.float() * getattr(self, f"out_scale_{name}") + getattr(self, f"out_shift_{name}")
            outs.append(value)
        return tuple(outs)


def _shift_scale(normalizer, port, like: torch.Tensor):
    shift, scale = normalizer._torch(port, like)  # the very tensors Normalizer.normalize uses
    return shift.clone(), scale.clone()


def folded_policy(policy, tokenizers: dict, sampler: str | None, vlms: dict) -> tuple[FoldedPolicy, list, list]:
    """(module, example inputs, input descriptions) for `policy`."""
    cg, inputs = policy.cg, policy.inputs
    names, example, described, packed = [], [], [], {}
    made = {bid: vlm.tensors(vlm.block.processor, *vlm.example(EXAMPLE_TEXTS)) for bid, vlm in vlms.items()}
    for port, decl in inputs.items():
        vlm = next((v for v in vlms.values() if port in (v.images, v.text)), None)
        if vlm is not None:  # the processor's tensors stand for the port (runners/export_vlm.py)
            packed[port] = vlm.parts(port)
            about = vlm.described(made[vlm.bid])
            for field, name in packed[port].items():
                names.append(name)
                example.append(made[vlm.bid][field])
                described.append(about[field])
            continue
        names.append(port)
        if decl["kind"] == "text":
            t = tokenizers[port]
            ids = byte_tokenize(list(EXAMPLE_TEXTS), t["max_length"], "cpu")
            example.append(ids)
            described.append({"name": port, "port": port, "kind": "text", "dtype": "int64",
                              "shape": ["batch", "tokens"], "tokenizer": port})
            continue
        shape = _port_shape(decl)
        dtype = {"mask": torch.bool, "tokens": torch.int64}.get(decl["kind"], torch.float32)
        value = (torch.rand(EXAMPLE_BATCH, *shape) if dtype == torch.float32
                 else torch.zeros(EXAMPLE_BATCH, *shape, dtype=dtype))
        example.append(value)
        described.append({"name": port, "port": port, "kind": decl["kind"], "dtype": str(dtype).split(".")[-1],
                          "shape": ["batch", *shape]})
    if sampler is not None:
        head = cg.model[sampler]
        shape = [int(head.horizon), int(head.action_dim)]
        names.append(NOISE)
        example.append(torch.randn(EXAMPLE_BATCH, *shape))
        described.append({"name": NOISE, "kind": "noise", "dtype": "float32", "shape": ["batch", *shape],
                          "block": sampler, "num_steps": int(head.params["num_steps"])})
    norm_in, norm_out = {}, {}
    if policy.normalizer is not None:
        stats = set(getattr(policy.normalizer, "stats", {}))
        for port, value in zip(names, example):
            if port in stats and port in inputs and value.is_floating_point():
                norm_in[port] = _shift_scale(policy.normalizer, port, value)
        for name, port in policy._norm_port.items():
            if port is not None:
                width = int(cg.spec.inputs[port]["dim"])
                norm_out[name] = _shift_scale(policy.normalizer, port, torch.zeros(1, width))
    module = FoldedPolicy(tensor_graph(cg, sampler, vlms), names, policy.outputs, norm_in, norm_out, packed).eval()
    return module, example, described


def _port_shape(decl) -> list:
    from ..policy.observation import expected_shape

    return [int(x) for x in expected_shape(decl)]


def dynamic_shapes(described: list, tokenizers: dict):
    """The batch axis of every input, and the token axis of token ids (and of a VLM's attention
    mask, which has its ids' length), stay dynamic. The token axes are Dim.DYNAMIC within the
    tokenizer's range: a named Dim's range check cannot prove guards that hold for every length,
    e.g. min(L + 9, 4 * (L + 9)) == L + 9 from head.oft's attention over a VLM's tokens."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    shapes = []
    for d in described:
        axes = {0: batch}
        if d["kind"] in ("text", "text_mask"):
            axes[1] = Dim.DYNAMIC(min=1, max=int(tokenizers[d["port"]]["max_length"]))
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
        elif isinstance(owner, ProcessorInputVLM):
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
    tokenizers = text_tokenizers(cg, policy.inputs, vlms)
    sampler = sampling_block(cg)
    module, example, described = folded_policy(policy, tokenizers, sampler, vlms)
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
        for vlm in vlms.values():
            try:
                vlm.save(tmp, list(EXAMPLE_TEXTS))
            except ValueError as e:
                raise block_error(cg, vlm.bid, str(e)) from e
        manifest = {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "graph_format": fmt, "graph_file": graph_file.name,
            "graph_sha256": hashlib.sha256(graph_file.read_bytes()).hexdigest(),
            "inputs": described, "tokenizers": tokenizers, "outputs": list(policy.outputs),
            "processors": {bid: vlm.manifest() for bid, vlm in vlms.items()},
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
