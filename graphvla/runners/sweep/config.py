"""A sweep file: one base graph, axes of variants, training seeds, trainer overrides shared by
every cell and one evaluation. Validated like a graph spec (every problem at once, file:line:col,
unknown keys refused with "did you mean"), then expanded into runs: one per cell (a choice of one
variant per axis) and seed.

A variant is a graph file and/or `set:` overrides in `--set` form; `changes:` on its axis names
the spec paths its variants may change (checked in control.py before anything trains). A variant
may also name its own `changes:` (one-factor-at-a-time axes), and may set recording settings
(`data.record.size`, `data.record.episodes`): data axes (data_axes.py), each distinct recording
made once and shared by the cells that use it."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import IssueList, Location, SpecError, SpecIssue, did_you_mean
from ...spec.library import graphs_root, resolve_graph
from ...spec.validate import report_schema_errors
from ...spec.yaml_source import load_yaml_file

IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
PROTOCOL_NAMES = ["starvla-mt50"]
SWEEPS_FOLDER = "sweeps"  # packaged sweep files: graphvla/graphs/sweeps/NAME.yaml
DATA_PREFIX = "data.record."  # a variant's `set:` keys that vary the recording, not the graph
DATA_KEYS = ("size", "episodes")  # the recording settings an axis may vary
CHANGES = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["base", "data", "axes", "eval"],
    "properties": {
        "sweep": {"enum": [1], "description": "sweep file format version"},
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+$"},
        "description": {"type": "string"},
        "base": {"oneOf": [
            {"type": "string", "description": "the base graph: a path (relative to this file) or a packaged name"},
            {"type": "object", "additionalProperties": False, "required": ["graph"], "properties": {
                "graph": {"type": "string"},
                "set": {"type": "object", "description": "overrides of the base graph (not of variants' own graphs)"}}}]},
        "data": {"oneOf": [
            {"type": "string", "description": "a data YAML or dataset folder (relative to this file)"},
            {"type": "object", "additionalProperties": False, "required": ["record"], "properties": {
                "record": {"type": "object", "additionalProperties": False, "properties": {
                    "protocol": {"enum": PROTOCOL_NAMES},
                    "tasks": {"type": "string"},
                    "episodes": {"type": "integer", "minimum": 1},
                    "size": {"type": "integer", "minimum": 8,
                             "description": "image side; by default (and necessarily) the graph's image input size"},
                    "workers": {"type": "integer", "minimum": 1}}}}}]},
        "axes": {
            "type": "object", "minProperties": 1, "propertyNames": {"pattern": IDENT},
            "additionalProperties": {
                "type": "object", "additionalProperties": False, "required": ["variants"],
                "properties": {
                    "changes": CHANGES,
                    "variants": {
                        "type": "object", "minProperties": 1, "propertyNames": {"pattern": IDENT},
                        "additionalProperties": {
                            "type": ["object", "null"], "additionalProperties": False,
                            "properties": {"graph": {"type": "string"}, "set": {"type": "object"},
                                           "changes": {**CHANGES, "description": "this variant's own `changes:` "
                                                       "(instead of its axis's)"}}}}}}},
        "reference": {"type": "string", "pattern": IDENT,
                      "description": "a cell the report compares every other cell with (a one-factor sweep's "
                                     "recipe); by default, the best cell"},
        "seeds": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "integer", "minimum": 0}},
        "trainer": {"type": "object"},
        "eval": {
            "type": "object", "additionalProperties": False, "required": ["protocol"],
            "properties": {
                "protocol": {"enum": PROTOCOL_NAMES},
                "tasks": {"type": "string"},
                "buckets": {"type": "string"},
                "episodes": {"type": "integer", "minimum": 1},
                "workers": {"type": "integer", "minimum": 1}}},
    },
}


@dataclass(frozen=True)
class Override:
    """One `--set` override and where the sweep file wrote it."""

    text: str  # 'a.b=value' (value as JSON, which is YAML)
    path: tuple  # its path in the sweep document

    @staticmethod
    def of(key: str, value, path: tuple) -> "Override":
        return Override(f"{key}={json.dumps(value)}", path)


@dataclass(frozen=True)
class Run:
    """One training run: a cell (one variant per axis) at one seed."""

    cell: str  # 'oft' or 'oft_small' (variant names joined in axis order)
    axes: dict  # axis -> variant name
    seed: int
    graph: str  # the graph source to load: base or a variant's graph
    overrides: tuple  # Override, applied in order: trainer, variants, seed
    allowed: tuple  # spec paths the cell's axes may change
    record: tuple = ()  # Override of `data.record.KEY` (recording settings, not graph settings)

    @property
    def key(self) -> str:
        return f"{self.cell}/seed{self.seed}"

    @property
    def sets(self) -> list[str]:
        return [o.text for o in self.overrides]


@dataclass
class Sweep:
    file: str
    name: str
    description: str
    base: str  # resolved graph path
    base_set: dict  # overrides of the base graph, in `--set` form (a variant's own graph does not get them)
    data: str | dict  # resolved data path, or {'record': {...}}
    axes: dict  # axis -> {'changes': [...], 'variants': {name: {'graph', 'set'}}}
    seeds: list
    trainer: dict
    eval: dict
    source: object = field(default=None, repr=False)  # SourceMap of the file
    reference: str | None = None  # the cell the report compares others with; None: the best cell
    # data axes (data_axes.py), filled in by start_output when the cells use any recording but the base's alone:
    recordings: dict = field(default_factory=dict)  # label -> {'settings': {...}, 'data': data.yaml path}
    cell_recording: dict = field(default_factory=dict)  # cell -> label

    def base_overrides(self, seed: int) -> tuple:
        return self._graph_sets() + self._trainer_sets(seed)

    def _graph_sets(self) -> tuple:
        return tuple(Override.of(k, v, ("base", "set", k)) for k, v in self.base_set.items())

    def _trainer_sets(self, seed: int) -> tuple:
        trainer = tuple(Override.of(f"trainer.{k}", v, ("trainer", k)) for k, v in self.trainer.items())
        return trainer + (Override.of("trainer.seed", seed, ("seeds",)),)

    def runs(self) -> list[Run]:
        """Every run, cells in axis order (the first variant of each axis first), seeds inner."""
        names = list(self.axes)
        out = []
        for combo in itertools.product(*[list(self.axes[a]["variants"]) for a in names]):
            graph, sets, allowed, record = self.base, [], [], []
            for axis, variant in zip(names, combo):
                v = self.axes[axis]["variants"][variant] or {}
                if v.get("graph"):
                    graph = v["graph"]
                for key, value in (v.get("set") or {}).items():
                    o = Override.of(key, value, ("axes", axis, "variants", variant, "set", key))
                    (record if key.startswith(DATA_PREFIX) else sets).append(o)
                allowed += v.get("changes") or self.axes[axis]["changes"]
            cell = "_".join(combo)
            for seed in self.seeds:
                own = () if graph != self.base else self._graph_sets()
                trainer = self._trainer_sets(seed)
                out.append(Run(cell, dict(zip(names, combo)), seed, graph,
                               own + trainer[:-1] + tuple(sets) + trainer[-1:], tuple(allowed), tuple(record)))
        return out

    def cells(self) -> list[str]:
        seen = []
        for r in self.runs():
            if r.cell not in seen:
                seen.append(r.cell)
        return seen

    def locate(self, path) -> Location | None:
        return self.source.locate(path) if self.source is not None else None

    def to_dict(self) -> dict:
        """Plain data (OUT/sweep.json), enough to rebuild the report without the sweep file."""
        d = {"file": self.file, "name": self.name, "description": self.description, "base": self.base,
             "base_set": self.base_set, "data": self.data, "axes": self.axes, "seeds": self.seeds, "trainer": self.trainer,
             "eval": self.eval}
        if self.recordings:
            d.update(recordings=self.recordings, cell_recording=self.cell_recording)
        if self.reference is not None:
            d["reference"] = self.reference
        return d

    @staticmethod
    def from_dict(d: dict) -> "Sweep":
        return Sweep(**{k: d[k] for k in ("file", "name", "description", "base", "base_set", "data", "axes", "seeds",
                                          "trainer", "eval")},
                     recordings=d.get("recordings") or {}, cell_recording=d.get("cell_recording") or {},
                     reference=d.get("reference"))


def resolve_sweep(source) -> Path:
    """An existing path, else a packaged sweep (`smoke` or `sweeps/smoke`)."""
    path = Path(source)
    if path.exists():
        return path
    name = str(source).removeprefix(f"{SWEEPS_FOLDER}/").removesuffix(".yaml")
    packaged = graphs_root() / SWEEPS_FOLDER / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    known = sorted(p.stem for p in (graphs_root() / SWEEPS_FOLDER).glob("*.yaml"))
    raise SpecError([SpecIssue("file not found", (), Location(str(source)),
                               hint="and no packaged sweep of that name; packaged: " + ", ".join(known))])


def load_sweep(source, data_override: str | None = None) -> Sweep:
    """Read and check a sweep file; raises SpecError with every problem found."""
    path = resolve_sweep(source)
    doc, smap = load_yaml_file(path)
    issues = IssueList(locate=smap.locate)
    if not isinstance(doc, dict):
        raise SpecError([SpecIssue("a sweep file must be a YAML mapping", (), Location(str(path), 1, 1))])
    report_schema_errors(doc, SCHEMA, issues)
    issues.raise_if_errors()

    def graph_path(text, where):
        candidate = path.parent / text
        try:
            return str(resolve_graph(candidate if candidate.exists() else text))
        except SpecError as e:
            issues.add(f"graph '{text}' not found", where, hint=e.issues[0].hint)
            return text

    base_doc = doc["base"] if isinstance(doc["base"], dict) else {"graph": doc["base"]}
    base = graph_path(base_doc["graph"], ("base", "graph") if isinstance(doc["base"], dict) else ("base",))
    axes = {}
    for axis, decl in doc["axes"].items():
        variants = {}
        for name, v in decl["variants"].items():
            v = dict(v or {})
            if v.get("graph"):
                v["graph"] = graph_path(v["graph"], ("axes", axis, "variants", name, "graph"))
            variants[name] = v
        axes[axis] = {"changes": list(decl.get("changes") or []), "variants": variants}
    _check_one_graph_per_cell(axes, issues)
    _check_changes_and_data_sets(axes, doc["data"], data_override, issues)
    data = data_override or doc["data"]
    if isinstance(data, str) and data_override is None:
        resolved = path.parent / data
        if not resolved.exists():
            issues.add(f"data '{data}' not found (looked at {resolved}); give --data or `data: {{record: ...}}`",
                       ("data",))
        data = str(resolved.resolve())
    elif isinstance(data, str) and not Path(data).exists():
        issues.add(f"--data {data}: not found", ())
    evaluation = {"tasks": None, "buckets": None, "episodes": 10, "workers": 1, **doc["eval"]}
    _check_eval(evaluation, issues)
    sweep = Sweep(file=str(path), name=doc.get("name") or path.stem, description=doc.get("description", ""),
                  base=base, base_set=dict(base_doc.get("set") or {}), data=data, axes=axes,
                  seeds=list(doc.get("seeds") or [0]), trainer=dict(doc.get("trainer") or {}), eval=evaluation,
                  source=smap, reference=doc.get("reference"))
    cells = sweep.cells()
    if sweep.reference is not None and sweep.reference not in cells:
        issues.add(f"reference '{sweep.reference}' is not a cell of this sweep", ("reference",),
                   hint=did_you_mean(sweep.reference, cells) or f"one of: {', '.join(cells)}")
    issues.raise_if_errors()
    return sweep


def _check_one_graph_per_cell(axes: dict, issues: IssueList) -> None:
    with_graph = [(a, n) for a, d in axes.items() for n, v in d["variants"].items() if v.get("graph")]
    axes_with_graph = sorted({a for a, _ in with_graph})
    if len(axes_with_graph) > 1:
        a, n = next((a, n) for a, n in with_graph if a == axes_with_graph[1])
        issues.add(f"variants of axes {axes_with_graph} both name a graph, so a cell would have two; "
                   "give graphs on one axis and `set:` overrides on the others", ("axes", a, "variants", n, "graph"))


def _check_changes_and_data_sets(axes: dict, data, data_override, issues: IssueList) -> None:
    """Every variant that changes something has `changes:` (its own or its axis's); a variant's `data.record.KEY` names a
    recording setting an axis may vary, and needs a sweep that records its data."""
    for axis, decl in axes.items():
        for name, v in decl["variants"].items():
            if not decl["changes"] and not v.get("changes") and (v.get("set") or v.get("graph")):
                issues.add(f"variant '{name}' of axis '{axis}' declares no `changes:` and neither does its axis",
                           ("axes", axis, "variants", name),
                           hint="list the spec paths the variant may change, on the axis or on the variant")
            for key in v.get("set") or {}:
                where = ("axes", axis, "variants", name, "set", key)
                if key.startswith("data.") and not key.startswith(DATA_PREFIX):
                    issues.add(f"'{key}': a variant may vary the recording's settings only, as "
                               f"{', '.join(DATA_PREFIX + k for k in DATA_KEYS)}", where)
                elif key.startswith(DATA_PREFIX):
                    setting = key[len(DATA_PREFIX):]
                    if setting not in DATA_KEYS:
                        issues.add(f"'{key}' is not a recording setting an axis may vary", where,
                                   hint=f"one of {', '.join(DATA_PREFIX + k for k in DATA_KEYS)}")
                    elif data_override is not None or not isinstance(data, dict):
                        issues.add(f"'{key}' varies the recording, but the sweep trains on "
                                   f"{'--data ' + str(data_override) if data_override else 'the dataset ' + repr(data)}",
                                   where, hint="a data axis needs the sweep's `data: {record: ...}`")
                    elif not isinstance(v["set"][key], int) or isinstance(v["set"][key], bool) or v["set"][key] < 1:
                        issues.add(f"'{key}': {v['set'][key]!r} is not a positive integer", where)


def _check_eval(evaluation: dict, issues: IssueList) -> None:
    from ...sim import starvla_mt50 as P

    names = [t.strip() for t in (evaluation.get("tasks") or "").split(",") if t.strip()]
    buckets = [b.strip() for b in (evaluation.get("buckets") or "").split(",") if b.strip()]
    try:
        P.select(buckets, names)
    except ValueError as e:
        issues.add(str(e), ("eval", "tasks" if names else "buckets"))
