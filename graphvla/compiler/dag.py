"""Spec -> networkx DAG, with the graph checks that need no weights.

Nodes: 'inputs.NAME' (role input), 'BLOCK' (role block), 'loss.NAME' (role loss),
'output.NAME' (role output). Edges carry the source/destination port and the value's kind.
"""
from __future__ import annotations

import re

import networkx as nx

from ..blocks.base import with_defaults
from ..blocks.registry import registered
from ..errors import IssueList, article, did_you_mean, known_list
from ..spec.schema import INPUT_KINDS, REF

INPUT_PREFIX = "inputs."
OUTPUT_PREFIX = "output."


def build_dag(spec, issues: IssueList | None = None) -> nx.MultiDiGraph:
    """Build the DAG and check it; problems go into `issues` (errors and warnings)."""
    issues = issues if issues is not None else spec.issues()
    data = spec.data
    types = registered(aliases=True)  # an old type name builds the block it was renamed to
    g = nx.MultiDiGraph(name=data.get("name", ""))
    inputs = data.get("inputs") if isinstance(data.get("inputs"), dict) else {}
    blocks = data.get("blocks") if isinstance(data.get("blocks"), dict) else {}
    losses = data.get("losses") if isinstance(data.get("losses"), dict) else {}
    outputs = data.get("outputs") if isinstance(data.get("outputs"), dict) else {}

    for name, decl in inputs.items():
        if isinstance(decl, dict) and decl.get("kind") in INPUT_KINDS:  # a bad kind is reported by the schema
            g.add_node(INPUT_PREFIX + name, role="input", name=name, kind=decl["kind"], decl=decl,
                       train_only=bool(decl.get("train_only")), optional=bool(decl.get("optional")))

    for bid, b in blocks.items():
        if isinstance(b, dict):
            _add_block(g, bid, b, blocks, types, issues)
    for bid, b in blocks.items():
        if bid in g and isinstance(b.get("in", {}), dict):
            _wire_block(g, bid, b.get("in") or {}, inputs, blocks, issues)

    for name, loss in losses.items():
        if isinstance(loss, dict) and isinstance(loss.get("from"), str):
            node = "loss." + name
            weight = loss.get("weight", 1.0)
            g.add_node(node, role="loss", name=name, weight=float(weight) if isinstance(weight, (int, float)) else 1.0,
                       stream=loss.get("stream", "action"))
            _wire_ref(g, node, "value", loss["from"], ("losses", name, "from"), inputs, blocks, issues, want_kind="loss")
    for name, ref in outputs.items():
        if isinstance(ref, str):
            node = OUTPUT_PREFIX + name
            g.add_node(node, role="output", name=name)
            _wire_ref(g, node, "value", ref, ("outputs", name), inputs, blocks, issues, output=True)

    if not _check_cycles(g, issues):
        _check_inference(g, issues)
        _check_training(g, issues)
        _check_unused(g, losses, issues)
    return g


def _add_block(g, bid, b, blocks, types, issues):
    path = ("blocks", bid)
    has_type, has_share = "type" in b, "share" in b
    if has_type == has_share:
        issues.add("a block needs exactly one of 'type' (a registered block) or 'share' (another block's id)", path, block=bid)
        return
    owner, decl = bid, b
    if has_share:
        owner = b["share"]
        target = blocks.get(owner)
        if not isinstance(target, dict) or not isinstance(owner, str):
            issues.add(f"share: no block '{owner}'", path + ("share",), block=bid, hint=did_you_mean(str(owner), blocks) or known_list(blocks))
            return
        if owner == bid:
            issues.add("a block cannot share itself", path + ("share",), block=bid)
            return
        if "share" in target:
            issues.add(f"share: '{owner}' itself shares '{target['share']}'; share '{target['share']}' directly", path + ("share",), block=bid)
            return
        for key in ("with", "train"):
            if key in b:
                issues.add(f"'{key}' is taken from the shared block '{owner}'; remove it here", path + (key,), block=bid)
        decl = target
    type_name = decl.get("type")
    cls = types.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        return  # unknown type: reported by the schema check with a suggestion
    params = with_defaults(cls.params_schema, decl.get("with") if isinstance(decl.get("with"), dict) else {})
    try:
        in_ports, out_ports = cls.ports_for(params)
    except Exception as e:
        issues.add(f"{type_name}: {e}", path + ("with",), block=bid)
        return
    infer = b.get("infer") if isinstance(b.get("infer"), dict) else {}
    every = infer.get("every", 1) if isinstance(infer.get("every", 1), int) else 1
    g.add_node(bid, role="block", type=type_name, cls=cls, params=params, owner=owner,
               train=decl.get("train") or {}, in_ports=in_ports, out_ports=out_ports, every=every)


