"""The heads-lerobot-mt10 sweep: GraphVLA-sized ACT and Diffusion Policy beside heads-mt10's MLP head.
Cheap checks, no training: the sweep file validates and its controls hold; it shares heads-mt10's data,
seeds, trainer and evaluation; the new cells differ from the base only in the policy's blocks (same
inputs, text encoder, trainer, serving); a narrower `changes:` is refused (the control is not vacuous);
the instruction reaches both heads' actions; the ResNet `width` sizes the network."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from graphvla.blocks.encoder.resnet import ResNet
from graphvla.compiler.compile import compile_graph
from graphvla.compiler.diff import diff_specs
from graphvla.runners.check import graph_arguments, synthetic_batch
from graphvla.runners.sweep import SweepRefused, check_controls, load_sweep
from graphvla.runners.sweep.control import IGNORED, change_path, documentation_only
from graphvla.spec.loader import load_spec

REPO = Path(__file__).resolve().parents[1]
HEADS = REPO / "graphvla/graphs/sweeps/heads"


@pytest.fixture(scope="module")
def checked():
    s = load_sweep("heads-lerobot-mt10")
    runs = s.runs()
    return s, runs, check_controls(s, runs)


def test_the_sweep_validates_and_its_controls_hold(checked):
    s, runs, specs = checked
    assert s.cells() == ["act", "diffusion", "mlp"] and s.seeds == [0, 1]
    assert sorted((r.cell, r.seed) for r in runs) == [(c, k) for c in ("act", "diffusion", "mlp") for k in (0, 1)]
    assert len(specs) == 6


def test_it_shares_heads_mt10s_data_seeds_steps_and_episodes(checked):
    s, _, _ = checked
    heads = load_sweep("heads-mt10")
    assert s.base == heads.base and s.data == heads.data and s.seeds == heads.seeds
    assert s.trainer == heads.trainer and s.eval == heads.eval
    # the reference cell is heads-mt10's mlp cell: the base itself
    assert s.axes["head"]["variants"]["mlp"] == heads.axes["head"]["variants"]["mlp"] == {}


def test_the_new_cells_change_only_the_policys_blocks(checked):
    _, runs, specs = checked
    for run in runs:
        base, cell = specs[run.key]
        paths = [change_path(r) for r in diff_specs(base, cell)
                 if (r.section, r.item) not in IGNORED and not documentation_only(change_path(r))]
        if run.cell == "mlp":
            assert paths == []
            continue
        assert paths and all(p.startswith("blocks.") for p in paths), (run.cell, paths)
        assert not any(p.startswith("blocks.language") for p in paths)  # the text encoder is the base's
        assert cell.data["trainer"]["seed"] == run.seed and cell.data["trainer"]["max_steps"] == 600


def test_a_narrower_axis_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(f"""\
        sweep: 1
        base: metaworld/mt10
        data: {tmp_path}
        axes:
          head:
            changes: [blocks.head]
            variants:
              act: {{graph: {HEADS / 'act-mt10.yaml'}}}
        seeds: [0]
        trainer: {{max_steps: 600}}
        eval: {{protocol: starvla-mt50, tasks: MT10, episodes: 10}}
        """))
    s = load_sweep(path)
    with pytest.raises(SweepRefused) as e:
        check_controls(s, s.runs())
    text = str(e.value)
    assert "cell 'act' (seed 0)" in text and "blocks.backbone" in text and "blocks.vision" in text


@pytest.mark.parametrize("graph", ["act-mt10.yaml", "diffusion-mt10.yaml"])
def test_the_instruction_reaches_the_actions(graph):
    torch.manual_seed(0)
    spec = load_spec(HEADS / graph)
    cg = compile_graph(spec, device="cpu")
    cg.model.eval()
    data = synthetic_batch(spec, 2, 0)
    names = graph_arguments(cg.infer)

    def act(text):
        fed = cg.feed({"images": data["images"], "state": data["state"], "instruction": [text, text]})
        args = {k: fed[k] for k in names if k in fed}
        if "noise" in names:  # the diffusion head's initial noise: the same draw for every call
            head = cg.model["head"]
            args["noise"] = head.draw_noise(2, torch.Generator().manual_seed(1), torch.device("cpu"))
        with torch.no_grad():
            return cg.infer(**args)["actions"]

    a, b, a2 = act("open the drawer"), act("close the window"), act("open the drawer")
    assert a.shape == (2, 8, 4)
    torch.testing.assert_close(a, a2, rtol=0, atol=0)
    assert (a - b).abs().max() > 1e-4


def test_resnet_width_sizes_every_stage():
    full, narrow = ResNet(18, "group_norm"), ResNet(18, "group_norm", 16)
    assert full.channels == 512 and narrow.channels == 128
    assert sum(p.numel() for p in full.parameters()) == 11_176_512  # torchvision's resnet18 without fc
    assert list(full.state_dict()) == list(narrow.state_dict())  # the same torchvision names
    assert narrow.conv1.out_channels == 16 and narrow.layer3[0].conv1.out_channels == 64
    assert narrow(torch.rand(2, 3, 64, 64)).shape == (2, 128, 2, 2)
