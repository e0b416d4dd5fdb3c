"""SVG through Graphviz's `dot` program (Debian package graphviz)."""
from __future__ import annotations

import shutil
import subprocess

from .dot import render_dot
from .model import VizGraph


class GraphvizMissing(RuntimeError):
    pass


def dot_program() -> str | None:
    return shutil.which("dot")


def run_dot(dot_text: str, fmt: str = "svg") -> bytes:
    exe = dot_program()
    if exe is None:
        raise GraphvizMissing("Graphviz 'dot' is not installed (apt-get install graphviz); "
                              ".dot and .mmd output work without it")
    done = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def render_svg(v: VizGraph) -> str:
    return run_dot(render_dot(v), "svg").decode()
