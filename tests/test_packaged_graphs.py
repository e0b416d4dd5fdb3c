"""Packaged graph names (`tiny/querytf` for graphvla/graphs/tiny/querytf.yaml) wherever a command takes a
graph, `graphvla graphs` (the list) and `graphvla graphs copy NAME DIR` (a copy to edit that still
validates from DIR, never overwriting)."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import spec_issues

import graphvla
from graphvla.cli import main
from graphvla.spec.library import describe, graphs_root, packaged_graphs, resolve_graph
from graphvla.spec.loader import load_spec
from graphvla.spec.schema import privileged_ports

PACKAGE = Path(graphvla.__file__).resolve().parent
ROOT = PACKAGE / "graphs"
QUERYTF = ROOT / "tiny" / "querytf.yaml"


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from an empty folder, as a user of the installed package would."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


# --- the names -------------------------------------------------------------------------------------

def test_names_are_every_graph_in_the_package_but_not_the_bases():
    on_disk = sorted(p.relative_to(ROOT).with_suffix("").as_posix() for p in ROOT.rglob("*.yaml")
                     if "base" not in p.relative_to(ROOT).parts and p.parent != ROOT / "sweeps")  # sweep files
    names = packaged_graphs()
    assert names == on_disk and names == sorted(names)
    assert {"tiny/querytf", "tiny/mlp", "metaworld/mt10-small-privileged", "metaworld/mt50", "fullsize/qwen3vl-querytf"} <= set(names)
    assert not [n for n in names if "base" in n.split("/")]
    assert graphs_root().resolve() == ROOT


def test_a_graph_is_named_privileged_exactly_when_it_has_a_privileged_port():
    """A graph that reads simulator state no robot has (a `privileged: true` input) says so in its
    file name and its `name:`, so its results cannot pass for a vision policy's."""
    for name in packaged_graphs():
        spec = load_spec(name)
        privileged = bool(privileged_ports(spec))
        assert name.endswith("-privileged") == privileged, (name, privileged_ports(spec))
        assert spec.name.endswith("-privileged") == privileged, (name, spec.name)
    assert privileged_ports(load_spec("metaworld/mt10-small-privileged")) == ["state"]
    assert privileged_ports(load_spec("metaworld/mt10-querytf-privileged")) == ["state"]
    assert privileged_ports(load_spec("metaworld/mt50")) == []


def test_a_name_with_or_without_yaml_or_as_a_checkout_path_is_the_packaged_file(elsewhere):
    for given in ("tiny/querytf", "tiny/querytf.yaml", "graphvla/graphs/tiny/querytf.yaml"):
        assert resolve_graph(given).resolve() == QUERYTF, given
    spec = load_spec("tiny/querytf")
    assert spec.name == "tiny-qwen3vl-querytf" and Path(spec.file).resolve() == QUERYTF
    # its `extends: base/qwen3vl.yaml` still resolves next to the packaged file
    assert spec.blocks["vlm"]["type"] == "backbone.hf_vlm" and spec.dir == QUERYTF.parent
    assert spec.fingerprint == load_spec(QUERYTF).fingerprint


def test_an_existing_path_wins_over_a_packaged_name(elsewhere):
    mine = elsewhere / "tiny" / "querytf.yaml"
    mine.parent.mkdir()
    mine.write_text((ROOT / "tiny" / "mlp.yaml").read_text().replace("name: tiny-mlp", "name: my-own-querytf"))
    assert load_spec("tiny/querytf.yaml").name == "my-own-querytf"
    result = run("validate", "tiny/querytf.yaml")
    assert result.exit_code == 0 and "ok (my-own-querytf" in result.output
    # no file of that exact path here: the packaged graph
    assert load_spec("tiny/querytf").name == "tiny-qwen3vl-querytf"
    assert load_spec("tiny/mlp.yaml").name == "tiny-mlp"


