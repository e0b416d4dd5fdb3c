"""What differs between two graph specs: the tool for controlled comparisons, where exactly one
thing (a head, a backbone, a loss weight) should change between two runs.

`diff_specs` returns plain rows (section, sign, item, detail); `format_diff` prints them.
`with:` values are compared after the block type's defaults are filled in, so writing a default
explicitly is not a difference.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..blocks.base import with_defaults
from ..blocks.registry import registered
from .summary import fmt_count

SECTIONS = ("graph", "inputs", "blocks", "losses", "outputs", "edges", "trainer", "serve", "params")


@dataclass(frozen=True)
class Change:
    section: str  # one of SECTIONS
    sign: str  # '+' added, '-' removed, '~' changed
    item: str  # id of the input/block/loss/output, or the edge
    detail: str = ""

    def format(self) -> str:
        return f"  {self.sign} {self.item}" + (f": {self.detail}" if self.detail else "")


def _show(value) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    import json

    return json.dumps(value, default=str)


def flatten(value, prefix="") -> dict:
    """{'a.b': leaf} for nested maps; lists are leaves (they replace as a whole, like in extends)."""
    if isinstance(value, dict) and not value:
        return {prefix: value} if prefix else {}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _leaf_changes(a: dict, b: dict) -> list[str]:
    fa, fb = flatten(a), flatten(b)
    rows = []
    for key in list(fa) + [k for k in fb if k not in fa]:
        if key not in fb:
            rows.append(f"{key} {_show(fa[key])} -> (removed)")
        elif key not in fa:
            rows.append(f"{key} (unset) -> {_show(fb[key])}")
        elif fa[key] != fb[key]:
            rows.append(f"{key} {_show(fa[key])} -> {_show(fb[key])}")
    return rows


def _effective_with(block: dict, blocks: dict) -> dict:
    decl = blocks.get(block.get("share"), block) if "share" in block else block
    cls = registered(aliases=True).get(decl.get("type"))
    params = decl.get("with") or {}
    return with_defaults(cls.params_schema, params) if cls is not None else params


def _block_label(block: dict) -> str:
    return block.get("type") or f"shares {block.get('share')}"


def _compare_collection(section, a: dict, b: dict, describe, compare) -> list[Change]:
    rows = []
    for key in a:
        if key not in b:
            rows.append(Change(section, "-", key, describe(a[key])))
    for key in b:
        if key not in a:
            rows.append(Change(section, "+", key, describe(b[key])))
        else:
            rows += [Change(section, "~", key, d) for d in compare(a[key], b[key])]
    return rows


def _edges(spec) -> set[tuple[str, str]]:
    out = set()
    for bid, block in spec.blocks.items():
        for port, ref in (block.get("in") or {}).items():
            out.add((ref, f"{bid}.{port}"))
    for name, loss in spec.losses.items():
        out.add((loss.get("from"), f"loss.{name}"))
    for name, ref in spec.outputs.items():
        out.add((ref, f"output.{name}"))
    return out


def diff_specs(a, b, params: bool = False) -> list[Change]:
    """Differences from spec a to spec b (both loaded Specs). params=True also compiles both on
    the meta device and compares parameter counts per block."""
    rows = []
    for key in ("name", "graphvla"):
        if a.data.get(key) != b.data.get(key):
            rows.append(Change("graph", "~", key, f"{_show(a.data.get(key))} -> {_show(b.data.get(key))}"))

    rows += _compare_collection(
        "inputs", a.inputs, b.inputs,
        describe=lambda d: " ".join(f"{k}={_show(v)}" for k, v in d.items()),
        compare=lambda x, y: _leaf_changes(x, y))

    def compare_blocks(x, y):
        out = []
        if x.get("type") != y.get("type") or x.get("share") != y.get("share"):
            out.append(f"{_block_label(x)} -> {_block_label(y)}")
        wx, wy = _effective_with(x, a.blocks), _effective_with(y, b.blocks)
        out += [f"with.{r}" for r in _leaf_changes(wx, wy)]
        for section in ("train", "infer", "in"):
            out += [f"{section}.{r}" for r in _leaf_changes(x.get(section) or {}, y.get(section) or {})]
        return out

    rows += _compare_collection("blocks", a.blocks, b.blocks, describe=_block_label, compare=compare_blocks)

    def describe_loss(loss):
        return f"from {loss.get('from')}, weight {loss.get('weight', 1.0):g}, stream {loss.get('stream', 'action')}"

    def compare_losses(x, y):
        defaults = {"weight": 1.0, "stream": "action"}
        return _leaf_changes({**defaults, **x}, {**defaults, **y})

    rows += _compare_collection("losses", a.losses, b.losses, describe=describe_loss, compare=compare_losses)
    rows += _compare_collection("outputs", a.outputs, b.outputs, describe=str,
                                compare=lambda x, y: [f"{x} -> {y}"] if x != y else [])

    ea, eb = _edges(a), _edges(b)
    rows += [Change("edges", "-", f"{s} -> {d}") for s, d in sorted(ea - eb, key=lambda e: (e[1], e[0]))]
    rows += [Change("edges", "+", f"{s} -> {d}") for s, d in sorted(eb - ea, key=lambda e: (e[1], e[0]))]

    for section in ("trainer", "serve"):
        rows += [Change(section, "~", r.split(" ", 1)[0], r.split(" ", 1)[1])
                 for r in _leaf_changes(a.data.get(section) or {}, b.data.get(section) or {})]

    if params:
        rows += _param_changes(a, b)
    return rows


def _param_changes(a, b) -> list[Change]:
    from .compile import compile_graph

    ca, cb = compile_graph(a).param_counts(), compile_graph(b).param_counts()
    rows = []
    for bid in list(ca) + [k for k in cb if k not in ca]:
        ta, tb = ca.get(bid, (0, 0)), cb.get(bid, (0, 0))
        if ta != tb:
            rows.append(Change("params", "~", bid, _count_change(ta, tb)))
    total_a = tuple(map(sum, zip(*ca.values()))) if ca else (0, 0)
    total_b = tuple(map(sum, zip(*cb.values()))) if cb else (0, 0)
    rows.append(Change("params", "=" if total_a == total_b else "~", "total", _count_change(total_a, total_b)))
    return rows


def _count_change(a: tuple, b: tuple) -> str:
    (ta, tra), (tb, trb) = a, b
    delta = tb - ta
    sign = "+" if delta >= 0 else "-"
    text = f"{fmt_count(ta)} -> {fmt_count(tb)} ({sign}{fmt_count(abs(delta))})"
    if (tra, trb) != (ta, tb):
        text += f", trainable {fmt_count(tra)} -> {fmt_count(trb)}"
    return text


def format_diff(a, b, rows: list[Change]) -> str:
    head = f"--- {a.file or '<a>'} ({a.name}, {a.fingerprint[:12]})\n+++ {b.file or '<b>'} ({b.name}, {b.fingerprint[:12]})"
    if a.fingerprint == b.fingerprint:
        return head + "\nno differences (same fingerprint)"
    out = [head]
    for section in SECTIONS:
        part = [r for r in rows if r.section == section]
        if part:
            out.append(section)
            out += [r.format() for r in part]
    return "\n".join(out)
