"""DAG rendering: `render(compiled_graph, 'graph.svg')` writes .dot, .svg, .mmd or .html.

One module per format; all read the same plain view built by `viz.model.view`."""
from __future__ import annotations

from pathlib import Path

from ..fileio import write_text_atomic

FORMATS = (".dot", ".svg", ".mmd", ".html")


def render_text(cg, fmt: str) -> str:
    """The picture of a CompiledGraph as text in one of FORMATS ('.svg' needs Graphviz)."""
    from .model import view

    v = view(cg)
    if fmt == ".dot":
        from .dot import render_dot

        return render_dot(v)
    if fmt == ".mmd":
        from .mermaid import render_mermaid

        return render_mermaid(v)
    if fmt == ".svg":
        from .svg import render_svg

        return render_svg(v)
    if fmt == ".html":
        from .html import render_html

        return render_html(v)
    raise ValueError(f"unknown picture format '{fmt}': use one of {', '.join(FORMATS)}")


def render(cg, path) -> Path:
    path = Path(path)
    text = render_text(cg, path.suffix.lower())
    write_text_atomic(path, text)
    return path
