"""Malformed specs never crash the compiler: each yields graphvla.SpecError whose every issue has a
location (the file and a line), never another exception.

A seeded mutation corpus starts from the valid specs in graphvla/graphs/tiny (resolved, so each mutant is
one standalone file) and applies one fault per mutant: typos in keys, wrong types, missing
fields, cycles, dimension mismatches, duplicate keys and ids, broken YAML, binary garbage, deep nesting,
huge numbers, unicode names, broken `extends`. Hypothesis adds random bytes/text and random values
in random places. Everything goes through `compile_graph` (meta device), not only `load_spec`.
"""
from __future__ import annotations

import copy
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphvla import SpecError, compile_graph, load_spec
from graphvla.blocks.registry import registered

REPO = Path(__file__).resolve().parent.parent
SEEDS = ["mlp.yaml", "querytf.yaml", "fast.yaml", "flowdit.yaml", "dualsystem.yaml", "worldmodel-flowdit.yaml"]
MUTANTS_PER_OPERATOR = 95
LAYER_LIKE = re.compile(r"layers|depth|draws|steps|tokens|max_|vocab|history|views|horizon|size|shape|layer_map")


def seed_specs():
    return {name: load_spec(REPO / "graphvla" / "graphs" / "tiny" / name).data for name in SEEDS}


# --- paths into a spec -----------------------------------------------------------------------

