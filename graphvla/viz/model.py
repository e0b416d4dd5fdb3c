"""What a picture of a compiled graph shows, as plain data every renderer reads: nodes (inputs,
blocks, losses, outputs) and edges with their meta-tensor shapes, which parts exist only in
training, which form the inference graph, and the processing pipelines' steps (role 'step':
`preprocess` before the inputs' consumers, `postprocess` after the outputs), drawn apart from
the graph's own nodes (their ids start with 'p_', not 'n_')."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..compiler import dag as D
from ..compiler.summary import fmt_count, fmt_shape

# Fill colours by state; renderers share them so .dot, .svg, .html and .mmd read the same.
COLOURS = {
    "input": "#fff4cc",
    "trainable": "#d4edda",
    "frozen": "#dcdcdc",
    "shared": "#d6e9f8",
    "loss": "#fde2cf",
    "output": "#ffffff",
    "step": "#ede3f7",
}
INFERENCE_COLOUR = "#1f6feb"


@dataclass
class VizNode:
    id: str  # a safe identifier for every format
    name: str  # what the user calls it: 'head', 'inputs.images', 'loss.action'
    role: str  # input | block | loss | output | step
    title: str
    lines: list  # label lines under the title
    state: str  # key of COLOURS
    train_only: bool = False
    inference: bool = False
    details: dict = field(default_factory=dict)  # shown on hover in .html
    pipeline: str = ""  # a step's pipeline: preprocess | postprocess


@dataclass
class VizEdge:
    src: str
    dst: str
    label: str  # the shape, e.g. [B, 8, 4]
    kind: str
    train_only: bool = False
    inference: bool = False


@dataclass
class VizGraph:
    name: str
    fingerprint: str
    nodes: list
    edges: list


def safe_id(name: str) -> str:
    return "n_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _key_params(params: dict, limit: int = 4) -> str:
    """A few `with:` values that say what the block is (scalars only, in spec order)."""
    items = [f"{k}={v}" for k, v in params.items()
             if isinstance(v, (int, float, bool)) or (isinstance(v, str) and len(v) <= 24)]
    more = " ..." if len(items) > limit else ""
    return " ".join(items[:limit]) + more


def view(cg) -> VizGraph:
    """Build the picture's data from a CompiledGraph (compile with device='meta')."""
    g = cg.dag
    counts = cg.param_counts()
    infer_blocks = set(D.infer_blocks(g))
    infer_edges = set()
    for bid in infer_blocks:
        for port, src, _, _ in D.in_edges(g, bid, inference=True):
            infer_edges.add((src, bid, port))
    for node, data in g.nodes(data=True):
        if data["role"] == "output":
            for src, _, e in g.in_edges(node, data=True):
                infer_edges.add((src, node, e["dst_port"]))
    infer_nodes = {n for n, _, _ in infer_edges} | {d for _, d, _ in infer_edges}
    used = set(D.used_blocks(g))

    nodes = []
    for node, data in g.nodes(data=True):
        role = data["role"]
        if role == "block" and node not in used:
            continue  # unused blocks are not built (a warning says so)
        if role == "input":
            decl = {k: v for k, v in data["decl"].items() if k not in ("kind", "description")}
            nodes.append(VizNode(safe_id(node), node, role, node, [data["kind"] + _shape_of(cg, node)], "input",
                                 train_only=data["train_only"], inference=node in infer_nodes,
                                 details={"input": data["name"], "kind": data["kind"], **decl}))
        elif role == "block":
            owner = data["owner"]
            total, trainable = counts.get(owner, (0, 0))
            if owner != node:
                state, count_line = "shared", f"shares {owner}"
            elif data["train"].get("freeze") or (total and not trainable):
                state, count_line = "frozen", f"{fmt_count(total)} params, frozen"
            else:
                state, count_line = "trainable", f"{fmt_count(total)} params"
            lines = [data["type"]]
            key = _key_params(cg.spec.blocks.get(owner, {}).get("with") or {})
            if key:
                lines.append(key)
            if data.get("every", 1) > 1:
                lines.append(f"infer every {data['every']} calls")
            lines.append(count_line)
            details = {
                "block": node, "type": data["type"], "with": data["params"], "train": data["train"],
                "parameters": total, "trainable": trainable,
                "inputs": {e["dst_port"]: f"{e['ref']} {fmt_shape(cg.shapes.get((u, e['src_port'])))}" for u, _, e in g.in_edges(node, data=True)},
                "outputs": {p: fmt_shape(cg.shapes.get((node, p))) for p in data["out_ports"] if (node, p) in cg.shapes},
            }
            if owner != node:
                details["shares"] = owner
            if data.get("every", 1) > 1:
                details["infer_every"] = data["every"]
            nodes.append(VizNode(safe_id(node), node, role, node, lines, state,
                                 train_only=node not in infer_blocks, inference=node in infer_blocks, details=details))
        elif role == "loss":
            lines = [f"weight {data['weight']:g}"] + ([f"stream {data['stream']}"] if data["stream"] != "action" else [])
            nodes.append(VizNode(safe_id(node), node, role, f"loss {data['name']}", lines, "loss", train_only=True,
                                 details={"loss": data["name"], "weight": data["weight"], "stream": data["stream"]}))
        elif role == "output":
            nodes.append(VizNode(safe_id(node), node, role, f"output {data['name']}", [], "output", inference=True,
                                 details={"output": data["name"]}))

    shown = {n.name for n in nodes}
    edges = []
    for u, v, e in g.edges(data=True):
        if u not in shown or v not in shown:
            continue
        train_only = e["train_only"] or g.nodes[v]["role"] == "loss" or (u, v, e["dst_port"]) not in infer_edges
        shape = cg.shapes.get((u, e["src_port"]))
        label = "scalar" if shape == () else fmt_shape(shape)
        if g.nodes[v]["role"] == "block":
            label = f"{e['dst_port']} {label}" if label != "-" else e["dst_port"]
        edges.append(VizEdge(safe_id(u), safe_id(v), label, e["kind"], train_only=train_only,
                             inference=(u, v, e["dst_port"]) in infer_edges))
    step_nodes, step_edges = _pipeline_parts(cg, {n.name: n for n in nodes})
    return VizGraph(cg.name, cg.fingerprint, nodes + step_nodes, edges + step_edges)


