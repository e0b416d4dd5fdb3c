"""Mermaid flowchart text of a graph view (renders on GitHub and in many editors, no Graphviz)."""
from __future__ import annotations

from .model import COLOURS, INFERENCE_COLOUR, VizGraph

OPEN_CLOSE = {"input": ("([", "])"), "block": ("[", "]"), "loss": ("{{", "}}"), "output": ("[[", "]]"),
              "step": ("[/", "/]")}


def _text(s: str) -> str:
    # inside a quoted Mermaid label: quotes and angle brackets as HTML entities
    return str(s).replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def _node(n) -> str:
    left, right = OPEN_CLOSE[n.role]
    label = "<br/>".join([f"<b>{_text(n.title)}</b>"] + [_text(x) for x in n.lines])
    return f'{n.id}{left}"{label}"{right}'


def render_mermaid(v: VizGraph) -> str:
    out = ["flowchart LR"]
    out += [f"  classDef {state} fill:{colour},stroke:#555" for state, colour in COLOURS.items()]
    out.append("  classDef trainonly stroke-dasharray:5 4")
    out.append('  subgraph inference["inference graph"]')
    out += ["    " + _node(n) for n in v.nodes if n.inference]
    out.append("  end")
    out.append(f"  style inference fill:none,stroke:{INFERENCE_COLOUR},stroke-dasharray:6 3")
    for name in ("preprocess", "postprocess"):  # the pipelines' steps, one subgraph each
        steps = [n for n in v.nodes if n.role == "step" and n.pipeline == name]
        if steps:
            out.append(f'  subgraph {name}["{name}"]')
            out += ["    " + _node(n) for n in steps]
            out.append("  end")
    out += ["  " + _node(n) for n in v.nodes if not n.inference and n.role != "step"]
    for n in v.nodes:
        out.append(f"  class {n.id} {n.state}")
        if n.train_only:
            out.append(f"  class {n.id} trainonly")
    styles = []
    for i, e in enumerate(v.edges):
        arrow = "-.->" if e.train_only else "-->"
        out.append(f'  {e.src} {arrow}|"{_text(e.label)}"| {e.dst}')
        if e.inference:
            styles.append(str(i))
    if styles:
        out.append(f"  linkStyle {','.join(styles)} stroke:{INFERENCE_COLOUR},stroke-width:2px")
    return "\n".join(out) + "\n"
