"""Spec loading: extends merge rules, --set overrides, locations, did-you-mean, YAML faults,
version field, fingerprint."""
from __future__ import annotations

import textwrap

import pytest
import yaml
from conftest import flow_yaml, line_of, spec_issues

from graphvla import SpecError, load_spec, validate_graph

# tiny/mlp at 32x32 with smaller blocks, no state in the fusion and a trainer section, as text
# (leaf maps on one line): the document the loader, locator and did-you-mean tests edit and locate in
BASE = flow_yaml(load_spec("tiny/mlp", [
    "name=base", "inputs.images.size=[32, 32]", "blocks.vision.with={width: 32, patch: 16, layers: 1}",
    "blocks.language.with.width=32", "blocks.fuse.in={a: vision.hidden, b: language.pooled}", "blocks.fuse.with.width=32",
    "blocks.head={type: head.mlp, in: {context: fuse.hidden, state: inputs.state, target: inputs.actions}, "
    "with: {hidden: 64}}", "trainer={betas: [0.9, 0.95]}"], validate=False).data)


# --- extends ---------------------------------------------------------------------------------

def test_extends_deep_merges_maps_and_child_wins(write_spec):
    write_spec("base.yaml", BASE)
    child = write_spec("child.yaml", textwrap.dedent("""\
        extends: base.yaml
        name: child
        blocks:
          head:
            with: {layers: 3}
          vision:
            with: {width: 48}
        """))
    spec = load_spec(child)
    assert spec.name == "child"
    # maps deep-merge: the child's key is added, the base's other keys stay
    assert spec.blocks["head"]["with"] == {"hidden": 64, "layers": 3}
    assert spec.blocks["head"]["type"] == "head.mlp"
    assert spec.blocks["vision"]["with"] == {"width": 48, "patch": 16, "layers": 1}
    assert "extends" not in spec.data
    # locations follow the value: the override comes from the child, the rest from the base
    assert spec.locate(("blocks", "head", "with", "layers")).file == str(child)
    assert spec.locate(("blocks", "head", "with", "layers")).line == 5
    base_loc = spec.locate(("blocks", "head", "with", "hidden"))
    assert base_loc.file.endswith("base.yaml") and base_loc.line == line_of(BASE, "with: {hidden: 64}")


def test_extends_lists_replace_not_append(write_spec):
    write_spec("base.yaml", BASE)
    child = write_spec("child.yaml", "extends: base.yaml\ninputs:\n  images: {size: [64, 64]}\ntrainer: {betas: [0.8, 0.9]}\n")
    spec = load_spec(child)
    assert spec.inputs["images"] == {"kind": "image", "views": 1, "size": [64, 64]}
    assert spec.data["trainer"]["betas"] == [0.8, 0.9]


def test_extends_null_removes_entries_of_collections(write_spec):
    write_spec("base.yaml", BASE)
    child = write_spec("child.yaml", textwrap.dedent("""\
        extends: base.yaml
        inputs:
          state: null
        blocks:
          head:
            in: {state: null}
          fuse:
            in: {b: null}
          language: null
        losses:
          action: null
        """))
    # `null` deep inside a block is a value, not a removal: in.state: null is a schema error
    issues = spec_issues(validate_graph, child)
    assert any(i.path == ("blocks", "head", "in", "state") for i in issues)

    child.write_text("extends: base.yaml\ninputs: {instruction: null}\nblocks: {language: null, head: {in: {context: fuse.hidden}}}\n"
                     "losses: {action: null}\n")
    spec = load_spec(child, ["blocks.fuse.in={a: vision.hidden}"])
    assert "instruction" not in spec.inputs and "language" not in spec.blocks and spec.losses == {}
    assert spec.blocks["fuse"]["in"] == {"a": "vision.hidden"}  # --set replaces the whole map
    # `in` is a map, so the child's map merges into the base's: state stays wired
    assert spec.blocks["head"]["in"]["state"] == "inputs.state"


def test_extends_null_removal_of_a_wired_input_is_reported(write_spec):
    write_spec("base.yaml", BASE)
    child = write_spec("child.yaml", "extends: base.yaml\ninputs: {state: null}\n")
    issues = spec_issues(validate_graph, child)
    [issue] = issues
    assert issue.path == ("blocks", "head", "in", "state") and "no input 'state'" in issue.message
    assert issue.location.file.endswith("base.yaml") and issue.location.line == line_of(BASE, "state: inputs.state")


