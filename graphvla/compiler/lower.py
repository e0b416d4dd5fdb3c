"""DAG -> torch.fx graphs. Blocks are leaves (call_module, or a call of `predict` on the block at
inference); glue (getitem, loss weighting, the sum) becomes call_function nodes. The graphs are
built directly from the DAG, never traced, so `gm.code` reads like the spec."""
from __future__ import annotations

import operator

from torch import fx, nn

from ..blocks.base import Block
from ..errors import SpecError, SpecIssue
from . import dag as D


class _Lowering:
    def __init__(self, g, spec, inference):
        self.g, self.spec, self.inference = g, spec, inference
        self.graph = fx.Graph()
        self.values = {}  # (node, port) -> fx.Node
        self.cached = {}  # block id -> (owner, every, method) of `infer: {every: k}` blocks

    def placeholder(self, name, optional):
        kwargs = {"default_value": None} if optional else {}
        node = self.graph.placeholder(name, **kwargs)
        if node.name != name:
            raise SpecError([SpecIssue(f"input name '{name}' clashes with a Python builtin; rename it", ("inputs", name),
                                       self.spec.locate(("inputs", name)))])
        return node

    def add_inputs(self, needed_inputs, blocks=()):
        # Required inputs first: a Python signature cannot have a required argument after one
        # with a default (optional inputs default to None). The ports the blocks' processor steps
        # make are inputs too (NODE_PORT, made as NODE.PORT: placeholder meta 'batch_key').
        ordered = sorted(self.spec.inputs.items(), key=lambda item: bool(item[1].get("optional", False)))
        made = step_inputs(self.g, blocks, self.inference)
        for optional in (False, True):
            for name, decl in ordered:
                node = D.INPUT_PREFIX + name
                if node in needed_inputs and bool(decl.get("optional", False)) == optional:
                    self.values[(node, None)] = self.placeholder(name, optional)
            for (bid, port), opt in made.items():
                if opt == optional:
                    self.values[(bid, "step:" + port)] = self.step_placeholder(bid, port, optional)

    def step_placeholder(self, bid, port, optional):
        name = f"{bid}_{port}"
        node = self.graph.placeholder(name, **({"default_value": None} if optional else {}))
        if node.name != name:
            raise SpecError([SpecIssue(f"the input '{name}' that block '{bid}' takes from its processor step clashes "
                                       "with another input or a Python builtin; rename the block", ("blocks", bid),
                                       self.spec.locate(("blocks", bid)))])
        node.meta["batch_key"] = f"{bid}.{port}"
        return node

    def value(self, src, src_port):
        key = (src, src_port)
        if key not in self.values:
            out = self.values[(src, "__call__")]
            self.values[key] = self.graph.create_node("call_function", operator.getitem, (out, src_port), name=f"{src}_{src_port}")
        return self.values[key]

    def call_block(self, bid, extra=None):
        data = self.g.nodes[bid]
        steps = data.get("step_ports")
        kwargs = {p: self.value(s, sp) for p, s, sp, _ in D.in_edges(self.g, bid, inference=self.inference)
                  if steps is None or p not in steps.reads}
        kwargs.update({port: self.values[(bid, "step:" + port)] for port in steps.makes
                       if (bid, "step:" + port) in self.values} if steps is not None else {})
        kwargs.update(extra or {})
        owner = data["owner"]
        method = "predict" if type_overrides_predict(data["cls"]) else "forward"
        if self.inference and data.get("every", 1) > 1:
            # the runtime (graphvla/policy/caches.py) runs it every k calls; the graph itself keeps no state
            self.cached[bid] = (owner, data["every"], method)
        if self.inference and method == "predict":
            attr = self.graph.get_attr(owner)
            node = self.graph.create_node("call_method", "predict", (attr,), kwargs, name=bid)
        else:
            node = self.graph.create_node("call_module", owner, (), kwargs, name=bid)
        node.meta["block"] = bid
        self.values[(bid, "__call__")] = node


def type_overrides_predict(cls) -> bool:
    return getattr(cls, "predict", None) is not Block.predict


