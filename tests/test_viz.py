"""graphvla viz: .dot/.mmd need nothing, .svg/.html need Graphviz's dot (skipped without it, a
failure under CI=true)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner
from conftest import require_program
from test_compiler import SHARED, TWO_HEADS

from graphvla import compile_graph
from graphvla.cli import main
from graphvla.viz import render_text
from graphvla.viz.model import COLOURS, INFERENCE_COLOUR, view

DOT_REMEDY = "install Graphviz (apt-get install graphviz)"
needs_dot = pytest.mark.usefixtures("dot")


@pytest.fixture
def dot():
    """Graphviz's `dot` (SVG and HTML pictures need it): a skip without it, a failure under CI=true."""
    return require_program("dot", DOT_REMEDY)


FROZEN = TWO_HEADS.replace("    with: {width: 32}\n  fuse:", "    with: {width: 32}\n    train: {freeze: true}\n  fuse:")


@pytest.fixture(scope="module")
def cg():
    return compile_graph(FROZEN)


def dot_nodes(text):
    return dict(re.findall(r"^\s*(n_\w+) \[(.*)\];$", text, flags=re.M))


def dot_edges(text):
    return re.findall(r"^\s*(n_\w+) -> (n_\w+) \[(.*)\];$", text, flags=re.M)


def test_view_marks_train_only_and_inference_parts(cg):
    v = view(cg)
    nodes = {n.name: n for n in v.nodes if n.role != "step"}  # the pipelines' steps: test_pipeline_steps_...
    assert set(nodes) == {"inputs.images", "inputs.instruction", "inputs.state", "inputs.actions", "vision", "language",
                          "fuse", "head", "head2", "loss.action", "loss.aux", "output.actions"}
    assert nodes["head2"].train_only and not nodes["head2"].inference  # feeds only a loss
    assert nodes["head"].inference and not nodes["head"].train_only
    assert nodes["inputs.actions"].train_only and nodes["loss.aux"].train_only
    assert nodes["language"].state == "frozen" and nodes["vision"].state == "trainable"
    assert nodes["loss.aux"].lines == ["weight 2.5"]
    assert nodes["head"].details["inputs"]["context"] == "fuse.hidden [B, 5, 32]"


def test_dot_has_one_node_per_block_with_type_params_and_colour(cg):
    text = render_text(cg, ".dot")
    nodes = dot_nodes(text)
    for bid, type_name in [("vision", "encoder.image"), ("language", "encoder.text"), ("fuse", "glue.fuse"),
                           ("head", "head.mlp"), ("head2", "head.mlp")]:
        attrs = nodes[f"n_{bid}"]
        assert f'label="{bid}\\n{type_name}\\n' in attrs and "params" in attrs
    assert 'hidden=16 layers=1' in nodes["n_head2"]
    assert f'fillcolor="{COLOURS["frozen"]}"' in nodes["n_language"] and "frozen" in nodes["n_language"]
    assert f'fillcolor="{COLOURS["trainable"]}"' in nodes["n_vision"]
    assert 'label="loss aux\\nweight 2.5"' in nodes["n_loss_aux"] and "dashed" in nodes["n_loss_aux"]
    assert "inputs.images" in nodes["n_inputs_images"] and "ellipse" in nodes["n_inputs_images"]


def test_dot_edges_carry_meta_shapes_and_styles(cg):
    edges = {(s, d): a for s, d, a in dot_edges(render_text(cg, ".dot"))}
    assert 'label="context [B, 5, 32]"' in edges[("n_fuse", "n_head")]
    assert INFERENCE_COLOUR in edges[("n_fuse", "n_head")] and "dashed" not in edges[("n_fuse", "n_head")]
    assert 'label="target [B, 8, 4]"' in edges[("n_inputs_actions", "n_head")] and "dashed" in edges[("n_inputs_actions", "n_head")]
    assert "dashed" in edges[("n_vision", "n_head2")] and INFERENCE_COLOUR not in edges[("n_vision", "n_head2")]
    assert 'label="scalar"' in edges[("n_head2", "n_loss_aux")]
    assert len(edges) == len(cg.dag.edges)


def test_dot_inference_cluster_holds_exactly_the_inference_graph(cg):
    text = render_text(cg, ".dot")
    cluster = text[text.index("subgraph cluster_inference"):text.index("\n  }\n")]
    inside = set(re.findall(r"^\s*(n_\w+) \[", cluster, flags=re.M))
    assert inside == {"n_inputs_images", "n_inputs_instruction", "n_inputs_state", "n_vision", "n_language", "n_fuse",
                      "n_head", "n_output_actions"}
    called = {n.target for n in cg.infer.graph.nodes if n.op == "call_module"}
    assert {f"n_{c}" for c in called} <= inside