def _pipeline_parts(cg, shown: dict) -> tuple[list, list]:
    """A node per pipeline step, with edges from the graph inputs it reads (preprocess) or the
    outputs it reads (postprocess), and to the block whose BLOCK.PORT inputs it makes."""
    nodes, edges = [], []
    for pipeline in (cg.preprocess, cg.postprocess):
        for i, step in enumerate(pipeline):
            sid = f"p_{pipeline.name}_{i}"
            what = step.describe().split("  ", 1)
            prefix = D.INPUT_PREFIX if pipeline.name == "preprocess" else D.OUTPUT_PREFIX
            sources = [shown[prefix + key] for key in step.reads if prefix + key in shown]
            train_only = bool(sources) and all(n.train_only for n in sources)
            nodes.append(VizNode(safe_id(sid)[2:], f"{pipeline.name}[{i}]", "step",
                                 f"{step.block}: {step.kind}" if step.block else step.kind,
                                 [what[1].strip()] if len(what) > 1 else [], "step", train_only=train_only,
                                 details={"pipeline": pipeline.name, "index": i, "kind": step.kind,
                                          "block": step.block, "reads": list(step.reads), "writes": list(step.writes),
                                          "tensor_only": step.tensor_only}, pipeline=pipeline.name))
            for src in sources:
                edges.append(VizEdge(src.id, nodes[-1].id, src.name[len(prefix):], "step", train_only=src.train_only))
            for key in step.writes:
                block, _, port = key.partition(".")
                if port and block in shown and shown[block].role == "block":
                    edges.append(VizEdge(nodes[-1].id, shown[block].id, port, "step", train_only=train_only))
    return nodes, edges


def _shape_of(cg, node) -> str:
    shape = cg.shapes.get((node, None))
    return " " + fmt_shape(shape) if shape is not None else ""