def _needed_inputs(g, blocks, sinks, inference):
    needed = set()
    for n in list(blocks) + list(sinks):
        steps = g.nodes[n].get("step_ports")
        for src, _, e in g.in_edges(n, data=True):
            if steps is not None and e["dst_port"] in steps.reads:
                continue  # read by the block's processor step, which makes the graph's inputs
            if g.nodes[src]["role"] == "input" and not (inference and e["train_only"]):
                needed.add(src)
    return needed


def graph_argument(key: str) -> str:
    """The graph's argument for a batch key: NODE.PORT (a port a processor step makes) is NODE_PORT."""
    return key.replace(".", "_", 1)


def in_graph(g, blocks) -> list:
    """The blocks a graph calls: not those whose every output only feeds processor steps (e.g.
    glue.state_text's prompts, read by a VLM's step): their work is done before the graph runs."""
    def steps_only(bid):
        edges = list(g.out_edges(bid, data=True))
        return bool(edges) and all(g.nodes[dst].get("role") == "block" and g.nodes[dst].get("step_ports") is not None
                                   and e["dst_port"] in g.nodes[dst]["step_ports"].reads for _, dst, e in edges)
    return [b for b in blocks if not steps_only(b)]


def step_inputs(g, blocks, inference) -> dict:
    """{(node, port): optional} of the ports the blocks' processor steps make that the graph takes:
    in the inference graph, none that only training targets make."""
    out = {}
    for bid in blocks:
        steps = g.nodes[bid].get("step_ports")
        for port, decl in (steps.makes.items() if steps is not None else ()):
            if not (inference and decl.train_only):
                out[(bid, port)] = False
    return out


def lower_train(g, spec, stream) -> fx.Graph:
    blocks = in_graph(g, D.train_blocks(g, stream))
    losses = [n for n, d in g.nodes(data=True) if d["role"] == "loss" and d["stream"] == stream]
    lw = _Lowering(g, spec, inference=False)
    lw.add_inputs(_needed_inputs(g, blocks, losses, False), blocks)
    for bid in blocks:
        lw.call_block(bid)
    total, named = None, {}
    for node in losses:
        (src, _, e), = g.in_edges(node, data=True)
        value = lw.value(src, e["src_port"])
        name = g.nodes[node]["name"]
        named[name] = value
        weight = g.nodes[node]["weight"]
        term = value if weight == 1.0 else lw.graph.create_node("call_function", operator.mul, (value, weight), name=f"{name}_weighted")
        total = term if total is None else lw.graph.create_node("call_function", operator.add, (total, term), name="total_loss")
    lw.graph.output({"loss": total, "losses": named})
    return lw.graph


def lower_infer(g, spec):
    """Returns (graph, cached) where cached maps the id of each `infer: {every: k}` block to
    (owner, every, method); the graph calls it like any block (fx node meta 'block' = its id)."""
    blocks = in_graph(g, D.infer_blocks(g))
    outputs = [n for n, d in g.nodes(data=True) if d["role"] == "output"]
    lw = _Lowering(g, spec, inference=True)
    lw.add_inputs(_needed_inputs(g, blocks, outputs, True), blocks)
    extras = []
    for bid in blocks:
        for k in g.nodes[bid]["cls"].predict_kwargs:
            if k not in extras:
                extras.append(k)
    extra_nodes = {k: lw.placeholder(k, optional=True) for k in extras}
    for bid in blocks:
        cls = g.nodes[bid]["cls"]
        lw.call_block(bid, {k: extra_nodes[k] for k in cls.predict_kwargs})
    result = {}
    for node in outputs:
        (src, _, e), = g.in_edges(node, data=True)
        result[g.nodes[node]["name"]] = lw.value(src, e["src_port"]) if g.nodes[src]["role"] == "block" else lw.values[(src, None)]
    lw.graph.output(result)
    return lw.graph, lw.cached


def graph_module(modules: dict, graph: fx.Graph, class_name: str) -> fx.GraphModule:
    root = nn.Module()
    for name, m in modules.items():
        root.add_module(name, m)
    graph.lint()
    return fx.GraphModule(root, graph, class_name=class_name)
