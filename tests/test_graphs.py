"""The graphvla/graphs/ library: every graph in it (found by globbing, so a new one cannot be left
out) validates and compiles on meta tensors with its action output shaped like its action port,
the full-size graphs have the right parameter counts and need no weights on disk, switching the
head changes one block (and its losses), and the tiny and Meta-World graphs take the ports
`graphvla data metaworld` records."""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import pytest

from graphvla.compiler.compile import compile_graph
from graphvla.spec.library import packaged_graphs
from graphvla.spec.loader import load_spec

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1] / "graphvla" / "graphs"
BACKBONES = ["qwen3vl", "qwen25vl", "worldmodel"]
# the full-size family's heads by file-name suffix (GraphVLA designs, named for what they are; docs/heads.md)
HEADS = {"fast": "head.fast", "querytf": "head.query_transformer", "flowdit": "head.flow_matching", "dualsystem": "head.dual_system"}
FULLSIZE = [f"{b}-{h}" for b in BACKBONES for h in HEADS]
TINY = ["fast", "querytf", "flowdit", "dualsystem", "worldmodel-flowdit", "fast-lm"]
# backbone parameters: the published sizes of the checkpoints; the world model's is ours
BACKBONE_PARAMS = {"qwen3vl": 4_437_815_808, "qwen25vl": 3_754_622_976}
# every user-facing graph: all YAML under graphvla/graphs/ except the base/ files they extend,
# as `graphvla graphs` lists them
LIBRARY = [f"{name}.yaml" for name in packaged_graphs()]


# compiling a full-size graph on meta takes a second or two; the fast run (-m "not slow") keeps
# the ones other tests here compile anyway, the whole library runs without the filter
FAST_FULL_SIZE = {"fullsize/qwen3vl-querytf.yaml", "fullsize/qwen25vl-flowdit.yaml", "fullsize/worldmodel-dualsystem.yaml",
                  "fullsize/qwen3vl-querytf-cotrain.yaml"}
LIBRARY_PARAMS = [pytest.param(rel, marks=pytest.mark.slow)
                  if (rel.startswith("fullsize/") or rel == "examples/big-4b.yaml") and rel not in FAST_FULL_SIZE
                  else rel for rel in LIBRARY]


@functools.lru_cache(maxsize=None)
def compiled(rel: str):
    """compile_graph on meta tensors, once per graph for the whole module."""
    return compile_graph(ROOT / rel)


def test_the_library_has_every_variant():
    for name in FULLSIZE:
        assert (ROOT / "fullsize" / f"{name}.yaml").exists(), name
    for name in TINY:
        assert (ROOT / "tiny" / f"{name}.yaml").exists(), name
    # the discovery below reaches every folder of the library, and no base/ file
    assert {rel.split("/")[0] for rel in LIBRARY} == {"examples", "fullsize", "lerobot", "metaworld", "starvla", "sweeps", "tiny"}
    assert not [rel for rel in LIBRARY if rel.count("/") == 1 and rel.startswith("sweeps/")]  # sweep files
    assert {"metaworld/mt10-querytf-privileged.yaml", "metaworld/mt10-small-privileged.yaml", "metaworld/mt50.yaml",
            "tiny/mlp.yaml"} <= set(LIBRARY)
    assert not [rel for rel in LIBRARY if "/base/" in rel]
    names = [load_spec(ROOT / rel).name for rel in LIBRARY]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)


@pytest.mark.parametrize("rel", LIBRARY_PARAMS)
def test_every_library_graph_validates_and_compiles_on_meta(rel):
    spec = load_spec(ROOT / rel)  # raises SpecError with every issue if it does not validate
    assert spec.name
    actions = [p for p, d in spec.inputs.items() if d["kind"] == "action"]
    assert len(actions) == 1, actions
    port = spec.inputs[actions[0]]
    cg = compiled(rel)
    assert all(p.device.type == "meta" for p in cg.model.parameters())  # no weights allocated
    total, trainable = (sum(c[i] for c in cg.param_counts().values()) for i in (0, 1))
    assert total > 0 and trainable > 0, (total, trainable)
    # the inference graph returns every declared output, needs no training-only input, and its
    # actions are [B, horizon, dim] of the action port (a head that returns n_action_steps of its
    # denoised horizon, as Diffusion Policy does from the current observation step on: that many)
    out = next(n for n in cg.infer.graph.nodes if n.op == "output")
    assert set(out.args[0]) == set(spec.outputs)
    placeholders = {n.target for n in cg.infer.graph.nodes if n.op == "placeholder"}
    assert placeholders and not placeholders & {p for p, d in spec.inputs.items() if d.get("train_only")}
    block, _, out_port = spec.outputs["actions"].partition(".")
    steps = (spec.blocks[block].get("with") or {}).get("n_action_steps", port["horizon"])
    assert cg.shapes[(block, out_port)] == ("B", steps, port["dim"])