def test_shared_block_is_drawn_as_its_own_node():
    text = render_text(compile_graph(SHARED), ".dot")
    nodes = dot_nodes(text)
    assert "shares vision" in nodes["n_wrist"] and COLOURS["shared"] in nodes["n_wrist"]


def test_mermaid_defines_every_node_and_edge(cg):
    text = render_text(cg, ".mmd")
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    defined = set(re.findall(r"^\s*([np]_\w+)[\[\(\{]", text, flags=re.M))
    assert defined == {n.id for n in view(cg).nodes}
    edges = re.findall(r"^\s*(n_\w+) (-->|-\.->)\|\"([^\"]*)\"\| (n_\w+)$", text, flags=re.M)
    assert len(edges) == len(cg.dag.edges)
    assert ("n_inputs_actions", "-.->", "target [B, 8, 4]", "n_head") in edges
    assert ("n_fuse", "-->", "context [B, 5, 32]", "n_head") in edges
    assert "  class n_language frozen" in lines and "  class n_loss_aux trainonly" in lines
    assert text.count("subgraph") == 3 and "  end" in lines  # the inference graph, preprocess, postprocess


def test_pipeline_steps_are_drawn_apart_reading_inputs_and_outputs(cg):
    steps = [n for n in view(cg).nodes if n.role == "step"]
    assert [(n.pipeline, n.title) for n in steps][0] == ("preprocess", "normalize")
    assert ("postprocess", "unnormalize") in [(n.pipeline, n.title) for n in steps]
    assert len(steps) == len(cg.preprocess) + len(cg.postprocess)
    text = render_text(cg, ".dot")
    cluster = text[text.index("subgraph cluster_preprocess"):]
    assert cluster.index("p_preprocess_0 [") < cluster.index("\n  }\n")
    edges = re.findall(r"^\s*([np]_\w+) -> ([np]_\w+) \[(.*)\];$", text, flags=re.M)
    assert ("n_inputs_state", "p_preprocess_0", 'label="state"') in edges
    assert ("n_output_actions", "p_postprocess_0", 'label="actions"') in edges


@needs_dot
def test_svg_is_valid_xml_with_every_node(cg):
    svg = render_text(cg, ".svg")
    root = ET.fromstring(svg)
    ids = {g.get("id") for g in root.iter("{http://www.w3.org/2000/svg}g")}
    assert {n.id for n in view(cg).nodes} <= ids
    assert "context [B, 5, 32]" in svg


@needs_dot
def test_html_is_standalone_with_details_for_every_node(cg):
    page = render_text(cg, ".html")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    urls = set(re.findall(r"(?:src|href)=\"([^\"]+)\"", page))
    assert not [u for u in urls if "://" in u or u.startswith("//")], urls
    assert "<link" not in page and "@import" not in page
    data = json.loads(re.search(r'<script type="application/json" id="node-details">(.*?)</script>', page, re.S).group(1))
    assert set(data) == {n.id for n in view(cg).nodes}
    assert data["n_head"]["info"]["type"] == "head.mlp" and data["n_head"]["info"]["with"]["hidden"] == 64
    assert data["n_language"]["info"]["trainable"] == 0
    if shutil.which("node"):  # the inline script at least parses
        script = re.findall(r"<script>(.*?)</script>", page, re.S)[0]
        done = subprocess.run(["node", "--check", "-"], input=script, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_cli_writes_each_format(tmp_path, write_spec):
    spec = write_spec("g.yaml", FROZEN)
    for fmt in (".dot", ".mmd", ".svg", ".html"):
        if fmt == ".svg":
            require_program("dot", DOT_REMEDY)  # .dot and .mmd were checked without it
        out = tmp_path / f"g{fmt}"
        result = CliRunner().invoke(main, ["viz", str(spec), "-o", str(out), "--set", "blocks.head.with.hidden=24"])
        assert result.exit_code == 0, result.output
        assert out.read_text().strip() and f"wrote {out}" in result.output
    assert "hidden=24" in (tmp_path / "g.dot").read_text()
    result = CliRunner().invoke(main, ["viz", str(spec), "-o", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "end it in .dot, .svg, .mmd, .html" in result.output
    result = CliRunner().invoke(main, ["viz", str(spec), "-o", str(tmp_path / "x.dot"), "--set", "blocks.head.type=head.nope"])
    assert result.exit_code == 1 and "unknown block type 'head.nope'" in result.output
