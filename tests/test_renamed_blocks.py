"""Renamed block types (graphvla/blocks/registry.py ALIASES): `head.oft` is now
`head.query_transformer` (GraphVLA's learned-query transformer, not OpenVLA-OFT). A spec or a run
written with the old name validates, compiles and loads exactly as before (same data, so the same
fingerprint), with a warning located at the block's `type` that names the new type. Listings show
only current names, and the packaged graphs use them. Renamed packaged graphs (starvla/* GraphVLA
designs -> fullsize/*, tiny/{oft,pi,gr00t,worldmodel-pi} -> tiny/{querytf,flowdit,dualsystem,
worldmodel-flowdit}, metaworld/mt10-oft-privileged and sweeps/backbones/*-oft* -> *-querytf*): the old
name is refused with the new one and the reason; the recorded sweep reports say what they were recorded as."""
import re
import warnings

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import graph_text

import graphvla
from graphvla.blocks import registry
from graphvla.blocks.heads.query_transformer import QueryTransformerHead
from graphvla.cli import main
from graphvla.policy.policy import Policy
from graphvla.runners.train import Trainer
from graphvla.spec.library import graphs_root, packaged_graphs
from graphvla.spec.loader import load_spec
from vlm_samples import VLMSamples, vlm_bundle

SHORT = ["trainer.max_steps=2", "trainer.batch_size=2", "trainer.warmup_steps=1"]


def _obs():
    rng = np.random.default_rng(1)
    return {"images": rng.integers(0, 255, (128, 128, 3), dtype=np.uint8), "instruction": "reach the goal",
            "state": rng.standard_normal(4).astype(np.float32)}


def test_the_old_name_builds_the_renamed_block_and_listings_show_the_new_one():
    assert registry.ALIASES == {"head.oft": "head.query_transformer"}
    assert registry.renamed("head.oft") == "head.query_transformer"
    assert registry.renamed("head.query_transformer") is None and registry.renamed(None) is None
    assert "head.oft" not in registry.registered()
    assert registry.registered(aliases=True)["head.oft"] is QueryTransformerHead
    assert registry.get_block_type("head.oft") is QueryTransformerHead
    listed = CliRunner().invoke(main, ["blocks"]).output
    assert "head.query_transformer" in listed and "head.oft " not in listed