@pytest.mark.parametrize("name", FULLSIZE)
def test_fullsize_graph_validates_with_its_head(name):
    spec = load_spec(ROOT / "fullsize" / f"{name}.yaml")
    assert spec.name == name
    assert spec.blocks["head"]["type"] == HEADS[name.split("-")[1]]
    assert spec.outputs == {"actions": "head.actions"}
    assert (spec.inputs["actions"]["horizon"], spec.inputs["actions"]["dim"]) == (8, 7)


@pytest.mark.parametrize("backbone,head", [("qwen3vl", "querytf"), ("qwen25vl", "flowdit"), ("worldmodel", "dualsystem")])
def test_full_size_graph_compiles_on_meta_without_weights(backbone, head):
    assert not (ROOT / "fullsize" / "weights").exists()  # nothing on disk: compile must not need it
    cg = compiled(f"fullsize/{backbone}-{head}.yaml")
    counts = cg.param_counts()
    if backbone in BACKBONE_PARAMS:
        assert counts["vlm"][0] == BACKBONE_PARAMS[backbone]
    else:
        assert 50e6 < counts["vlm"][0] < 150e6
    assert all(p.device.type == "meta" for p in cg.model.parameters())
    assert cg.shapes[("head", "actions")] == ("B", 8, 7)
    if backbone != "worldmodel":
        layers = cg.shapes[("vlm", "layers")]
        assert layers[0] == "B" and layers[1] == 36 and layers[3] in (2560, 2048)


def _differences(a, b, path=()):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), path + (k,))
        return out
    return [] if a == b else [".".join(path)]


# Beyond the head block: the dual system sets its System-2 rate (how often the backbone is
# recomputed); FAST normalizes actions to [-1, 1] for its tokenizer.
EXTRA = {"dualsystem": ["blocks.vlm.infer"], "fast": ["trainer"]}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_switching_the_head_changes_only_the_head_block(backbone):
    specs = {h: load_spec(ROOT / "fullsize" / f"{backbone}-{h}.yaml").data for h in HEADS}
    for h, data in specs.items():
        diff = _differences(specs["querytf"], data)
        allowed = [d for d in diff if d.startswith("blocks.head") or d in ("name", "description")]
        extra = [d for d in diff if d not in allowed]
        assert extra == EXTRA.get(h, []), (h, extra)
        assert data["losses"] == specs["querytf"]["losses"]


# What `graphvla data metaworld` records: one 128x128 view, the instruction, a 4-d state
# (hand xyz + gripper), 4-d actions in chunks of 8 with their validity mask.
METAWORLD_PORTS = {
    "images": {"kind": "image", "views": 1, "size": [128, 128]},
    "instruction": {"kind": "text"},
    "state": {"kind": "state", "dim": 4},
    "actions": {"kind": "action", "dim": 4, "horizon": 8, "train_only": True},
    "actions_mask": {"kind": "mask", "shape": [8], "train_only": True, "optional": True},
}


@pytest.mark.parametrize("name", TINY)
def test_tiny_graphs_take_the_metaworld_ports(name):
    spec = load_spec(ROOT / "tiny" / f"{name}.yaml")
    for port, want in METAWORLD_PORTS.items():
        got = {k: v for k, v in spec.inputs[port].items() if k != "description"}
        assert got == want, (port, got)
    # beyond the recorded ports, only frames the data layer cuts from the same recording
    from graphvla.data.frames import TIME_SHIFTED

    assert set(spec.inputs) - set(METAWORLD_PORTS) <= set(TIME_SHIFTED)


def test_tiny_heads_differ_only_in_the_head_block():
    specs = {h: load_spec(ROOT / "tiny" / f"{h}.yaml").data for h in ["fast", "querytf", "flowdit", "dualsystem"]}
    for h, data in specs.items():
        extra = [d for d in _differences(specs["querytf"], data)
                 if not d.startswith("blocks.head") and d not in ("name", "description")]
        assert extra == EXTRA.get(h, []), (h, extra)


