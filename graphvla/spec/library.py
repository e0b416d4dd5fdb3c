"""The graph library that ships inside the package (graphvla/graphs): every command that takes a
graph also takes a packaged name such as `tiny/querytf` or `metaworld/mt50` (`.yaml` optional).

A path that exists always wins; a name is looked up only when no such file exists. `base/` folders
hold the shared halves that graphs `extends:`; they are not graphs of their own, so they are neither
listed nor resolved by name."""
from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path, PurePosixPath

import yaml

from ..errors import Location, SpecError, SpecIssue, did_you_mean

SUFFIXES = (".yaml", ".yml")
HIDDEN = "base"  # folders of shared bases: not user-facing graphs
SWEEPS = "sweeps"  # sweep files, not graphs (see is_sweep_file)
LEGACY_PREFIX = "graphvla/graphs/"  # a path into a source checkout, typed where there is none
# Packaged graphs that were renamed, by old name: the lookup of an old name says where it went and
# why, instead of suggesting a near name (in starvla/, a different model). starvla/ now holds only
# graphs proven equal to starVLA's code; these were GraphVLA's own heads (docs/heads.md, "Names and
# parity"). The old names in PROVEN are not here: they now name starVLA's QwenOFT, QwenGR00T, QwenFast
# and QwenPI themselves (on Qwen3-VL and on Qwen2.5-VL), each proven by a parity fixture.
PROVEN = {f"{backbone}-{name}" for backbone in ("qwen3vl", "qwen25vl") for name in ("oft", "gr00t", "fast", "pi")}
MOVED = {f"starvla/{backbone}-{old}": f"fullsize/{backbone}-{new}"
         for backbone in ("qwen3vl", "qwen25vl", "worldmodel")
         for old, new in (("oft", "querytf"), ("pi", "flowdit"), ("gr00t", "dualsystem"), ("fast", "fast"))
         if f"{backbone}-{old}" not in PROVEN}
MOVED.update({"starvla/qwen3vl-fast-lm": "fullsize/qwen3vl-fast-lm", "starvla/qwen25vl-fast-lm": "fullsize/qwen25vl-fast-lm",
              "starvla/qwen3vl-oft-cotrain": "fullsize/qwen3vl-querytf-cotrain"})
# The tiny graphs carried the published models' names too (OpenVLA-OFT, pi0, GR00T) over GraphVLA's heads.
MOVED.update({f"tiny/{old}": f"tiny/{new}" for old, new in (("oft", "querytf"), ("pi", "flowdit"), ("gr00t", "dualsystem"),
                                                         ("worldmodel-pi", "worldmodel-flowdit"))})
# So did the graphs that extend tiny/querytf or use its head: the privileged upper bound and the
# backbones/cotrain/aux sweeps' graphs (their recorded reports name them as they were: docs/results/sweeps).
MOVED.update({"metaworld/mt10-oft-privileged": "metaworld/mt10-querytf-privileged",
              **{f"sweeps/backbones/{old}": f"sweeps/backbones/{old.replace('-oft', '-querytf')}"
                 for old in ("qwen3vl-oft", "qwen3vl-oft-cotrain", "worldmodel-oft")}})
# What each renamed graph's old name claimed to be, for the hint.
NAMED_AFTER = {"tiny/oft": "OpenVLA-OFT", "tiny/pi": "pi0", "tiny/gr00t": "GR00T", "tiny/worldmodel-pi": "pi0",
               **{old: "OpenVLA-OFT" for old in MOVED if old.startswith(("metaworld/", "sweeps/"))}}


def graphs_root() -> Path:
    """The folder of packaged graphs, on disk."""
    root = resources.files("graphvla") / "graphs"
    if not os.path.isdir(str(root)):
        raise RuntimeError(f"the packaged graphs are not on disk ({root}); install graphvla from a wheel or a "
                           "source checkout, not a zip")
    return Path(str(root))


def packaged_graphs() -> list[str]:
    """Every packaged graph's name ('tiny/querytf'), sorted; bases are left out."""
    root = graphs_root()
    names = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.suffix in SUFFIXES and path.is_file() and HIDDEN not in rel.parts[:-1] and not is_sweep_file(rel):
            names.append(rel.with_suffix("").as_posix())
    return sorted(names)


def is_sweep_file(rel) -> bool:
    """graphs/sweeps/NAME.yaml is a sweep file (`graphvla sweep`), not a graph; the graphs its
    variants use live in folders below it."""
    parts = PurePosixPath(rel).parts
    return len(parts) == 2 and parts[0] == SWEEPS


def _as_name(source) -> str | None:
    """What `source` would be as a packaged name, or None if it can only be a path."""
    text = str(source).replace("\\", "/")
    if not text or PurePosixPath(text).is_absolute() or text.startswith(("./", "../", "~")):
        return None
    if text.startswith(LEGACY_PREFIX):
        text = text[len(LEGACY_PREFIX):]
    for suffix in SUFFIXES:
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


