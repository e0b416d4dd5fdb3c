"""YAML -> plain data plus a map from document path to (file, line, column).

PyYAML's composer keeps the position of every node; we walk the node tree ourselves so that
every value, and every key, can be located when an error is reported. Duplicate keys are an
error here (PyYAML would silently keep the last one).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import Location, SpecError, SpecIssue


@dataclass
class SourceMap:
    """Where each path of a document came from. Paths are tuples of keys / list indices."""

    values: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)

    def locate(self, path, key: bool = False) -> Location | None:
        path = tuple(path)
        table = self.keys if key else self.values
        # Fall back to the closest located ancestor: a missing field is reported at its parent.
        while True:
            if path in table:
                return table[path]
            if key and path in self.values:
                return self.values[path]
            if not path:
                return None
            path = path[:-1]

    def update(self, other: SourceMap, prefix=()):
        for p, loc in other.values.items():
            self.values[tuple(prefix) + p] = loc
        for p, loc in other.keys.items():
            self.keys[tuple(prefix) + p] = loc

    def drop(self, prefix):
        prefix = tuple(prefix)
        n = len(prefix)
        for table in (self.values, self.keys):
            for p in [p for p in table if p[:n] == prefix]:
                del table[p]


def _loc(mark, filename) -> Location:
    return Location(filename, mark.line + 1, mark.column + 1)


def load_yaml_text(text, filename: str = "<spec>"):
    """Parse YAML text (str or bytes) into (data, SourceMap). Raises SpecError with a location."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            line, col = _line_col(text.decode("latin-1"), e.start)
            raise SpecError([_issue(f"not UTF-8 text (byte {e.start}): is this a YAML file?", filename,
                                    Location(filename, line, col))]) from None
    if "\x00" in text:
        line, col = _line_col(text, text.index("\x00"))
        raise SpecError([_issue("contains NUL bytes: this is not a YAML text file", filename, Location(filename, line, col))])
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader rejects control characters here already
        node = loader.get_single_node()
        smap = SourceMap()
        data = _walk(node, loader, (), smap, filename) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        loc = _loc(mark, filename) if mark else Location(filename)
        msg = " ".join(str(x) for x in (e.context, e.problem) if x) or "invalid YAML"
        path = getattr(e, "doc_path", ())
        block = path[1] if len(path) >= 2 and path[0] == "blocks" else None
        raise SpecError([SpecIssue(f"invalid YAML: {msg}", path, loc, block=block)]) from None
    except yaml.reader.ReaderError as e:
        line, col = _line_col(text, e.position)
        raise SpecError([_issue(f"invalid YAML: control character U+{e.character:04X} is not allowed in a YAML file", filename,
                                Location(filename, line, col))]) from None
    except yaml.YAMLError as e:
        raise SpecError([_issue(f"invalid YAML: {e}", filename)]) from None
    except RecursionError:
        raise SpecError([_issue("YAML nested too deeply", filename)]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, smap


def _line_col(text: str, position: int):
    """1-based line and column of a character offset."""
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def load_yaml_file(path):
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError([_issue("file not found", str(path))]) from None
    except IsADirectoryError:
        raise SpecError([_issue("is a directory, expected a YAML file", str(path))]) from None
    except OSError as e:
        raise SpecError([_issue(f"cannot read: {e.strerror}", str(path))]) from None
    return load_yaml_text(raw, str(path))


def _issue(message, filename, loc=None):
    return SpecIssue(message, (), loc or Location(filename))


class DocumentError(yaml.MarkedYAMLError):
    """A YAML fault found while walking the document: also knows the path it happened under."""

    def __init__(self, problem, problem_mark, doc_path=()):
        super().__init__(problem=problem, problem_mark=problem_mark)
        self.doc_path = tuple(doc_path)


MAX_DEPTH = 64  # far deeper than any spec; keeps recursion in the checks that follow bounded


def _walk(node, loader, path, smap, filename):
    smap.values[path] = _loc(node.start_mark, filename)
    if len(path) > MAX_DEPTH:
        raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=node.start_mark)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolve YAML merge keys (<<)
        out = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise DocumentError(problem="mapping keys must be plain scalars", problem_mark=key_node.start_mark, doc_path=path)
            key = _construct(loader, key_node)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise DocumentError(problem=f"unsupported key {key!r}", problem_mark=key_node.start_mark, doc_path=path)
            key = key if isinstance(key, str) else key_node.value  # as written: `off:` is the key 'off', not 'False'
            if key in out:
                raise DocumentError(
                    problem=f"duplicate key '{key}' (first defined at line {smap.keys[path + (key,)].line})",
                    problem_mark=key_node.start_mark, doc_path=path + (key,),
                )
            smap.keys[path + (key,)] = _loc(key_node.start_mark, filename)
            out[key] = _walk(value_node, loader, path + (key,), smap, filename)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(v, loader, path + (i,), smap, filename) for i, v in enumerate(node.value)]
    value = _construct(loader, node)
    if isinstance(value, (bytes, bytearray)) or type(value).__name__ in ("date", "datetime"):
        value = str(node.value)  # keep specs plain JSON-like data
    return value


def _construct(loader, node):
    """A scalar's value; a bad explicit tag (`!!int abc`) becomes a located YAML error."""
    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError:
        raise
    except (ValueError, TypeError, OverflowError, ArithmeticError) as e:
        raise yaml.MarkedYAMLError(problem=f"cannot read {node.value!r} as {node.tag}: {e}", problem_mark=node.start_mark) from None
