"""The package's layout holds: imports go one way between layers (the import-linter contract in
pyproject.toml), no two modules import each other even through others, and a block type is
found from its name in one hop."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx
from click.testing import CliRunner

from graphvla.blocks.registry import defining_file, registered
from graphvla.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_layers_import_in_one_direction():
    # In its own process: import-linter configures logging and disables the loggers that exist
    # (graphvla's among them), which would hide later tests' log records.
    run = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                          f"sys.exit(lint_imports(config_filename={str(REPO / 'pyproject.toml')!r}, no_cache=True, "
                          "no_logo=True))"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "graphvla layers KEPT" in run.stdout


def _import_graph() -> nx.DiGraph:
    graph = grimp.build_graph("graphvla", cache_dir=None)  # counts imports inside functions too
    g = nx.DiGraph()
    for module in graph.modules:
        g.add_node(module)
        for imported in graph.find_modules_directly_imported_by(module):
            g.add_edge(module, imported)
    return g


def test_no_import_cycles_between_modules():
    cycles = [sorted(c) for c in nx.strongly_connected_components(_import_graph()) if len(c) > 1]
    assert not cycles, "modules that import each other (directly or through others): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_check_sees_a_cycle():
    """The check above is not hollow: grimp's graph holds real edges, and a cycle shows up as one."""
    g = _import_graph()
    assert g.has_edge("graphvla.compiler.compile", "graphvla.compiler.dag")
    g.add_edge("graphvla.compiler.dag", "graphvla.compiler.compile")
    assert any(len(c) > 1 for c in nx.strongly_connected_components(g))


def _home_modules(type_name: str) -> set[str]:
    """Where type `family.name` may live: blocks/<family>/<name>.py or blocks/<family>.py (the
    folder or file may take the plural: blocks/heads/oft.py for head.oft)."""
    family, name = type_name.split(".", 1)
    homes = set()
    for folder in (family, family + "s"):
        homes |= {f"graphvla.blocks.{folder}.{name}", f"graphvla.blocks.{folder}"}
    return homes


def test_every_block_type_lives_where_its_name_says():
    misplaced = {n: c.__module__ for n, c in registered().items()
                 if c.__module__.startswith("graphvla.") and c.__module__ not in _home_modules(n)}
    assert not misplaced, f"block types outside blocks/<family>/<name>.py or blocks/<family>.py: {misplaced}"


def test_blocks_verbose_prints_each_defining_file():
    out = CliRunner().invoke(main, ["blocks", "-v"])
    assert out.exit_code == 0, out.output
    for name, cls in registered().items():
        path = defining_file(cls)
        assert f"    file {path}" in out.output, name
        if cls.__module__.startswith("graphvla."):
            assert (REPO / path).is_file() and importlib.import_module(cls.__module__).__file__.endswith(path)
    assert "    file graphvla/blocks/heads/oft.py" in out.output
    assert "    file graphvla/blocks/glue/select_layers.py" in out.output
