"""Loading a spec: YAML with locations -> `extends:` merge -> `--set` overrides -> schema checks.

Merge rules (documented in docs/spec.md): maps deep-merge (the child wins), lists and scalars
replace, and `null` under `inputs`, `blocks`, `losses` or `outputs` removes that entry of the base.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import IssueList, Location, SpecError, SpecIssue, first_line
from .library import resolve_graph
from .yaml_source import SourceMap, load_yaml_file, load_yaml_text

COLLECTIONS = ("inputs", "blocks", "losses", "outputs")
MAX_EXTENDS_DEPTH = 16


@dataclass
class Spec:
    """A resolved spec: plain data (merged, overrides applied, `extends` removed) plus where each
    value came from."""

    data: dict
    source: SourceMap = field(default_factory=SourceMap)
    file: str | None = None

    @property
    def name(self) -> str:
        return self.data.get("name", "")

    @property
    def dir(self) -> Path:
        return Path(self.file).resolve().parent if self.file else Path.cwd()

    @property
    def inputs(self) -> dict:
        return self.data.get("inputs") or {}

    @property
    def blocks(self) -> dict:
        return self.data.get("blocks") or {}

    @property
    def losses(self) -> dict:
        return self.data.get("losses") or {}

    @property
    def outputs(self) -> dict:
        return self.data.get("outputs") or {}

    def section(self, name: str) -> dict:
        from .sections import section_defaults

        return section_defaults(name, self.data.get(name))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.data)

    def locate(self, path, key: bool = False) -> Location | None:
        loc = self.source.locate(path, key=key)
        return loc or (Location(self.file) if self.file else None)

    def issues(self) -> IssueList:
        return IssueList(locate=self.locate)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False)


def fingerprint(data: dict) -> str:
    """sha256 of the canonical JSON of the resolved spec: the identity of a graph."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_spec(source, overrides=(), validate: bool = True) -> Spec:
    """Load a spec from a path, a packaged graph name ('tiny/querytf', see spec/library.py), a YAML
    string (containing a newline) or a dict.

    overrides: 'a.b.c=value' strings (value parsed as YAML), applied after `extends`.
    Raises SpecError listing every problem with its location."""
    if isinstance(source, Spec):
        data, smap, file = copy.deepcopy(source.data), source.source, source.file
    elif isinstance(source, dict):
        data, smap, file = _plain(copy.deepcopy(source)), SourceMap(), None  # keys as text, like a file
    elif isinstance(source, str) and "\n" in source:
        data, smap = load_yaml_text(source, "<string>")
        file = None
    else:
        data, smap, file = _load_with_extends(resolve_graph(source), [])
    if not isinstance(data, dict):
        raise SpecError([SpecIssue(f"a spec must be a YAML mapping, got {_type_name(data)}", (), Location(file or "<string>", 1, 1))])
    data.pop("extends", None)
    spec = Spec(data, smap, file)
    apply_overrides(spec, overrides)
    if validate:
        from .validate import validate_spec

        validate_spec(spec)
    return spec


def _type_name(value) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(value), type(value).__name__)


def _load_with_extends(path: Path, chain: list):
    data, smap = load_yaml_file(path)
    if not isinstance(data, dict):
        return data, smap, str(path)
    parents = data.get("extends")
    if parents is None:
        return data, smap, str(path)
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise SpecError([SpecIssue("extends must be a file path or a list of file paths", ("extends",), smap.locate(("extends",)))])
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise SpecError([SpecIssue(f"extends nested deeper than {MAX_EXTENDS_DEPTH} files", ("extends",), smap.locate(("extends",)))])
    merged, merged_map = {}, SourceMap()
    for i, rel in enumerate(parents):
        parent = (path.parent / rel).resolve()
        where = ("extends",) if len(parents) == 1 and isinstance(data["extends"], str) else ("extends", i)
        if parent in chain or parent == path.resolve():
            cycle = " -> ".join(str(p) for p in chain + [path.resolve(), parent])
            raise SpecError([SpecIssue(f"extends forms a cycle: {cycle}", where, smap.locate(where))])
        if not parent.exists():
            raise SpecError([SpecIssue(f"base spec '{rel}' not found (looked at {parent})", where, smap.locate(where))])
        pdata, pmap, _ = _load_with_extends(parent, chain + [path.resolve()])
        if not isinstance(pdata, dict):
            raise SpecError([SpecIssue(f"base spec '{rel}' is not a YAML mapping", where, smap.locate(where))])
        pdata.pop("extends", None)
        merged = merge(merged, pdata, merged_map, pmap)
    data = dict(data)
    data.pop("extends")
    merged = merge(merged, data, merged_map, smap)
    return merged, merged_map, str(path)