def test_extends_list_of_bases_merges_in_order(write_spec):
    write_spec("base.yaml", BASE)
    write_spec("wide.yaml", "blocks: {fuse: {with: {width: 40}}}\nname: wide\n")
    child = write_spec("child.yaml", "extends: [base.yaml, wide.yaml]\n")
    spec = load_spec(child)
    assert spec.blocks["fuse"]["with"]["width"] == 40 and spec.name == "wide"


def test_extends_in_subfolder_resolves_relative_to_the_child(write_spec):
    write_spec("lib/base.yaml", BASE)
    child = write_spec("exp/child.yaml", "extends: ../lib/base.yaml\nname: exp\n")
    assert load_spec(child).name == "exp"


def test_extends_cycle_is_reported_with_the_chain(write_spec):
    a = write_spec("a.yaml", "extends: b.yaml\nname: a\n")
    write_spec("b.yaml", "extends: a.yaml\nname: b\n")
    [issue] = spec_issues(validate_graph, a)
    assert "cycle" in issue.message and "a.yaml -> " in issue.message and "b.yaml" in issue.message
    assert issue.location.line == 1 and issue.location.file.endswith("b.yaml")


def test_extends_self_is_a_cycle(write_spec):
    a = write_spec("a.yaml", "extends: a.yaml\nname: a\n")
    [issue] = spec_issues(validate_graph, a)
    assert "cycle" in issue.message


def test_extends_missing_base_names_the_file(write_spec):
    child = write_spec("child.yaml", "name: c\nextends: nothere.yaml\n")
    [issue] = spec_issues(validate_graph, child)
    assert "nothere.yaml" in issue.message and "not found" in issue.message
    assert (issue.location.file, issue.location.line, issue.location.col) == (str(child), 2, 10)


def test_extends_bad_value(write_spec):
    child = write_spec("child.yaml", "name: c\nextends: {a: 1}\n")
    [issue] = spec_issues(validate_graph, child)
    assert "extends must be a file path" in issue.message and issue.location.line == 2


# --- --set overrides -------------------------------------------------------------------------

def test_set_scalar_parses_yaml_and_records_its_origin():
    spec = load_spec(BASE, ["blocks.head.with.hidden=96", "name=renamed", "losses.action.weight=0.5"])
    assert spec.blocks["head"]["with"]["hidden"] == 96
    assert spec.name == "renamed" and spec.losses["action"]["weight"] == 0.5
    assert str(spec.locate(("blocks", "head", "with", "hidden"))) == "--set blocks.head.with.hidden=96"


def test_set_on_lists_by_index_and_whole_list():
    spec = load_spec(BASE, ["inputs.images.size.0=64", "trainer.betas=[0.5, 0.6]"])
    assert spec.inputs["images"]["size"] == [64, 32]
    assert spec.data["trainer"]["betas"] == [0.5, 0.6]


def test_set_creates_missing_maps():
    spec = load_spec(BASE, ["blocks.head.train.lr=0.01"])
    assert spec.blocks["head"]["train"] == {"lr": 0.01}


@pytest.mark.parametrize("override, words", [
    ("noequals", "a.b.c=value"),
    ("=3", "bad override path"),
    ("blocks..head=3", "bad override path"),
    ("name.x=3", "'name' is not a mapping"),
    ("inputs.images.size.7=3", "no item 7"),
    ("inputs.images.size.x=3", "'x' is not a list index"),
    ("name=[1, 2", "not valid YAML"),
])
def test_set_bad_overrides_are_spec_errors(override, words):
    issues = spec_issues(validate_graph, BASE, [override])
    assert any(words in i.message for i in issues), [i.message for i in issues]
    assert all(str(i.location).startswith("--set ") for i in issues)


def test_set_value_is_validated_like_the_file():
    [issue] = spec_issues(validate_graph, BASE, ["blocks.head.with.hidden=wide"])
    assert issue.path == ("blocks", "head", "with", "hidden") and issue.block == "head"
    assert str(issue.location) == "--set blocks.head.with.hidden=wide"


# --- locations, did-you-mean -----------------------------------------------------------------

def test_every_error_has_file_line_column_path_and_block(write_spec):
    bad = BASE.replace("    with: {hidden: 64}", "    wiht: {hidden: 64}").replace("type: glue.fuse", "type: glue.fusion")
    path = write_spec("bad.yaml", bad)
    issues = spec_issues(validate_graph, path)
    by_path = {i.path: i for i in issues}
    typo = by_path[("blocks", "head", "wiht")]
    assert (typo.location.file, typo.location.line, typo.location.col) == (str(path), line_of(bad, "wiht:"), 5)
    assert typo.block == "head" and typo.hint == "did you mean 'with'?"
    kind = by_path[("blocks", "fuse", "type")]
    assert kind.block == "fuse" and "did you mean 'glue.fuse'" in kind.hint and kind.location.line == line_of(bad, "glue.fusion")
    text = str(SpecError(issues))
    assert f"{path}:{typo.location.line}:5: error: blocks.head.wiht: unknown key 'wiht'" in text and "[block head]" in text


