"""graphvla diff: one changed block shows up as exactly that change; defaults are not differences."""
from __future__ import annotations

from click.testing import CliRunner
from test_compiler import TWO_HEADS
from test_spec import BASE

from graphvla import compile_graph, load_spec
from graphvla.cli import main
from graphvla.compiler.diff import Change, diff_specs, format_diff

ONE_BLOCK_CHANGED = BASE.replace("    with: {hidden: 64}", "    with: {hidden: 96}\n    train: {lr: 0.001}")


def test_one_changed_block_is_the_only_difference():
    a, b = load_spec(BASE), load_spec(ONE_BLOCK_CHANGED)
    assert diff_specs(a, b) == [Change("blocks", "~", "head", "with.hidden 64 -> 96"),
                                Change("blocks", "~", "head", "train.lr (unset) -> 0.001")]


def test_explicit_default_is_not_a_difference():
    a = load_spec(BASE)
    b = load_spec(BASE, ["blocks.head.with.layers=2", "losses.action.stream=action"])  # both are defaults
    assert a.fingerprint != b.fingerprint
    assert diff_specs(a, b) == []


def test_added_block_loss_and_edges():
    a, b = load_spec(BASE), load_spec(TWO_HEADS)
    rows = diff_specs(a, b)
    assert Change("blocks", "+", "head2", "head.mlp") in rows
    assert Change("losses", "+", "aux", "from head2.loss, weight 2.5, stream action") in rows
    assert Change("losses", "~", "action", "weight 1.0 -> 0.7") in rows
    assert Change("edges", "+", "vision.hidden -> head2.context") in rows
    assert Change("edges", "+", "head2.loss -> loss.aux") in rows
    assert not [r for r in rows if r.sign == "-"]
    back = diff_specs(b, a)
    assert Change("blocks", "-", "head2", "head.mlp") in back and Change("edges", "-", "inputs.actions -> head2.target") in back


def test_type_swap_rewiring_inputs_and_outputs():
    b = load_spec(BASE.replace("type: encoder.text", "type: encoder.image").replace("in: {text: inputs.instruction}", "in: {images: inputs.images}")
                  .replace("language.pooled", "language.hidden").replace("  state: {kind: state, dim: 8}", "  state: {kind: state, dim: 9}"))
    rows = diff_specs(load_spec(BASE), b)
    details = {(r.section, r.item, r.detail) for r in rows}
    assert ("blocks", "language", "encoder.text -> encoder.image") in details
    assert ("blocks", "language", "in.text inputs.instruction -> (removed)") in details
    assert ("blocks", "language", "in.images (unset) -> inputs.images") in details
    assert ("inputs", "state", "dim 8 -> 9") in details
    assert ("edges", "language.hidden -> fuse.b") in {(r.section, r.item) for r in rows}


def test_params_compares_counts_compiled_on_meta():
    a, b = load_spec(BASE), load_spec(ONE_BLOCK_CHANGED)
    rows = [r for r in diff_specs(a, b, params=True) if r.section == "params"]
    pa, pb = compile_graph(a).param_counts()["head"][0], compile_graph(b).param_counts()["head"][0]
    assert [r.item for r in rows] == ["head", "total"]
    from graphvla.compiler.summary import fmt_count
    assert rows[0].detail == f"{fmt_count(pa)} -> {fmt_count(pb)} (+{fmt_count(pb - pa)})"


def test_format_and_cli(write_spec):
    pa, pb = write_spec("a.yaml", BASE), write_spec("b.yaml", ONE_BLOCK_CHANGED)
    result = CliRunner().invoke(main, ["diff", str(pa), str(pb), "--params"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"--- {pa} (base, ") and lines[1].startswith(f"+++ {pb} (base, ")
    assert lines[2:] == ["blocks", "  ~ head: with.hidden 64 -> 96", "  ~ head: train.lr (unset) -> 0.001", "params",
                         lines[6], lines[7]]
    assert lines[6].startswith("  ~ head: ") and lines[7].startswith("  ~ total: ")
    same = CliRunner().invoke(main, ["diff", str(pa), str(pa)])
    assert same.exit_code == 0 and same.output.endswith("no differences (same fingerprint)\n")
    a = load_spec(pa)
    assert format_diff(a, a, []).endswith("no differences (same fingerprint)")
    bad = CliRunner().invoke(main, ["diff", str(pa), str(pb), "--set", "blocks.head.with.hidden=x"])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