def merge(base: dict, child: dict, base_map: SourceMap, child_map: SourceMap, path=()) -> dict:
    """Deep-merge child into base (both plain data); updates base_map with child's locations."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        p = path + (key,)
        if value is None and len(path) == 1 and path[0] in COLLECTIONS:
            out.pop(key, None)  # `blocks: {head: null}` removes the base's block
            base_map.drop(p)
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, base_map, child_map, p)
            if p in child_map.keys:
                base_map.keys[p] = child_map.keys[p]
        else:
            out[key] = copy.deepcopy(value)
            base_map.drop(p)
            sub = SourceMap({q[len(p):]: v for q, v in child_map.values.items() if q[: len(p)] == p},
                            {q[len(p):]: v for q, v in child_map.keys.items() if q[: len(p)] == p})
            base_map.update(sub, p)
    if path == ():
        for table in ("values", "keys"):
            if () in getattr(child_map, table):
                getattr(base_map, table).setdefault((), getattr(child_map, table)[()])
    return out


def apply_overrides(spec: Spec, overrides) -> None:
    """Apply 'a.b.c=value' overrides in place; value is parsed as YAML ('8', 'true', '[1, 2]')."""
    issues = []
    for text in overrides or ():
        where = Location(f"--set {text}")
        if "=" not in text:
            issues.append(SpecIssue("an override must look like 'a.b.c=value'", (), where))
            continue
        dotted, raw = text.split("=", 1)
        keys = [k for k in dotted.strip().split(".")]
        if not dotted.strip() or any(not k for k in keys):
            issues.append(SpecIssue(f"bad override path '{dotted}'", (), where))
            continue
        try:
            value = _plain(yaml.safe_load(raw)) if raw.strip() else ""
        except (yaml.YAMLError, ValueError, TypeError, RecursionError) as e:
            issues.append(SpecIssue(f"value '{raw}' is not valid YAML: {first_line(e)}", tuple(keys), where))
            continue
        path, problem = _set_path(spec.data, keys, value)
        if problem:
            issues.append(SpecIssue(f"cannot set '{dotted}': {problem}", tuple(keys), where))
            continue
        spec.source.drop(path)
        spec.source.values[path] = where
        spec.source.keys[path] = where
    if issues:
        raise SpecError(issues)


def _set_path(data: dict, keys: list, value) -> tuple[tuple, str | None]:
    """Set data[k0][k1]... = value, creating missing maps; list items are addressed by index.
    Returns the document path it set (list indices as ints) and what went wrong, in the
    user's terms, or None."""
    node, path = data, []
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        where = ".".join(keys[:i]) or "<root>"
        if isinstance(node, list):
            if not k.isdigit():
                return tuple(path), f"'{k}' is not a list index ('{where}' is a list)"
            if int(k) >= len(node):
                return tuple(path), f"'{where}' has no item {k} (it has {len(node)})"
            path.append(int(k))
            if last:
                node[int(k)] = value
            else:
                node = node[int(k)]
        elif isinstance(node, dict):
            path.append(k)
            if last:
                node[k] = value
            else:
                if node.get(k) is None:
                    node[k] = {}
                node = node[k]
        else:
            return tuple(path), f"'{where}' is not a mapping"
    return tuple(path), None


def _plain(value):
    """YAML values as the file loader gives them: string keys, dates as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if type(value).__name__ in ("date", "datetime") or isinstance(value, (bytes, bytearray, set)):
        return str(value)
    return value