def test_cotraining_example_shares_the_vlm_module():
    cg = compiled("fullsize/qwen3vl-querytf-cotrain.yaml")
    assert sorted(cg.train) == ["action", "vlm"]
    assert "vlm_cotrain" not in cg.model  # the shared node calls the same module
    code = cg.train["vlm"].code
    # the shared module takes the VQA node's own processor-step tensors and answers
    assert "self.vlm(input_ids = vlm_cotrain_input_ids" in code and "answers = vlm_cotrain_answers)" in code


def test_metaworld_graphs_train_and_infer_on_what_graphvla_data_metaworld_records(tmp_path, metaworld_data):
    """Every graphs/metaworld graph, bound to a Meta-World recording: the robot's 4-d
    observation.state for a vision graph, the simulator's 39-d observation.environment_state for a
    privileged one (the only kind of port that may read it). The data layer fills every port, one
    train step gives a finite loss, and inference returns [B, 8, 4] actions, the Meta-World action
    width."""
    import torch

    from graphvla.commands.quickstart_cmds import DEFAULT_GRAPH
    from graphvla.runners.protocol_data import image_size as quickstart_size
    from graphvla.spec.library import resolve_graph
    from graphvla.data.api import collate, load_data
    from graphvla.data.normalize import Normalizer
    from graphvla.runners.train import dataio
    from graphvla.sim import metaworld as mw
    from graphvla.spec.schema import privileged_ports

    graphs = [rel for rel in LIBRARY if rel.startswith("metaworld/")]
    assert sorted(graphs) == ["metaworld/mt10-efficientnet.yaml", "metaworld/mt10-pretrained.yaml",
                              "metaworld/mt10-querytf-privileged.yaml", "metaworld/mt10-small-privileged.yaml",
                              "metaworld/mt10.yaml", "metaworld/mt50-efficientnet-noshift.yaml",
                              "metaworld/mt50-efficientnet.yaml", "metaworld/mt50-privileged.yaml", "metaworld/mt50.yaml"]
    size = quickstart_size(load_spec(resolve_graph(DEFAULT_GRAPH)), DEFAULT_GRAPH)  # what the quickstart records
    for rel in graphs:
        spec = load_spec(ROOT / rel)
        privileged = privileged_ports(spec) == ["state"]
        assert privileged == rel.endswith("-privileged.yaml"), rel
        state_key, state_dim = ("observation.environment_state", mw.OBS_DIM) if privileged else \
            ("observation.state", mw.STATE_DIM)
        data_yaml = tmp_path / "data.yaml"
        data_yaml.write_text(f"datasets:\n  - path: {metaworld_data}\n    keys: {{images: [observation.images.corner], "
                             f"state: {state_key}, actions: action, instruction: task}}\n")
        assert spec.inputs["images"]["size"] == [size, size] == [64, 64], rel
        assert spec.inputs["state"]["dim"] == state_dim and spec.inputs["actions"]["dim"] == mw.ACTION_DIM, rel
        bundle = load_data(data_yaml, spec)
        ds = bundle.streams["action"]
        raw = collate([ds[i] for i in range(4)])
        assert raw["state"].shape == (4, state_dim) and raw["actions"].shape == (4, 8, mw.ACTION_DIM)
        assert raw["images"].shape == (4, 1, 3, 64, 64) and raw["instruction"][0] == mw.INSTRUCTIONS["reach-v3"]
        torch.manual_seed(0)
        cg = compile_graph(spec, device="cpu")
        batch = dataio.pipelines(cg, Normalizer.from_spec(bundle.stats, spec))[0](raw)  # the preprocess pipeline
        out = cg.train["action"](**dataio.fit_batch(batch, *dataio.graph_inputs(cg.train["action"]), "action"))
        assert torch.isfinite(out["loss"]) and out["loss"] > 0, rel
        cg.model.eval()
        with torch.no_grad():
            actions = cg.infer(**dataio.fit_batch(batch, *dataio.graph_inputs(cg.infer), "infer"))["actions"]
        assert actions.shape == (4, 8, mw.ACTION_DIM) and torch.isfinite(actions).all(), rel