def test_a_spec_with_the_old_name_warns_where_it_says_it(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(graph_text("tiny/querytf", "blocks.head.type=head.oft"))
    line = next(i for i, t in enumerate(old.read_text().splitlines(), 1) if "type: head.oft" in t)
    with pytest.warns(FutureWarning, match=r"blocks\.head\.type: block type 'head\.oft' was renamed 'head\.query_transformer'"):
        spec = load_spec(str(old))
    [w] = spec.warnings
    assert w.severity == "warning" and w.path == ("blocks", "head", "type") and w.location.line == line
    with pytest.warns(FutureWarning):
        result = CliRunner().invoke(main, ["validate", str(old)])
    assert result.exit_code == 0, result.output
    assert f"old.yaml:{line}:" in result.output and "write 'head.query_transformer'" in result.output
    # the same graph under the new name: the same model (same parameters, same initialization)
    new = load_spec(str(old), ["blocks.head.type=head.query_transformer"])
    assert not new.warnings and new.fingerprint != spec.fingerprint
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.manual_seed(0)
        a = graphvla.compile_graph(spec, device="cpu")
    torch.manual_seed(0)
    b = graphvla.compile_graph(new, device="cpu")
    assert type(a.model["head"]) is type(b.model["head"]) is QueryTransformerHead
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_run_trained_as_head_oft_still_loads_and_predicts_what_it_did(tmp_path):
    """A run from before the renames: its checkpoint's spec.yaml says head.oft (and the graph's old
    name tiny-qwen3vl-oft, from the file tiny/oft.yaml) and its graph.json holds that spec's
    fingerprint. It loads (with the warning) and predicts bit-identically: a run keeps its own resolved
    spec, so renaming the packaged file changes nothing for it."""
    old = tmp_path / "old.yaml"
    old.write_text(graph_text("tiny/querytf", "blocks.head.type=head.oft", "name=tiny-qwen3vl-oft"))
    with pytest.warns(FutureWarning):
        spec = load_spec(str(old), SHORT)
    trainer = Trainer.from_spec(spec, vlm_bundle(VLMSamples()), tmp_path / "run", progress=False)
    trainer.run()
    expected = Policy.from_compiled(trainer.cg, trainer.normalizer).infer(_obs())["actions"]
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002"
    assert yaml.safe_load((ckpt / "spec.yaml").read_text())["blocks"]["head"]["type"] == "head.oft"
    with pytest.warns(FutureWarning, match="head.query_transformer"):
        policy = graphvla.load_policy(tmp_path / "run")
    assert policy.metadata["fingerprint"] == spec.fingerprint and policy.metadata["name"] == "tiny-qwen3vl-oft"
    np.testing.assert_array_equal(policy.infer(_obs())["actions"], expected)


def test_packaged_graphs_use_current_names_only():
    """No packaged graph or sweep file uses an old block type name (each would warn on every use)."""
    old_names = set(registry.ALIASES)
    for name in packaged_graphs():
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            spec = load_spec(name)
        assert not {b.get("type") for b in spec.blocks.values()} & old_names, name
    for sweep in (graphs_root() / "sweeps").glob("*.yaml"):
        assert not [n for n in old_names if n + "," in sweep.read_text() or n + "\n" in sweep.read_text()], sweep


def test_an_old_graph_name_says_its_new_name_and_why(tmp_path):
    """The full-size graphs left starvla/ (they were never proven equal to starVLA): looking one up by
    its old name is an error naming where it went, not a did-you-mean to another starvla/ graph."""
    from graphvla.spec.library import MOVED
    from graphvla.errors import SpecError

    names = set(packaged_graphs())
    assert len(MOVED) == 15 and set(MOVED.values()) <= names and not set(MOVED) & names
    for name in ("oft", "gr00t", "fast", "pi"):  # now starVLA's QwenOFT, QwenGR00T, QwenFast, QwenPI themselves
        for backbone in ("qwen3vl", "qwen25vl"):
            assert f"starvla/{backbone}-{name}" not in MOVED and f"starvla/{backbone}-{name}" in names
    with pytest.raises(SpecError, match=r"renamed 'fullsize/worldmodel-flowdit': a GraphVLA design, never proven equal"):
        load_spec("starvla/worldmodel-pi")
    result = CliRunner().invoke(main, ["graphs", "copy", "starvla/worldmodel-gr00t.yaml", str(tmp_path / "x")])
    assert result.exit_code == 1 and "renamed 'fullsize/worldmodel-dualsystem'" in result.output
    assert not (tmp_path / "x").exists()


TINY_RENAMED = {"tiny/oft": ("tiny/querytf", "OpenVLA-OFT", "tiny-qwen3vl-querytf", "head.query_transformer"),
                "tiny/pi": ("tiny/flowdit", "pi0", "tiny-qwen3vl-flowdit", "head.flow_matching"),
                "tiny/gr00t": ("tiny/dualsystem", "GR00T", "tiny-qwen3vl-dualsystem", "head.dual_system"),
                "tiny/worldmodel-pi": ("tiny/worldmodel-flowdit", "pi0", "tiny-worldmodel-flowdit", "head.flow_matching")}


@pytest.mark.parametrize("old", sorted(TINY_RENAMED))
def test_an_old_tiny_graph_name_says_its_new_name_and_the_model_it_is_not(old, tmp_path):
    """The tiny graphs named after published models (OpenVLA-OFT, pi0, GR00T) hold GraphVLA's own heads:
    they carry names of their own, and the old name - as a name, with .yaml, or as a checkout path - is
    an error naming the new one and what the graph is not, in every command that takes a graph."""
    from graphvla.errors import SpecError
    from graphvla.spec.library import MOVED, packaged_path

    new, model, name, head = TINY_RENAMED[old]
    assert MOVED[old] == new and packaged_path(old) is None
    spec = load_spec(new)
    assert spec.name == name and spec.blocks["head"]["type"] == head and model not in spec.name
    hint = f"renamed '{new}': a GraphVLA design, never proven equal to {model} "
    for given in (old, old + ".yaml", "graphvla/graphs/" + old + ".yaml"):
        with pytest.raises(SpecError, match=re.escape(hint)):
            load_spec(given)
    result = CliRunner().invoke(main, ["validate", old])
    assert result.exit_code == 1 and hint in result.output and "did you mean" not in result.output
    result = CliRunner().invoke(main, ["graphs", "copy", old, str(tmp_path / "x")])
    assert result.exit_code == 1 and f"renamed '{new}'" in result.output and not (tmp_path / "x").exists()
    result = CliRunner().invoke(main, ["train", old, "--data", str(tmp_path / "none.yaml"), "-o", str(tmp_path / "run")])
    assert result.exit_code != 0 and f"renamed '{new}'" in result.output and not (tmp_path / "run").exists()


QUERYTF_RENAMED = {"metaworld/mt10-oft-privileged": ("metaworld/mt10-querytf-privileged", "metaworld-mt10-querytf-privileged"),
                   "sweeps/backbones/qwen3vl-oft": ("sweeps/backbones/qwen3vl-querytf", "sweep-backbone-qwen3vl-querytf"),
                   "sweeps/backbones/qwen3vl-oft-cotrain": ("sweeps/backbones/qwen3vl-querytf-cotrain",
                                                            "sweep-backbone-qwen3vl-querytf-cotrain"),
                   "sweeps/backbones/worldmodel-oft": ("sweeps/backbones/worldmodel-querytf", "sweep-backbone-worldmodel-querytf")}


@pytest.mark.parametrize("old", sorted(QUERYTF_RENAMED))
def test_graphs_on_the_query_transformer_no_longer_say_oft(old, tmp_path):
    """The privileged upper bound and the backbones/cotrain/aux sweeps' graphs hold GraphVLA's
    head.query_transformer: their names say so, and the old name is refused with the new one."""
    from graphvla.errors import SpecError
    from graphvla.spec.library import MOVED, packaged_path

    new, name = QUERYTF_RENAMED[old]
    assert MOVED[old] == new and packaged_path(old) is None
    spec = load_spec(new)
    assert spec.name == name and spec.blocks["head"]["type"] == "head.query_transformer" and "oft" not in spec.name
    hint = f"renamed '{new}': a GraphVLA design, never proven equal to OpenVLA-OFT "
    for given in (old, old + ".yaml", "graphvla/graphs/" + old + ".yaml"):
        with pytest.raises(SpecError, match=re.escape(hint)):
            load_spec(given)
    result = CliRunner().invoke(main, ["validate", old])
    assert result.exit_code == 1 and hint in result.output and "did you mean" not in result.output


def test_no_packaged_graph_or_sweep_names_a_graph_after_a_published_model_it_is_not():
    """Outside starvla/ and lerobot/ (each graph there proven by a parity fixture), no packaged graph's
    path or name says oft, pi or gr00t, and no sweep file points at a renamed graph."""
    from graphvla.spec.library import MOVED

    claims = re.compile(r"(^|[-/_])(oft|pi|gr00t)($|[-/_])")
    for name in packaged_graphs():
        if name.startswith(("starvla/", "lerobot/")):
            continue
        assert not claims.search(name) and not claims.search(load_spec(name).name), name
    old = {o.rsplit("/", 1)[-1] for o in MOVED if o.startswith("sweeps/")}
    for sweep in (graphs_root() / "sweeps").glob("*.yaml"):
        text = sweep.read_text()
        assert not [o for o in old if f"/{o}.yaml" in text], sweep


def test_the_recorded_sweep_reports_say_what_their_renamed_graphs_were_recorded_as():
    """docs/results/sweeps: the figures, commands and fingerprints stay as recorded (old graph paths
    included); the corrections name the current graph of every cell whose graph was renamed, and the
    old path its commands still show is refused with a hint naming that graph."""
    import json
    from pathlib import Path

    from graphvla.spec.library import MOVED
    from graphvla.runners.sweep.report import format_markdown

    root = Path(__file__).resolve().parent.parent / "docs" / "results" / "sweeps"
    seen = 0
    for results in sorted(root.glob("*/results.json")):
        report = json.loads(results.read_text())
        titles = (report.get("corrections") or {}).get("cell_titles") or {}
        for cell in report["cells"]:
            for run in cell["runs"]:
                graph = run["graph"].removeprefix("graphvla/graphs/").removesuffix(".yaml")
                if graph not in MOVED:
                    continue
                seen += 1
                assert run["train_command"].startswith(f"graphvla train {run['graph']} ")  # as recorded
                assert titles[cell["cell"]] == f"graph `{MOVED[graph]}`, recorded as `{graph}`"
        text = format_markdown(report)
        assert text == (results.parent / "results.md").read_text()
        if titles and report["sweep"] != "heads-mt10":
            assert "were renamed after the runs" in text and "OpenVLA-OFT" in text
    assert seen == 12  # backbones-mt10: 2 cells x 2 seeds; cotrain-mt10 and aux-mt10: 2 x 2 each


def test_the_plots_label_relabelled_cells_as_the_table_does():
    import json
    from pathlib import Path

    from graphvla.runners.sweep.plots import cell_label

    report = json.loads((Path(__file__).resolve().parent.parent / "docs/results/sweeps/heads-mt10/results.json").read_text())
    labels = {c["cell"]: cell_label(report, c) for c in report["cells"]}
    assert labels == {"mlp": "mlp", "oft": "oft (query_transformer)", "pi": "pi (flow_matching)",
                      "gr00t": "gr00t (dual_system)", "fast": "fast"}
    report.pop("corrections")
    assert [cell_label(report, c) for c in report["cells"]] == ["mlp", "oft", "pi", "gr00t", "fast"]