def test_an_unknown_name_says_did_you_mean_over_the_packaged_names(elsewhere):
    [issue] = spec_issues(load_spec, "tiny/queryft")
    assert issue.location.file == "tiny/queryft" and issue.message == "file not found"
    assert "did you mean 'tiny/querytf'?" in issue.hint
    [issue] = spec_issues(load_spec, "metaworld/mt10-small-privilegd.yaml")
    assert "did you mean 'metaworld/mt10-small-privileged'?" in issue.hint
    [issue] = spec_issues(load_spec, "zzz/qqq")
    assert "did you mean" not in issue.hint and "`graphvla graphs` lists them" in issue.hint


def test_bases_are_not_names_but_a_missing_absolute_path_is_just_missing(elsewhere, tmp_path):
    [issue] = spec_issues(load_spec, "tiny/base/qwen3vl")
    assert issue.message == "file not found" and "no packaged graph" in issue.hint
    [issue] = spec_issues(load_spec, tmp_path / "nope.yaml")
    assert issue.message == "file not found" and issue.hint is None


def test_commands_take_names(elsewhere):
    result = run("validate", "tiny/querytf")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("tiny/querytf: ok (tiny-qwen3vl-querytf, fingerprint ")
    result = run("validate", "--set", "blocks.head.with.layers=3", "tiny/querytf.yaml")
    assert result.exit_code == 0 and "ok (tiny-qwen3vl-querytf" in result.output
    result = run("diff", "tiny/querytf", "tiny/flowdit")
    assert result.exit_code == 0, result.output
    assert "head" in result.output and "head.query_transformer" in result.output and "head.flow_matching" in result.output
    result = run("validate", "tiny/queryft")
    assert result.exit_code == 1
    assert "tiny/queryft: error: <root>: file not found (and no packaged graph of that name; did you mean 'tiny/querytf'?)" \
        in result.output
    assert "Traceback" not in result.output


def test_quickstart_takes_a_name_and_stops_before_recording_on_a_bad_one(elsewhere):
    from graphvla.commands.quickstart_cmds import DEFAULT_GRAPH

    assert DEFAULT_GRAPH in packaged_graphs()
    assert resolve_graph(DEFAULT_GRAPH).resolve() == ROOT / f"{DEFAULT_GRAPH}.yaml"
    result = run("quickstart", "--graph", "metaworld/mt10-small-privilegd", "-o", elsewhere / "qs")
    assert result.exit_code == 1
    assert "graph 'metaworld/mt10-small-privilegd': file not found" in result.output
    assert "did you mean 'metaworld/mt10-small-privileged'?" in result.output
    assert not (elsewhere / "qs").exists()


def test_benchmark_adapters_come_from_the_package(elsewhere):
    from graphvla.client.adapters import BENCHMARK_DIR, load_adapter

    assert Path(str(BENCHMARK_DIR)).resolve() == PACKAGE / "configs" / "benchmarks"
    assert Path(load_adapter("metaworld").name).resolve() == PACKAGE / "configs" / "benchmarks" / "metaworld.yaml"
    with pytest.raises(FileNotFoundError, match="benchmarks: libero, metaworld, simplerenv"):
        load_adapter("nosuchbench")


# --- graphvla graphs -------------------------------------------------------------------------------

def test_graphs_lists_every_name_with_its_description():
    result = run("graphs")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == packaged_graphs()
    querytf = next(line for line in lines if line.startswith("tiny/querytf "))
    assert querytf.split(None, 1)[1] == "GraphVLA's learned-query transformer head on the tiny Qwen3-VL (not OpenVLA-OFT)."
    assert describe("tiny/mlp") == "Small from-scratch encoders and an MLP head; trains in seconds on CPU."
    assert all(len(line) < 160 for line in lines)  # folded descriptions are cut to a line
    assert "base" not in result.output.split()
    paths = run("graphs", "--paths")
    assert str(QUERYTF) in paths.output