def test_all_errors_are_reported_at_once():
    bad = (BASE.replace("size: [32, 32]", "size: [32, 32], colour: rgb")
           .replace("name: base", "nmae: base")
           .replace("weight: 1.0", "weight: -1"))
    issues = spec_issues(validate_graph, bad)
    messages = " | ".join(i.message for i in issues)
    assert "unknown key 'colour'" in messages and "unknown key 'nmae'" in messages
    assert "missing required key 'name'" in messages and "minimum" in messages
    # sorted in document order
    lines = [i.location.line for i in issues]
    assert lines == sorted(lines)


@pytest.mark.parametrize("old, new, words, hint", [
    ("in: {context: fuse.hidden", "in: {contxt: fuse.hidden", "no input port 'contxt'", "did you mean 'context'?"),
    ("context: fuse.hidden", "context: fuze.hidden", "no block 'fuze'", "did you mean 'fuse'?"),
    ("context: fuse.hidden", "context: fuse.hiden", "no output port 'hiden'", "did you mean 'hidden'?"),
    ("images: inputs.images", "images: inputs.image", "no input 'image'", "did you mean 'images'?"),
    ("type: head.mlp", "type: head.mpl", "unknown block type 'head.mpl'", "did you mean 'head.mlp'?"),
    ("{kind: state, dim: 8}", "{kind: stat, dim: 8}", "'stat' is not one of", "did you mean 'state'?"),
    ("from: head.loss", "from: head.los", "no output port 'los'", "did you mean 'loss'?"),
])
def test_did_you_mean(old, new, words, hint):
    issues = spec_issues(validate_graph, BASE.replace(old, new))
    match = [i for i in issues if words in i.message]
    assert match, [i.message for i in issues]
    assert match[0].hint == hint and match[0].location.line is not None


def test_unknown_type_far_from_everything_lists_the_registered_types():
    [issue] = spec_issues(validate_graph, BASE.replace("type: head.mlp", "type: zzz.qqq"))
    assert issue.hint.startswith("known: ") and "head.mlp" in issue.hint


def test_input_fields_are_checked_per_kind():
    issues = spec_issues(validate_graph, BASE.replace("{kind: state, dim: 8}", "{kind: state, horizon: 3}"))
    messages = [i.message for i in issues]
    assert "'horizon' does not apply to a state input" in messages and "a state input needs 'dim'" in messages


# --- YAML faults -----------------------------------------------------------------------------

def test_duplicate_keys_are_errors_with_both_lines(write_spec):
    path = write_spec("dup.yaml", BASE.replace("  head:\n", "  fuse:\n"))
    [issue] = spec_issues(validate_graph, path)
    assert "duplicate key 'fuse'" in issue.message and f"line {line_of(BASE, '  fuse:')}" in issue.message
    assert issue.path == ("blocks", "fuse") and issue.block == "fuse"
    assert issue.location.line == line_of(BASE, "  head:") and issue.location.file == str(path)


def test_mapping_keys_keep_their_text():
    """`off:`, `yes:` and `1.50:` are keys as written (YAML 1.1 would make them False, True, 1.5):
    names of blocks, ports and sweep variants become folder names and report rows."""
    from graphvla.spec.yaml_source import load_yaml_text

    data, smap = load_yaml_text("off: 1\nyes: 2\n1.50: 3\nx: off\n")
    assert data == {"off": 1, "yes": 2, "1.50": 3, "x": False}  # values are still typed
    assert smap.locate(("1.50",)).line == 3


@pytest.mark.parametrize("text, words", [
    ("a: [1, 2\n", "invalid YAML"),
    ("a: 1\n\tb: 2\n", "invalid YAML"),
    ("a: \x01\n", "control character U+0001"),
    ("a: !!int abc\n", "cannot read 'abc'"),
    ("a: !!python/object:os.system x\n", "constructor"),
    ("- 1\n- 2\n", "must be a YAML mapping"),
    ("\n", "must be a YAML mapping"),
    ("a: " + "[" * 100 + "]" * 100 + "\n", "nested deeper"),
])
def test_bad_yaml_text_is_located(text, words):
    [issue] = spec_issues(validate_graph, text)
    assert words in issue.message and issue.location.line is not None