def _wire_block(g, bid, wiring, inputs, blocks, issues):
    node = g.nodes[bid]
    in_ports = node["in_ports"]
    for port, ref in wiring.items():
        path = ("blocks", bid, "in", port)
        if port not in in_ports:
            issues.add(f"{node['type']} has no input port '{port}'", path, block=bid,
                       hint=did_you_mean(port, in_ports) or "ports: " + ", ".join(in_ports),
                       location=issues.locate(path, key=True) if issues.locate else None)
            continue
        if isinstance(ref, str):
            _wire_ref(g, bid, port, ref, path, inputs, blocks, issues)
    for port, decl in in_ports.items():
        if not decl.optional and port not in wiring:
            issues.add(f"required input port '{port}' of {node['type']} is not wired ({decl.doc or ', '.join(decl.kinds)})",
                       ("blocks", bid, "in"), block=bid)


def _wire_ref(g, dst, dst_port, ref, path, inputs, blocks, issues, want_kind=None, output=False):
    block = path[1] if path[0] == "blocks" else None
    if not re.fullmatch(REF, ref):
        return  # malformed reference: reported by the schema check
    src, src_port = ref.split(".", 1)
    if src == "inputs":
        if src_port not in inputs:
            issues.add(f"no input '{src_port}'", path, block=block, hint=did_you_mean(src_port, inputs) or known_list(inputs))
            return
        src_node = INPUT_PREFIX + src_port
        if src_node not in g:
            return  # the input's own declaration is broken and reported
        kind = g.nodes[src_node]["kind"]
        train_only = g.nodes[src_node]["train_only"]
        infer_only = False
    else:
        if src not in blocks:
            issues.add(f"no block '{src}'", path, block=block, hint=did_you_mean(src, blocks) or known_list(blocks))
            return
        if src not in g:
            return  # the source block is broken and reported
        outs = g.nodes[src]["out_ports"]
        if src_port not in outs:
            issues.add(f"block '{src}' ({g.nodes[src]['type']}) has no output port '{src_port}'", path, block=block,
                       hint=did_you_mean(src_port, outs) or "ports: " + ", ".join(outs))
            return
        kind = outs[src_port].kind
        train_only = outs[src_port].train_only
        infer_only = outs[src_port].infer_only
        src_node = src
    if want_kind and kind != want_kind:
        issues.add(f"'{ref}' is {article(kind)} port, expected {article(want_kind)} port", path)
        return
    if output and train_only:
        issues.add(f"'{ref}' only exists in training (it needs targets) and cannot be an output", path)
        return
    if g.nodes[dst].get("role") == "block":
        decl = g.nodes[dst]["in_ports"][dst_port]
        if not decl.accepts(kind):
            issues.add(f"port '{dst_port}' of {g.nodes[dst]['type']} takes {' or '.join(decl.kinds)}, but '{ref}' is {kind}",
                       path, block=block)
            return
        if src == "inputs" and g.nodes[src_node]["optional"] and not decl.optional:
            issues.add(f"'{ref}' is optional but port '{dst_port}' of {g.nodes[dst]['type']} is required", path, block=block,
                       hint=f"make inputs.{src_port} non-optional or wire a required value")
    g.add_edge(src_node, dst, key=dst_port, src_port=src_port if src != "inputs" else None, dst_port=dst_port,
               kind=kind, ref=ref, train_only=train_only, infer_only=infer_only, path=path)


def _check_cycles(g, issues) -> bool:
    found = False
    for cycle in list(nx.simple_cycles(nx.DiGraph(g)))[:5]:
        found = True
        loop = " -> ".join(cycle + [cycle[0]])
        issues.add(f"the graph has a cycle: {loop}", ("blocks", cycle[0], "in"), block=cycle[0])
    return found


def _check_inference(g, issues):
    """Mark which values exist at inference (no targets) and check outputs only need those."""
    for node in nx.topological_sort(g):
        data = g.nodes[node]
        if data["role"] == "input":
            data["at_inference"] = not data["train_only"]
        elif data["role"] == "block":
            ok = True
            for src, _, e in g.in_edges(node, data=True):
                port = data["in_ports"][e["dst_port"]]
                available = g.nodes[src].get("at_inference", False) and not e["train_only"]
                if not available and not port.optional and not port.target:
                    ok = False
            data["at_inference"] = ok
        elif data["role"] == "output":
            for src, _, e in g.in_edges(node, data=True):
                if not g.nodes[src].get("at_inference", False):
                    issues.add(f"'{e['ref']}' needs values that exist only in training (train_only inputs), so it cannot be an output",
                               e["path"])


