"""compile_graph: spec -> checked DAG -> blocks (meta or real) -> fx GraphModules."""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from torch import fx, nn

from ..spec.loader import Spec
from . import dag as D
from .build import build
from ..processors.base import Pipeline
from .lower import graph_module, lower_infer, lower_train
from .pipelines import build_pipelines
from .validate import checked_dag


@dataclass(frozen=True)
class BlockNode:
    """What the compiled graph knows of one block node (the typed view of its DAG node)."""

    id: str
    type_name: str
    cls: type
    owner: str  # the module id in `model` (a shared block's owner)
    params: dict
    train: dict
    every: int  # infer.every: the block runs on every k-th inference call

    @property
    def predict_kwargs(self) -> tuple:
        return tuple(self.cls.predict_kwargs)


@dataclass(frozen=True)
class OutputSource:
    """Where a declared output comes from: a block's port, or a graph input passed through."""

    node: str  # block id, or 'inputs.PORT'
    port: str | None
    kind: str
    is_block: bool


@dataclass
class CompiledGraph:
    spec: Spec
    dag: nx.MultiDiGraph
    model: nn.ModuleDict  # every block module by id: one place for parameters and state_dict
    train: dict  # stream -> fx.GraphModule returning {'loss', 'losses'}
    infer: fx.GraphModule  # returns the declared outputs; needs no targets
    shapes: dict  # (node, port) -> symbolic shape, e.g. ('B', 8, 7)
    port_info: dict  # block id -> {port: PortInfo}
    warnings: list = field(default_factory=list)
    # block id -> (owner, every, method) of each `infer: {every: k}` block. `infer` runs it on every
    # call; the runtime (graphvla/policy/caches.py) keeps its outputs between calls
    every_k: dict = field(default_factory=dict)
    # the processing pipelines (compiler/pipelines.py): normalization unbound until the data's
    # statistics are known (`cg.preprocess.with_statistics(stats)`), then the blocks' own steps
    preprocess: Pipeline = field(default_factory=lambda: Pipeline("preprocess", []))
    postprocess: Pipeline = field(default_factory=lambda: Pipeline("postprocess", []))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    @property
    def streams(self) -> list:
        return list(self.train)

    # typed queries on the DAG: what code outside the compiler reads instead of raw node dicts ----
    def block(self, bid: str) -> BlockNode:
        d = self.dag.nodes[bid]
        if d.get("role") != "block":
            raise KeyError(f"'{bid}' is not a block of graph {self.name}")
        return BlockNode(bid, d["cls"].type_name, d["cls"], d["owner"], d["params"], d["train"], d.get("every", 1))

    def block_ids(self) -> list[str]:
        """Every block node, in topological order."""
        return D.topo_blocks(self.dag, [n for n, d in self.dag.nodes(data=True) if d["role"] == "block"])

    def infer_block_ids(self) -> list[str]:
        """The blocks the inference graph runs, in order."""
        return D.infer_blocks(self.dag)

    def train_block_ids(self, stream: str) -> list[str]:
        """The blocks a stream's train graph runs, in order."""
        return D.train_blocks(self.dag, stream)

    def output_source(self, name: str) -> OutputSource:
        ((src, _, e),) = self.dag.in_edges(D.OUTPUT_PREFIX + name, data=True)
        return OutputSource(src, e["src_port"], e["kind"], self.dag.nodes[src]["role"] == "block")

    def input_consumers(self, port: str, inference: bool = True) -> list[str]:
        """Blocks that read graph input `port` (only those the inference graph runs, by default)."""
        among = set(self.infer_block_ids()) if inference else None
        return [b for _, b in self.dag.out_edges(D.INPUT_PREFIX + port) if among is None or b in among]

    def feed(self, batch: dict, stream: str | None = None) -> dict:
        """The arguments of `infer` (or of `train[stream]`) for a batch of graph-input values that
        are already normalized: the blocks' processor steps run on it (the preprocess pipeline
        without its normalization), and each made NODE.PORT goes to the argument NODE_PORT."""
        from .lower import graph_argument

        for step in self.preprocess:
            if getattr(step, "block", ""):
                batch = step(batch)
        gm = self.infer if stream is None else self.train[stream]
        names = {n.target for n in gm.graph.nodes if n.op == "placeholder"}
        return {graph_argument(k): v for k, v in batch.items() if graph_argument(k) in names}

    def step_read_inputs(self, inference: bool = True) -> list[str]:
        """Graph inputs that only blocks' processor steps read (an instruction a tokenizer takes):
        the graph takes what the steps make instead; of the inference graph's blocks by default."""
        blocks = self.infer_block_ids() if inference else self.block_ids()
        out = []
        for bid in blocks:
            steps = self.dag.nodes[bid].get("step_ports")
            for port, src, _, e in D.in_edges(self.dag, bid, inference=inference):
                name = src[len(D.INPUT_PREFIX):]
                if steps is not None and port in steps.reads and src.startswith(D.INPUT_PREFIX) and name not in out:
                    out.append(name)
        return out

    def port_consumers(self, bid: str, port: str) -> list[str]:
        """The nodes (blocks, losses, outputs) that read output `port` of block `bid`."""
        return [dst for _, dst, e in self.dag.out_edges(bid, data=True) if e["src_port"] == port]

    def in_edges(self, bid: str, inference: bool = False) -> list:
        """(port, source node, source port, edge data) wired into block `bid`."""
        return list(D.in_edges(self.dag, bid, inference=inference))

    def bound_pipelines(self, stats: dict | None, modes: dict | None = None) -> tuple:
        """(preprocess, postprocess) with the normalization steps bound to `stats` and `modes` (the
        data's statistics); stats None leaves the normalization steps out."""
        return self.preprocess.with_statistics(stats, modes), self.postprocess.with_statistics(stats, modes)

    def param_counts(self) -> dict:
        """block id -> (total, trainable)."""
        out = {}
        for bid, m in self.model.items():
            total = sum(p.numel() for p in m.parameters())
            trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
            out[bid] = (total, trainable)
        return out

    def edges(self):
        """(source ref, destination, kind, shape) for every edge, in topological order."""
        rows = []
        for u, v, e in self.dag.edges(data=True):
            shape = self.shapes.get((u, e["src_port"]))
            dst = v if self.dag.nodes[v]["role"] != "block" else f"{v}.{e['dst_port']}"
            rows.append((e["ref"], dst, e["kind"], shape))
        return rows

    def to(self, *args, **kwargs):
        self.model.to(*args, **kwargs)
        return self

    def summary(self) -> str:
        from .summary import summarize

        return summarize(self)


def compile_graph(source, overrides=(), device="meta") -> CompiledGraph:
    """Compile a spec (path, YAML text, dict or Spec). device='meta' (default) allocates no
    weights: shapes, parameter counts and the fx code are all available; pass 'cpu'/'cuda' to
    build real weights for training or serving. Raises SpecError on any problem."""
    spec, g, issues = checked_dag(source, overrides)
    modules, shapes, infos = build(spec, g, device=device, issues=issues)
    cls_name = "".join(w.capitalize() for w in (spec.name or "graph").replace("-", "_").split("_") if w.isidentifier() or w.isalnum()) or "Graph"
    train = {s: graph_module(modules, lower_train(g, spec, s), f"{cls_name}Train") for s in D.streams(g)}
    infer_graph, cached = lower_infer(g, spec)
    infer = graph_module(modules, infer_graph, f"{cls_name}Infer")
    model = nn.ModuleDict(modules)
    preprocess, postprocess = build_pipelines(spec, g, modules)
    return CompiledGraph(spec, g, model, train, infer, shapes, infos, [i for i in issues.issues if i.severity == "warning"],
                         every_k=cached, preprocess=preprocess, postprocess=postprocess)
