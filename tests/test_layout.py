"""The package's layout holds: imports go one way between layers (the import-linter contract in
pyproject.toml), no two modules import each other even through others, a block type is found
from its name in one hop, and command modules only parse and print (no classes, no file writes)."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
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
    assert "the client needs only the wire format and the image path KEPT" in run.stdout


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


def test_the_client_needs_only_the_wire_format_and_the_image_path():
    """What a robot-side install of the client imports from graphvla, through any chain of imports."""
    graph = grimp.build_graph("graphvla", cache_dir=None)
    upstream = graph.find_upstream_modules("graphvla.client", as_package=True)
    assert upstream == {"graphvla.protocol", "graphvla.data.images"}, sorted(upstream)


def test_the_cycle_check_sees_a_cycle():
    """The check above is not hollow: grimp's graph holds real edges, and a cycle shows up as one."""
    g = _import_graph()
    assert g.has_edge("graphvla.compiler.compile", "graphvla.compiler.dag")
    g.add_edge("graphvla.compiler.dag", "graphvla.compiler.compile")
    assert any(len(c) > 1 for c in nx.strongly_connected_components(g))


def _home_modules(type_name: str) -> set[str]:
    """Where type `family.name` may live: blocks/<family>/<name>.py or blocks/<family>.py (the
    folder or file may take the plural: blocks/heads/mlp.py for head.mlp)."""
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
    assert "    file graphvla/blocks/heads/query_transformer.py" in out.output
    assert "    file graphvla/blocks/glue/select_layers.py" in out.output


# --- commands/ only parses and prints ---------------------------------------------------------
# A command module defines no class, writes no file and starts no process: the work (every file it
# writes, folders included: mkdir counts; every stage run in a child process) happens in runners/,
# data/ or policy/ functions it calls. Calling such a
# function is fine; the file-system calls themselves are what is refused here.
WRITING_CALLS = {  # module.function
    ("json", "dump"), ("pickle", "dump"), ("yaml", "dump"), ("yaml", "safe_dump"), ("torch", "save"),
    ("np", "save"), ("np", "savez"), ("np", "savez_compressed"), ("numpy", "save"),
    ("os", "replace"), ("os", "rename"), ("os", "remove"), ("os", "unlink"), ("os", "mkdir"), ("os", "makedirs"),
    ("os", "rmdir"), ("os", "symlink"), ("os", "link"),
    ("shutil", "copy"), ("shutil", "copy2"), ("shutil", "copyfile"), ("shutil", "copytree"), ("shutil", "move"),
    ("shutil", "rmtree"),
}
WRITING_METHODS = {"write_text", "write_bytes", "mkdir", "touch", "unlink", "rmdir", "rename", "symlink_to",
                   "hardlink_to"}  # pathlib.Path's (no str or dict method has these names)
WRITING_FUNCTIONS = {"write_text_atomic"}  # graphvla.fileio's, imported by name
STARTING_CALLS = {("subprocess", "run"), ("subprocess", "Popen"), ("subprocess", "call"), ("subprocess", "check_call"),
                  ("subprocess", "check_output"), ("os", "system")}  # a stage in a process is a runner's work too


def _open_mode(call: ast.Call):
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else (
        None if mode is None else "?")  # a computed mode may write


def _path_open_mode(call: ast.Call):
    mode = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else (
        None if mode is None else "?")


def file_writes_and_classes(source: str, name: str) -> list[str]:
    """'NAME:LINE: what' for each class definition, file-system write and process start in a module's
    source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            found.append(f"{name}:{node.lineno}: class {node.name}")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        what = None
        if isinstance(f, ast.Name) and f.id == "open":
            mode = _open_mode(node)
            what = f"open(..., {mode!r})" if mode is not None and set(mode) & set("wax+?") else None
        elif isinstance(f, ast.Name) and f.id in WRITING_FUNCTIONS:
            what = f"{f.id}()"
        elif isinstance(f, ast.Attribute):
            owner = f.value.id if isinstance(f.value, ast.Name) else None
            if (owner, f.attr) in WRITING_CALLS | STARTING_CALLS:
                what = f"{owner}.{f.attr}()"
            elif f.attr in WRITING_METHODS or f.attr in WRITING_FUNCTIONS:
                what = f".{f.attr}()"
            elif f.attr == "open":  # io/gzip.open(path, mode), else Path.open(mode)
                mode = _open_mode(node) if owner in ("io", "gzip", "bz2", "lzma", "codecs") else _path_open_mode(node)
                what = f".open({mode!r})" if mode is not None and set(mode) & set("wax+?") else None
        if what:
            found.append(f"{name}:{node.lineno}: {what}")
    return found


def test_command_modules_define_no_classes_write_no_files_and_start_no_processes():
    found = []
    for path in sorted((REPO / "graphvla" / "commands").glob("*.py")):
        found += file_writes_and_classes(path.read_text(), str(path.relative_to(REPO)))
    assert not found, ("commands/ only parses arguments and prints; move these into runners/, data/ or policy/ "
                       "functions:\n" + "\n".join(found))


def test_the_commands_check_sees_classes_writes_and_processes():
    """The check above is not hollow: each kind of write, a class and a process start are found
    with their lines."""
    source = textwrap.dedent("""\
        import json, os, shutil
        from pathlib import Path
        class Adapter:
            pass
        def f(p, doc, mode):
            open(p, "w"); open(p, mode="a"); open(p, mode)
            Path(p).write_text("x"); p.write_bytes(b""); p.mkdir(parents=True); p.open("w")
            json.dump(doc, p); shutil.copytree(p, p); os.replace(p, p); write_text_atomic(p, "x")
            open(p).read(); p.read_text(); json.dumps(doc); "a".replace("a", "b"); p.open()
            subprocess.run(["graphvla", "train"])
        """)
    found = file_writes_and_classes(source, "m.py")
    assert found[0] == "m.py:3: class Adapter"
    lines = sorted(int(f.split(":")[1]) for f in found)
    assert lines == [3, 6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 8, 10], found  # line 9 only reads


def cli_launches(source: str, name: str) -> list[str]:
    """'NAME:LINE' for each list or tuple literal holding "-m", "graphvla" (a `python -m graphvla`
    command line): a dependency on the CLI that the import contract cannot see."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            if any(a == "-m" and b in ("graphvla", "graphvla.cli") for a, b in zip(items, items[1:])):
                found.append(f"{name}:{node.lineno}")
    return found


def test_nothing_below_the_commands_starts_the_cli():
    """Runners (a sweep's cells), data and policy call runner functions, in a child process where
    they need isolation; they never run `python -m graphvla ...`."""
    assert cli_launches('cmd = [sys.executable, "-m", "graphvla", *args]', "m.py") == ["m.py:1"]
    found = []
    for path in sorted((REPO / "graphvla").rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[1] not in ("commands", "cli.py", "__main__.py"):
            found += cli_launches(path.read_text(), str(rel))
    assert not found, "modules below the commands that start the CLI: " + ", ".join(found)