def _check_training(g, issues):
    """No loss may need a value that only predict() makes (generated tokens, ...), directly or
    through other blocks; so every block a loss needs has all its inputs in training."""
    needs = {}  # node -> the inference-only reference it depends on
    for node in nx.topological_sort(g):
        for src, _, e in g.in_edges(node, data=True):
            why = e["ref"] if e["infer_only"] else needs.get(src)
            if why is not None and node not in needs:
                needs[node] = why
                if g.nodes[node]["role"] == "loss":
                    via = "" if why == e["ref"] else f" (through {e['ref']})"
                    issues.add(f"loss '{g.nodes[node]['name']}' needs '{why}'{via}, which exists only at inference "
                               "(predict), not in training", e["path"])


def _check_unused(g, losses, issues):
    used = _used_nodes(g)
    for n, d in g.nodes(data=True):
        if n in used:
            continue
        if d["role"] == "block":
            issues.add(f"block '{n}' feeds no loss and no output; it will not be built", ("blocks", n), block=n, severity="warning")
        elif d["role"] == "input":
            issues.add(f"input '{d['name']}' is not used", ("inputs", d["name"]), severity="warning")
    if not losses:
        issues.add("no losses: the graph can be served but not trained", ("losses",), severity="warning")


# queries used by the lowering ---------------------------------------------------------------

def streams(g) -> list[str]:
    return sorted({d["stream"] for _, d in g.nodes(data=True) if d["role"] == "loss"})


def topo_blocks(g, among) -> list[str]:
    return [n for n in nx.topological_sort(g) if n in among and g.nodes[n]["role"] == "block"]


def train_blocks(g, stream) -> list[str]:
    sinks = [n for n, d in g.nodes(data=True) if d["role"] == "loss" and d["stream"] == stream]
    need = set()
    for s in sinks:
        need |= nx.ancestors(g, s)
    return topo_blocks(g, need)


def _needed_by(g, sinks) -> set:
    need = set(sinks)
    for s in sinks:
        need |= nx.ancestors(g, s)
    return need


def _with_owners(g, nodes) -> set:
    """A block that shares another's module needs that module built, even when the owner's own
    outputs feed nothing (the owner's inputs are then needed to size it, too)."""
    nodes = set(nodes)
    while True:
        owners = {g.nodes[n]["owner"] for n in nodes if g.nodes[n].get("role") == "block"} - nodes
        if not owners:
            return nodes
        nodes |= _needed_by(g, owners)


def _used_nodes(g) -> set:
    """Every node a loss or an output needs, shared modules' owners included."""
    return _with_owners(g, _needed_by(g, [n for n, d in g.nodes(data=True) if d["role"] in ("loss", "output")]))


def used_inputs(g) -> list[str]:
    """Names of the inputs a loss or an output needs (declared but unused ones are left out)."""
    return [g.nodes[n]["name"] for n in _used_nodes(g) if g.nodes[n].get("role") == "input"]


def used_blocks(g) -> list[str]:
    return topo_blocks(g, _used_nodes(g))


def build_order(g) -> list[str]:
    """used_blocks in an order where a shared module's owner comes before the blocks sharing it."""
    used = used_blocks(g)
    order_graph = nx.DiGraph(g.subgraph(used))
    order_graph.add_edges_from((g.nodes[b]["owner"], b) for b in used if g.nodes[b]["owner"] != b)
    try:
        return list(nx.lexicographical_topological_sort(order_graph, key=used.index))
    except nx.NetworkXUnfeasible:
        return used  # the owner is computed from the sharer's output; build() reports it


def infer_blocks(g) -> list[str]:
    need = set()
    for s in [n for n, d in g.nodes(data=True) if d["role"] == "output"]:
        need |= _infer_ancestors(g, s)
    return topo_blocks(g, need)


def _infer_ancestors(g, node):
    out = set()
    for src, _, e in g.in_edges(node, data=True):
        if e["train_only"] or not g.nodes[src].get("at_inference", True):
            continue
        if src not in out:
            out.add(src)
            out |= _infer_ancestors(g, src)
    return out


def in_edges(g, node, inference=False):
    """(dst_port, src_node, src_port, edge data) of a node, skipping train-only ones at inference."""
    rows = []
    for src, _, e in g.in_edges(node, data=True):
        if inference and (e["train_only"] or not g.nodes[src].get("at_inference", True)):
            continue
        rows.append((e["dst_port"], src, e["src_port"], e))
    return sorted(rows, key=lambda r: list(g.nodes[node].get("in_ports", {r[0]: 0})).index(r[0]) if g.nodes[node].get("in_ports") else 0)