def test_copy_writes_the_graph_its_base_and_its_tokenizer(tmp_path):
    dest = tmp_path / "mine"
    result = run("graphs", "copy", "tiny/fast", dest)
    assert result.exit_code == 0, result.output
    assert f"copied tiny/fast to {dest / 'fast.yaml'}" in result.output
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == ["base/qwen3vl.yaml", "fast.yaml", "fast_tokenizer/fast_config.json",
                       "fast_tokenizer/tokenizer.json"]
    for rel in written:
        assert (dest / rel).read_bytes() == (ROOT / "tiny" / rel).read_bytes(), rel
    copied = load_spec(dest / "fast.yaml")
    assert copied.fingerprint == load_spec("tiny/fast").fingerprint and copied.dir == dest.resolve()
    # the tokenizer the head names resolves inside the copy
    assert (copied.dir / copied.blocks["head"]["with"]["tokenizer"] / "tokenizer.json").is_file()
    # the copy reads its own base, not the package's: an edit there shows
    base = dest / "base" / "qwen3vl.yaml"
    base.write_text(base.read_text().replace("lr: 3.0e-4", "lr: 1.0e-4"))
    assert load_spec(dest / "fast.yaml").blocks["vlm"]["train"]["lr"] == 1.0e-4
    result = run("validate", dest / "fast.yaml")
    assert result.exit_code == 0 and "ok (tiny-qwen3vl-fast" in result.output


def test_copy_keeps_a_chain_that_leaves_its_folder_at_the_same_relative_paths(tmp_path):
    dest = tmp_path / "mt10"
    result = run("graphs", "copy", "metaworld/mt10-querytf-privileged.yaml", dest)
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert written == ["metaworld/mt10-querytf-privileged.yaml", "tiny/base/qwen3vl.yaml", "tiny/querytf.yaml"]
    assert load_spec(dest / "metaworld" / "mt10-querytf-privileged.yaml").fingerprint == \
        load_spec("metaworld/mt10-querytf-privileged").fingerprint


def test_copy_refuses_to_overwrite_and_writes_nothing_then(tmp_path):
    dest = tmp_path / "mine"
    (dest / "base").mkdir(parents=True)
    (dest / "base" / "qwen3vl.yaml").write_text("# my own base\n")
    result = run("graphs", "copy", "tiny/querytf", dest)
    assert result.exit_code == 1
    assert f"will not overwrite existing file: {dest / 'base' / 'qwen3vl.yaml'}" in result.output
    assert (dest / "base" / "qwen3vl.yaml").read_text() == "# my own base\n"
    assert not (dest / "querytf.yaml").exists()
    # a second copy of the same graph is refused too, and the first is kept as edited
    again = tmp_path / "again"
    assert run("graphs", "copy", "tiny/mlp", again).exit_code == 0
    (again / "mlp.yaml").write_text((again / "mlp.yaml").read_text() + "# edited\n")
    result = run("graphs", "copy", "tiny/mlp", again)
    assert result.exit_code == 1 and "will not overwrite" in result.output
    assert (again / "mlp.yaml").read_text().endswith("# edited\n")


def test_copy_of_an_unknown_name_says_did_you_mean(tmp_path):
    result = run("graphs", "copy", "fullsize/qwen3vl-querytd", tmp_path / "x")
    assert result.exit_code == 1
    assert ("fullsize/qwen3vl-querytd: error: <root>: no packaged graph of that name "
            "(did you mean 'fullsize/qwen3vl-querytf'?)") \
        in result.output
    assert not (tmp_path / "x").exists()
    result = run("graphs", "copy", "tiny/base/qwen3vl", tmp_path / "x")
    assert result.exit_code == 1 and "no packaged graph of that name" in result.output


def test_every_packaged_graph_copies_out_to_the_same_resolved_spec(tmp_path):
    from graphvla.spec.library import copy_graph

    for i, name in enumerate(packaged_graphs()):
        graph, written = copy_graph(name, tmp_path / str(i))
        assert graph in written and all(p.is_relative_to(tmp_path / str(i)) for p in written)
        assert load_spec(graph).fingerprint == load_spec(name).fingerprint, name
