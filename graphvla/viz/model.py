"""What a picture of a compiled graph shows, as plain data every renderer reads: nodes (inputs,
blocks, losses, outputs) and edges with their meta-tensor shapes, which parts exist only in
training, and which form the inference graph."""
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
}
INFERENCE_COLOUR = "#1f6feb"


@dataclass
class VizNode:
    id: str  # a safe identifier for every format
    name: str  # what the user calls it: 'head', 'inputs.images', 'loss.action'
    role: str  # input | block | loss | output
    title: str
    lines: list  # label lines under the title
    state: str  # key of COLOURS
    train_only: bool = False
    inference: bool = False
    details: dict = field(default_factory=dict)  # shown on hover in .html


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
    return VizGraph(cg.name, cg.fingerprint, nodes, edges)


def _shape_of(cg, node) -> str:
    shape = cg.shapes.get((node, None))
    return " " + fmt_shape(shape) if shape is not None else ""