def packaged_path(name) -> Path | None:
    """The YAML file of packaged graph `name`, or None when there is no such graph (names that
    leave the library or point into a `base/` folder are none: the rule `packaged_graphs` lists by)."""
    name = _as_name(name)
    parts = PurePosixPath(name).parts if name else ()
    if not parts or ".." in parts or HIDDEN in parts[:-1] or is_sweep_file(PurePosixPath(*parts)):
        return None
    root = graphs_root()
    for suffix in SUFFIXES:
        if (root / (name + suffix)).is_file():
            return root / (name + suffix)
    return None


def resolve_graph(source) -> Path:
    """The file a command's graph argument means: an existing path, else a packaged graph.
    Raises SpecError ('file not found', with a did-you-mean over the packaged names) otherwise."""
    path = Path(source)
    if path.exists():
        return path
    found = packaged_path(source)
    if found is not None:
        return found
    name, hint = _as_name(source), None
    if name is not None:
        close = _moved(name) or did_you_mean(name, packaged_graphs())
        hint = "and no packaged graph of that name; " + (close or "`graphvla graphs` lists them")
    raise SpecError([SpecIssue("file not found", (), Location(str(source)), hint=hint)])


def describe(name: str) -> str:
    """One line about packaged graph `name`: its `description:` (first line), else its first comment."""
    path = packaged_path(name)
    text = path.read_text(encoding="utf-8") if path else ""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    desc = data.get("description") if isinstance(data, dict) else None
    if isinstance(desc, str) and desc.strip():
        line = desc.strip().splitlines()[0].strip()
        if len(line) > 100:  # a folded paragraph: its first sentence, or a cut
            end = line.find(". ")
            line = line[: end + 1] if 0 < end < 100 else line[:97].rstrip() + "..."
        return line
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def graph_files(name: str) -> tuple[Path, list[Path]]:
    """Packaged graph `name` and everything it needs to load from another folder: (its YAML file,
    every file and folder needed, itself included): its `extends:` chain and the relative paths the
    blocks' `with:` of that chain name (a fitted tokenizer, say) that exist next to the graph, since
    they resolve against the graph's own folder."""
    graph = packaged_path(name)
    if graph is None:
        _raise_unknown(name)
    root = graphs_root().resolve()
    graph = graph.resolve()
    chain = []
    _extends_chain(graph, chain)
    needed = [path for path, _ in chain]
    for _, data in chain:
        blocks = data.get("blocks") if isinstance(data.get("blocks"), dict) else {}
        for block in blocks.values():
            if isinstance(block, dict):
                for value in _strings(block.get("with")):
                    candidate = (graph.parent / value).resolve()
                    if (_inside(candidate, root) and not _inside(graph, candidate) and candidate.exists()
                            and candidate not in needed):
                        needed.append(candidate)
    return graph, needed


def _moved(name) -> str | None:
    new = MOVED.get(name)
    model = NAMED_AFTER.get(name, "starVLA's framework")
    return (f"it was renamed '{new}': a GraphVLA design, never proven equal to {model} "
            f"(docs/heads.md, \"Names and parity\")") if new else None


def _raise_unknown(name):
    close = _moved(_as_name(name)) or did_you_mean(_as_name(name) or str(name), packaged_graphs())
    raise SpecError([SpecIssue("no packaged graph of that name", (), Location(str(name)),
                               hint=close or "`graphvla graphs` lists them")])


def copy_graph(name: str, dest) -> tuple[Path, list[Path]]:
    """Copy packaged graph `name` into folder `dest` with what it needs to validate there, at the
    same paths relative to each other. Returns (the copied graph, every file written). Refuses
    (FileExistsError naming them) when any of those files already exists; writes nothing then."""
    graph, needed = graph_files(name)
    base = Path(os.path.commonpath([graph.parent] + [p if p.is_dir() else p.parent for p in needed]))
    dest = Path(dest)
    plan = []  # (source file, destination file)
    for item in needed:
        files = sorted(p for p in item.rglob("*") if p.is_file()) if item.is_dir() else [item]
        plan += [(f, dest / f.relative_to(base)) for f in files]
    clash = [str(d) for _, d in plan if d.exists() or d.is_symlink()]
    if clash:
        raise FileExistsError("will not overwrite existing file" + ("s" if len(clash) > 1 else "") + ": "
                              + ", ".join(clash))
    for src, dst in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return dest / graph.relative_to(base), [d for _, d in plan]


def _extends_chain(path: Path, out: list) -> None:
    """Append (file, its YAML data) for `path` and, depth first, every base it extends."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        data = None
    data = data if isinstance(data, dict) else {}
    out.append((path, data))
    parents = data.get("extends")
    for rel in [parents] if isinstance(parents, str) else parents if isinstance(parents, list) else []:
        if isinstance(rel, str):
            parent = (path.parent / rel).resolve()
            if parent.is_file() and parent not in [p for p, _ in out]:
                _extends_chain(parent, out)


def _strings(value):
    if isinstance(value, str):
        if value and "\n" not in value and not os.path.isabs(value):
            yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