def test_binary_file_and_missing_file(write_spec, tmp_path):
    path = tmp_path / "garbage.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    [issue] = spec_issues(validate_graph, path)
    assert issue.location.file == str(path) and "not UTF-8" in issue.message
    [issue] = spec_issues(validate_graph, tmp_path / "missing.yaml")
    assert issue.message == "file not found"


def test_nan_inf_and_oversized_numbers_are_errors():
    issues = spec_issues(validate_graph, BASE, ["losses.action.weight=.nan", "blocks.head.with.hidden=100000000000000000000",
                                           "blocks.head.train.lr=.inf"])
    messages = sorted(i.message for i in issues)
    assert messages == ["100000000000000000000 is too large (more than 64 bits)", "inf is not a finite number",
                        "nan is not a finite number"]


def test_names_must_be_identifiers_and_not_reserved():
    issues = spec_issues(validate_graph, BASE.replace("  head:\n", "  héad:\n"))
    assert any(i.message == "name 'héad' must be an identifier (letters, digits, _)"
               and i.location.line == line_of(BASE, "  head:") for i in issues)
    issues = spec_issues(validate_graph, BASE.replace("  head:\n", "  training:\n").replace("head.", "training."))
    assert any("reserved" in i.message and i.block == "training" for i in issues)


# --- version, fingerprint --------------------------------------------------------------------

@pytest.mark.parametrize("value, words", [
    ("2", "newer than this GraphVLA"),
    ("0", "not supported"),
    ("'1'", "expected an integer"),
])
def test_version_field(value, words):
    [issue] = spec_issues(validate_graph, BASE.replace("graphvla: 1", f"graphvla: {value}"))
    assert words in issue.message and issue.path == ("graphvla",) and issue.location.line == 1


def test_version_is_required():
    [issue] = spec_issues(validate_graph, BASE.replace("graphvla: 1\n", ""))
    assert issue.message == "missing required key 'graphvla'"


def test_fingerprint_is_stable_across_key_order_and_tracks_values():
    data = yaml.safe_load(BASE)
    reordered = {k: data[k] for k in reversed(list(data))}
    reordered["blocks"] = {k: dict(reversed(list(v.items()))) for k, v in reversed(list(data["blocks"].items()))}
    assert load_spec(data).fingerprint == load_spec(reordered).fingerprint == load_spec(BASE).fingerprint
    assert load_spec(BASE, ["blocks.head.with.hidden=65"]).fingerprint != load_spec(BASE).fingerprint
    assert len(load_spec(BASE).fingerprint) == 64


def test_fingerprint_same_through_extends_as_written_out(write_spec):
    write_spec("base.yaml", BASE)
    child = write_spec("child.yaml", "extends: base.yaml\nblocks: {head: {with: {hidden: 32}}}\n")
    merged = load_spec(child)
    flat = load_spec(BASE, ["blocks.head.with.hidden=32"])
    assert merged.fingerprint == flat.fingerprint
    assert load_spec(merged.to_yaml()).fingerprint == merged.fingerprint


def test_docs_name_every_key_of_the_schema():
    """docs/spec.md documents every key a spec can have (it fails when a key is added undocumented)."""
    from pathlib import Path

    from graphvla.spec.schema import base_schema

    doc = (Path(__file__).resolve().parent.parent / "docs" / "spec.md").read_text()
    props = base_schema()["properties"]
    sections = {
        "top": props,
        "input": props["inputs"]["additionalProperties"]["properties"],
        "block": props["blocks"]["additionalProperties"]["properties"],
        "train": props["blocks"]["additionalProperties"]["properties"]["train"]["properties"],
        "infer": props["blocks"]["additionalProperties"]["properties"]["infer"]["properties"],
        "loss": props["losses"]["additionalProperties"]["properties"],
        "trainer": props["trainer"]["properties"],
        "streams": props["trainer"]["properties"]["streams"]["additionalProperties"]["properties"],
        "serve": props["serve"]["properties"],
    }
    missing = [f"{where}.{key}" for where, keys in sections.items() for key in keys if f"`{key}" not in doc]
    assert not missing, f"undocumented keys in docs/spec.md: {missing}"
    from graphvla.blocks.base import KINDS

    assert not [k for k in KINDS if f"`{k}`" not in doc]


def test_dict_source_with_non_text_keys_is_reported_not_crashed():
    data = yaml.safe_load(BASE)
    data["inputs"][7] = {"kind": "text"}
    data["blocks"]["head"]["with"][3] = 1
    issues = spec_issues(validate_graph, data)
    assert {i.path for i in issues} == {("inputs", "7"), ("blocks", "head", "with", "3")}