def walk(node, path=()):
    """Every (path, value) of a nested structure, the root excluded."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,), v
            yield from walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield path + (i,), v
            yield from walk(v, path + (i,))


def get(data, path):
    for k in path:
        data = data[k]
    return data


def put(data, path, value):
    get(data, path[:-1])[path[-1]] = value


def is_name(path) -> bool:
    """Keys the user chooses (ids of inputs/blocks/losses/outputs, names of streams and
    normalization entries); every other key is checked against a schema."""
    return (len(path) == 2 and path[0] in ("inputs", "blocks", "losses", "outputs")) or (
        len(path) == 3 and path[:2] in (("trainer", "streams"), ("trainer", "normalization"), ("serve", "key_map")))


def typo(word: str, rng: random.Random) -> str:
    ops = [
        lambda w: w[:-1] if len(w) > 1 else w + "x",
        lambda w: w + rng.choice("sxe_"),
        lambda w: (w[1] + w[0] + w[2:]) if len(w) > 2 and w[0] != w[1] else "_" + w,
        lambda w: w.upper(),
        lambda w: w.replace("_", "-") if "_" in w else w + "2",
    ]
    return rng.choice(ops)(word)


def other_type(value, rng):
    if isinstance(value, bool):
        choices = ["yes please", 0.5, [True], None]
    elif isinstance(value, int):
        choices = ["eight", 1.5, [value], {"n": value}, None, True]
    elif isinstance(value, float):
        choices = ["x", [value], None, {"w": 1}, True]
    elif isinstance(value, str):
        choices = [5, [value], {"v": value}, True, 2.5]
    elif isinstance(value, list):
        choices = ["list", 3, {"a": 1}, True]
    elif isinstance(value, dict):
        choices = ["map", 3, [1, 2], False]
    else:
        choices = ["x", 1]
    return copy.deepcopy(rng.choice(choices))


# --- mutation operators: each returns (data or text or bytes, must_fail) or None ---------------

def op_typo_key(data, rng):
    paths = [p for p, _ in walk(data) if isinstance(p[-1], str) and not is_name(p)
             and not (len(p) >= 3 and p[0] == "trainer" and p[1] in ("streams", "normalization") and len(p) == 3)]
    path = rng.choice(paths)
    parent = get(data, path[:-1])
    new = typo(path[-1], rng)
    if new in parent:
        return None
    parent[new] = parent.pop(path[-1])
    return data, True


def op_wrong_type(data, rng):
    paths = [p for p, v in walk(data) if p[0] not in ("description",) and p[-1] != "description"
             and not (len(p) == 2 and p[0] in ("inputs", "blocks", "losses")) and not isinstance(p[-1], int)]
    path = rng.choice(paths)
    put(data, path, other_type(get(data, path), rng))
    return data, True


REQUIRED = [("graphvla",), ("name",), ("inputs",), ("blocks",), ("outputs",)]


def op_missing_field(data, rng):
    paths = list(REQUIRED)
    paths += [("inputs", n, "kind") for n in data["inputs"]]
    paths += [("inputs", n, f) for n, d in data["inputs"].items() for f in ("size", "dim", "horizon", "shape") if f in d
              and not (f == "dim" and d["kind"] not in ("state", "action"))]
    paths += [("blocks", b, "type") for b, d in data["blocks"].items() if "type" in d]
    paths += [("losses", n, "from") for n in data.get("losses", {})]
    # a required port of a block that is used
    for b, d in data["blocks"].items():
        cls = registered().get(d.get("type"))
        if cls is None:
            continue
        for port, decl in cls.ports_for({})[0].items():
            if not decl.optional and port in d.get("in", {}):
                paths.append(("blocks", b, "in", port))
    path = rng.choice(paths)
    del get(data, path[:-1])[path[-1]]
    return data, True


def op_remove_block(data, rng):
    referenced = {ref.split(".")[0] for _, ref in walk(data) if isinstance(ref, str) and re.fullmatch(r"\w+\.\w+", ref)}
    ids = [b for b in data["blocks"] if b in referenced]
    del data["blocks"][rng.choice(ids)]
    return data, True


def _graph(data):
    """block -> set of blocks it reads from."""
    deps = {}
    for b, d in data["blocks"].items():
        deps[b] = {ref.split(".")[0] for ref in (d.get("in") or {}).values() if not ref.startswith("inputs.")}
    return deps


def _descendants(deps, b):
    out, todo = {b}, [b]
    while todo:
        cur = todo.pop()
        for other, srcs in deps.items():
            if cur in srcs and other not in out:
                out.add(other)
                todo.append(other)
    return out


def op_cycle(data, rng):
    """Rewire an input port of a block to an output of one of its descendants (or itself) whose
    kind the port accepts: a cycle with compatible kinds."""
    deps, types = _graph(data), registered()
    options = []
    for b, d in data["blocks"].items():
        cls = types.get(d.get("type") or data["blocks"].get(d.get("share", ""), {}).get("type"))
        if cls is None:
            continue
        in_ports = cls.ports_for(d.get("with") or {})[0]
        for w in _descendants(deps, b):
            wd = data["blocks"][w]
            wcls = types.get(wd.get("type") or data["blocks"].get(wd.get("share", ""), {}).get("type"))
            if wcls is None:
                continue
            for oport, odecl in wcls.ports_for(wd.get("with") or {})[1].items():
                for iport, idecl in in_ports.items():
                    if idecl.accepts(odecl.kind) and not odecl.train_only:
                        options.append((b, iport, f"{w}.{oport}"))
    if not options:
        return None
    b, port, ref = rng.choice(options)
    data["blocks"][b].setdefault("in", {})[port] = ref
    return data, True


def op_dimension_mismatch(data, rng):
    options = []
    for b, d in data["blocks"].items():
        target = (d.get("in") or {}).get("target")
        if target and target.startswith("inputs."):
            decl = data["inputs"][target.split(".")[1]]
            options.append(("horizon", b, decl["horizon"] + rng.randint(1, 5)))
            options.append(("action_dim", b, decl["dim"] + rng.randint(1, 5)))
        if d.get("type") == "encoder.image":
            options.append(("patch", b, 7))
    if not options:
        return None
    key, b, value = rng.choice(options)
    data["blocks"][b].setdefault("with", {})[key] = value
    return data, True


def op_unicode_name(data, rng):
    section = rng.choice(["blocks", "inputs"])
    old = rng.choice([n for n in data[section] if _is_referenced(data, section, n)])
    new = rng.choice(["héad", "视觉", "vision🙂", "naïve", "Ωmega", "a\u200bb", "ｆｕｌｌ"])
    data[section] = {(new if k == old else k): v for k, v in data[section].items()}
    return data, True


def _is_referenced(data, section, name):
    prefix = "inputs." + name if section == "inputs" else name + "."
    return any(isinstance(v, str) and (v == prefix or v.startswith(prefix) if section == "blocks" else v == prefix)
               for _, v in walk(data))


def op_unicode_ref(data, rng):
    paths = [p for p, v in walk(data) if isinstance(v, str) and re.fullmatch(r"\w+\.\w+", v) and p[0] != "description"]
    path = rng.choice(paths)
    src, port = get(data, path).split(".")
    put(data, path, rng.choice([f"{src}é.{port}", f"{src}.{port}ü", f"{src}.{port}\u00a0", f"{src}。{port}"]))
    return data, True


def op_huge_number(data, rng):
    paths = [p for p, v in walk(data) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    path = rng.choice(paths)
    big = [10**19, -(10**25), 2**64, 10**40, 1e308, float("inf"), float("nan"), -1, 0]
    if not LAYER_LIKE.search(str(path[-1])):
        big += [10**9, 10**12, 2**40]  # allocation-sized but fine on meta, or overflows inside torch
    put(data, path, rng.choice(big))
    return data, False  # 10**9 as a width is legal on meta


def op_deep_nesting(data, rng):
    paths = [p for p, _ in walk(data) if not isinstance(p[-1], int) and p[-1] != "description"]
    path = rng.choice(paths)
    depth = rng.choice([5, 30, 63, 80, 300])
    value = 1
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {"k": value}
    put(data, path, value)
    return data, True


def op_duplicate_key(text, rng):
    lines = text.splitlines(keepends=True)
    keyed = [i for i, line in enumerate(lines) if re.match(r"^\s*[A-Za-z_]\w*:", line)]
    i = rng.choice(keyed)
    indent, key = re.match(r"^(\s*)([A-Za-z_]\w*):", lines[i]).groups()
    lines.insert(i, f"{indent}{key}: 1\n")
    return "".join(lines), True


def op_duplicate_id(text, rng):
    """Copy a whole block (or input) under its own id right after itself: a duplicate id."""
    lines = text.splitlines(keepends=True)
    section = rng.choice(["blocks:\n", "inputs:\n"])
    start = lines.index(section) + 1
    ids = [i for i in range(start, len(lines)) if re.match(r"^  [A-Za-z_]\w*:", lines[i])]
    ids = [i for i in ids if all(not re.match(r"^\S", line) for line in lines[start:i])]  # still inside the section
    i = rng.choice(ids)
    end = i + 1
    while end < len(lines) and lines[end].startswith("   "):
        end += 1
    lines[end:end] = lines[i:end]
    return "".join(lines), True


def op_broken_yaml(text, rng):
    lines = text.splitlines(keepends=True)
    i = rng.randrange(len(lines))
    breakers = ["{unclosed: [1, 2\n", "\tname: tab\n", "key: value: more\n", "- a\nb: 1\n", "  ? [complex]\n  : 1\n",
                "&anchor\n", "*undefined_alias\n", "!!int notanint\n", "'unterminated\n", "%YAML 9.9\n", "@reserved\n"]
    lines.insert(i, rng.choice(breakers))
    return "".join(lines), False  # a few insertions stay valid YAML and even a valid spec


def op_truncate(text, rng):
    cut = rng.randrange(1, max(2, len(text) // 2))
    return text[:cut], True  # at most half a spec is left: outputs (last) are gone


def op_binary_garbage(text, rng):
    if rng.random() < 0.5:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))), True
    raw = text.encode()
    at = rng.randrange(len(raw))
    junk = bytes(rng.choice([0, 1, 7, 0x1B, 0xFF, 0xFE, 0xC3, 0x80, 0x9D]) for _ in range(rng.randrange(1, 8)))
    return raw[:at] + junk + raw[at:], False  # 0xC3 0x80 is valid UTF-8 ('À') inside a description


DATA_OPERATORS = [op_typo_key, op_wrong_type, op_missing_field, op_remove_block, op_cycle, op_dimension_mismatch,
                  op_unicode_name, op_unicode_ref, op_huge_number, op_deep_nesting]
TEXT_OPERATORS = [op_duplicate_key, op_duplicate_id, op_broken_yaml, op_truncate, op_binary_garbage]


def mutants(rng):
    seeds = seed_specs()
    for op in DATA_OPERATORS + TEXT_OPERATORS:
        made = tries = 0
        while made < MUTANTS_PER_OPERATOR and tries < 5 * MUTANTS_PER_OPERATOR:
            tries += 1
            # compile-heavy faults use the cheapest seed most of the time
            name = "mlp.yaml" if op in (op_dimension_mismatch, op_huge_number) and rng.random() < 0.8 else rng.choice(SEEDS)
            data = copy.deepcopy(seeds[name])
            if op in TEXT_OPERATORS:
                result = op(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), rng)
            else:
                result = op(data, rng)
            if result is None:
                continue
            made += 1
            yield op.__name__, name, result


def check_issues(error: SpecError, files):
    assert error.issues, "a SpecError without issues"
    for issue in error.issues:
        loc = issue.location
        assert loc is not None and loc.file in files, f"{issue.format()} (expected a location in {files})"
        assert loc.line is not None and loc.line >= 1, issue.format()
        assert issue.message


def test_mutation_corpus_yields_located_spec_errors(tmp_path):
    rng = random.Random(20260511)
    outcomes, failures = Counter(), []
    for n, (op, seed, (content, must_fail)) in enumerate(mutants(rng)):
        path = tmp_path / f"m{n:04d}_{op}.yaml"
        if isinstance(content, dict):
            content = yaml.safe_dump(content, sort_keys=False, allow_unicode=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        try:
            compile_graph(path)
        except SpecError as e:
            check_issues(e, {str(path)})
            outcomes[(op, "error")] += 1
            continue
        except Exception as e:  # noqa: BLE001 - the point of the test
            failures.append(f"{path.name} ({seed}): {type(e).__name__}: {e}")
            continue
        outcomes[(op, "ok")] += 1
        if must_fail:
            failures.append(f"{path.name} ({seed}): compiled, but {op} must make it invalid")
    assert not failures, "\n".join(failures[:20])
    errors = sum(v for (op, kind), v in outcomes.items() if kind == "error")
    assert errors >= 1000, outcomes
    for op in DATA_OPERATORS + TEXT_OPERATORS:  # every operator produced errors
        assert outcomes[(op.__name__, "error")] >= MUTANTS_PER_OPERATOR // 2, outcomes


def test_broken_extends_chains_are_located(tmp_path):
    rng = random.Random(7)
    base = yaml.safe_dump(seed_specs()["mlp.yaml"], sort_keys=False)
    (tmp_path / "base.yaml").write_text(base)
    cases = [
        ("extends: missing.yaml\n", "not found"),
        ("extends: child.yaml\n", "cycle"),
        ("extends: [base.yaml, 3]\n", "extends must be"),
        ("extends: {a: b}\n", "extends must be"),
        ("extends: base.yaml\nblocks: {head: {in: {context: nothing.hidden}}}\n", "no block 'nothing'"),
        ("extends: base.yaml\nblocks: {fuse: null}\n", "no block 'fuse'"),
        ("extends: base.yaml\nblocks: {head: {with: {hidden: -5}}}\n", "minimum"),
        ("extends: garbage.yaml\n", "not UTF-8"),
    ]
    (tmp_path / "garbage.yaml").write_bytes(bytes(rng.randrange(128, 256) for _ in range(64)))
    files = {str(tmp_path / f) for f in ("child.yaml", "base.yaml", "garbage.yaml")} | {str((tmp_path / f).resolve()) for f in ("base.yaml", "garbage.yaml")}
    for text, words in cases:
        (tmp_path / "child.yaml").write_text(text)
        with pytest.raises(SpecError) as info:
            compile_graph(tmp_path / "child.yaml")
        check_issues(info.value, files)
        assert any(words in i.message for i in info.value.issues), (text, info.value)


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_random_bytes_and_text_are_spec_errors(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("rnd") / "spec.yaml"
    path.write_bytes(raw)
    with pytest.raises(SpecError) as info:
        compile_graph(path)
    check_issues(info.value, {str(path)})


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_values_anywhere_never_crash(tmp_path_factory, data):
    spec = copy.deepcopy(seed_specs_cached()["mlp.yaml"])
    paths = [p for p, _ in walk(spec)]
    path = data.draw(st.sampled_from(paths))
    put(spec, path, data.draw(JSONISH))
    file = tmp_path_factory.mktemp("val") / "spec.yaml"
    file.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    try:
        compile_graph(file)
    except SpecError as e:
        check_issues(e, {str(file)})


_SEED_CACHE = {}


def seed_specs_cached():
    if not _SEED_CACHE:
        _SEED_CACHE.update(seed_specs())
    return _SEED_CACHE
