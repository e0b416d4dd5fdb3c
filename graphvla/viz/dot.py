"""Graphviz DOT text of a graph view: blocks as boxes coloured by trainable/frozen/shared, inputs
as ellipses, losses as octagons with their weights, train-only parts dashed, the inference graph
inside a highlighted cluster with bold blue edges, the pipelines' steps in a cluster each."""
from __future__ import annotations

import json

from .model import COLOURS, INFERENCE_COLOUR, VizGraph

SHAPES = {"input": "ellipse", "block": "box", "loss": "octagon", "output": "box", "step": "cds"}
PIPELINES = ("preprocess", "postprocess")


def quote(text: str) -> str:
    """A DOT double-quoted string (JSON escaping is a subset DOT reads the same way)."""
    return json.dumps(str(text), ensure_ascii=False)


def _node(n, indent: str) -> str:
    label = "\\n".join([n.title] + list(n.lines))
    style = ["filled"] + (["rounded"] if n.role == "block" else []) + (["dashed"] if n.train_only else [])
    attrs = {
        "id": n.id,
        "label": label,
        "shape": SHAPES[n.role],
        "style": ",".join(style),
        "fillcolor": COLOURS[n.state],
        "tooltip": n.name,
    }
    if n.role == "output":
        attrs["peripheries"] = "2"
    if n.inference:
        attrs["color"] = INFERENCE_COLOUR
        attrs["penwidth"] = "2"
    body = ", ".join(f"{k}={quote(v) if k != 'label' else _label(v)}" for k, v in attrs.items())
    return f"{indent}{n.id} [{body}];"


def _label(text: str) -> str:
    # keep DOT's own '\n' line breaks: escape everything else
    return '"' + "\\n".join(quote(part)[1:-1] for part in text.split("\\n")) + '"'


def render_dot(v: VizGraph) -> str:
    out = [
        f"digraph {quote(v.name or 'graph')} {{",
        "  rankdir=LR;",
        f"  label={quote(f'{v.name}  ({v.fingerprint[:12]})')}; labelloc=t; fontname=Helvetica;",
        '  node [fontname=Helvetica, fontsize=11];',
        '  edge [fontname=Helvetica, fontsize=9];',
        "  subgraph cluster_inference {",
        f'    label="inference graph"; style="rounded,dashed"; color={quote(INFERENCE_COLOUR)}; fontcolor={quote(INFERENCE_COLOUR)};',
    ]
    out += [_node(n, "    ") for n in v.nodes if n.inference]
    out.append("  }")
    for name in PIPELINES:
        steps = [n for n in v.nodes if n.role == "step" and n.pipeline == name]
        if steps:
            out.append(f"  subgraph cluster_{name} {{")
            out.append(f'    label={quote(name)}; style="rounded,dotted"; color="#7a5aa6"; fontcolor="#7a5aa6";')
            out += [_node(n, "    ") for n in steps]
            out.append("  }")
    out += [_node(n, "  ") for n in v.nodes if not n.inference and n.role != "step"]
    for e in v.edges:
        attrs = {"label": e.label}
        if e.train_only:
            attrs["style"] = "dashed"
        if e.inference:
            attrs["color"] = INFERENCE_COLOUR
            attrs["penwidth"] = "2"
        body = ", ".join(f"{k}={quote(val)}" for k, val in attrs.items())
        out.append(f"  {e.src} -> {e.dst} [{body}];")
    out.append("}")
    return "\n".join(out) + "\n"
