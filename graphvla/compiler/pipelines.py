"""The graph's processing pipelines (processors/): `preprocess` (raw sample or observation ->
block inputs) and `postprocess` (graph outputs -> dataset units), in graph order.

preprocess: normalization of the graph's used state/action inputs first (modes from
`trainer.normalization`; statistics come from the data, so the step is unbound here and bound with
`Pipeline.with_statistics(stats)`), then each block's own step (`Block.processor_step`), blocks in
topological order, so a step that reads another block's step output runs after it.
postprocess: un-normalization of the outputs that predict a normalized input (the action chunk)."""
from __future__ import annotations

from ..processors.base import Pipeline
from ..processors.normalize import NORMALIZED_KINDS, Normalize, Unnormalize
from . import dag as D


def build_pipelines(spec, g, modules) -> tuple[Pipeline, Pipeline]:
    used = set(D.used_inputs(g))
    inputs = {p: d.get("kind") for p, d in spec.inputs.items() if d.get("kind") in NORMALIZED_KINDS}
    modes = dict(spec.section("trainer").get("normalization") or {})
    pre = []
    ports = [p for p in inputs if p in used]
    if ports:
        pre.append(Normalize(ports, modes))
    seen = set()
    for bid in D.used_blocks(g):
        owner = g.nodes[bid]["owner"]
        module = modules.get(owner)
        make = getattr(module, "processor_step", None)
        if make is None or (owner, bid) in seen:
            continue
        seen.add((owner, bid))
        step = make(bid) if bid == owner else make(bid, _sources(g, bid))
        if step is not None:
            pre.append(step)
    post = []
    outputs = {}
    for n, d in g.nodes(data=True):
        if d["role"] == "output":
            ((_, _, e),) = g.in_edges(n, data=True)
            outputs[d["name"]] = {"kind": e["kind"], "input": d["name"] in spec.inputs}
    if ports and outputs:
        post.append(Unnormalize({o: v for o, v in outputs.items() if v["input"] or v["kind"] in NORMALIZED_KINDS},
                                {p: inputs[p] for p in ports}, modes))
    return Pipeline("preprocess", pre), Pipeline("postprocess", post)


def _sources(g, bid) -> dict:
    """port -> batch key for a block node: a graph input's name, or 'SRC.PORT' of a block output."""
    out = {}
    for port, src, src_port, _ in D.in_edges(g, bid):
        out[port] = src[len(D.INPUT_PREFIX):] if src.startswith(D.INPUT_PREFIX) else f"{src}.{src_port}"
    return out
