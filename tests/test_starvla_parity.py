"""graphs/starvla/qwen3vl-oft (and qwen25vl-oft, on fixtures/starvla/qwenoft_qwen25) is starVLA's QwenOFT: with the weights starVLA's own code initialised
(tests/fixtures/starvla/qwenoft, written by scripts/parity/starvla.py from starVLA at commit 0ed0aad
on a tiny Qwen3-VL, float32 on the CPU), the packaged graph gives starVLA's training loss and
predicted actions on the same batch within 1e-5. No starVLA code is imported: only its numbers.
Every key of starVLA's state_dict maps to exactly one key of the graph's."""
from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from graphvla.blocks.backbones.hf_vlm import PLACEHOLDER, placeholder_suffix
from graphvla.compiler.compile import compile_graph
from graphvla.errors import SpecError
from graphvla.processors.base import Pipeline
from graphvla.spec.loader import load_spec
from graphvla.runners.importers.starvla import graph_key
from starvla_samples import FixtureSamples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from starvla_weights import load_state, state_metadata  # noqa: E402  (bench/: the fixtures' weights store)

warnings.filterwarnings("ignore")
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "starvla" / "qwenoft"
GRAPH = Path(__file__).resolve().parents[1] / "graphvla" / "graphs" / "starvla" / "qwen3vl-oft.yaml"
STATE_GRAPH = GRAPH.with_name("qwen3vl-oft-state.yaml")
# the same framework on Qwen2.5-VL (starVLA's QWen2_5 interface; scripts/parity/starvla.py --vlm qwen25)
FIXTURE_25 = FIXTURE.with_name("qwenoft_qwen25")
GRAPH_25 = GRAPH.with_name("qwen25vl-oft.yaml")
TOL = 1e-5

def case(name="case", fixture=FIXTURE):
    """(case.json, the tensors of a case): `case` (the plain instruction) or `case_cot` (starVLA's
    datasets.vla_data.CoT_prompt set; the same inputs, the same weights)."""
    meta = json.loads((fixture / "case.json").read_text())
    data = load_file(str(fixture / f"{name}.safetensors"))
    if name != "case":
        data.update({k: v for k, v in load_file(str(fixture / "case.safetensors")).items() if k in ("images", "actions")})
    return meta, data


def fixture_spec(meta, graph=GRAPH, fixture=FIXTURE) -> dict:
    """The packaged graph with the fixture's sizes: the tiny Qwen3-VL (its config and processor from
    the fixture, float32, weights to be loaded), the case's views, image size, horizon and action width."""
    spec = copy.deepcopy(load_spec(str(graph)).data)
    config = json.loads((fixture / "vlm" / "config.json").read_text())
    vlm = spec["blocks"]["vlm"]["with"]
    for key in ("model", "dtype", "gradient_checkpointing"):
        vlm.pop(key, None)
    vlm.update(config=config, processor=str(fixture / "vlm"), action_placeholders=meta["horizon"])
    h, a = meta["horizon"], meta["action_dim"]
    spec["inputs"]["images"].update(views=meta["views"], size=[meta["image_size"]] * 2)
    spec["inputs"]["actions"].update(dim=a, horizon=h)
    spec["inputs"]["actions_mask"]["shape"] = [h]
    return spec


def fixture_graph(graph=GRAPH, fixture=FIXTURE, **vlm_with):
    meta, _ = case(fixture=fixture)
    spec = fixture_spec(meta, graph, fixture)
    spec["blocks"]["vlm"]["with"].update(vlm_with)
    cg = compile_graph(spec, device="cpu")
    state = load_state(fixture)
    mapped = {graph_key(k): v for k, v in state.items()}  # the importer's mapping
    assert None not in mapped and len(mapped) == len(state)  # no two starVLA keys land on one graph key
    assert set(mapped) == set(cg.model.state_dict())  # every key accounted for, both ways
    cg.model.load_state_dict(mapped, strict=True)
    cg.model.eval()
    return cg


@pytest.fixture(scope="module")
def graph():
    return fixture_graph()


@pytest.fixture(scope="module", params=["qwen3vl", "qwen25vl"])
def parity(request, graph):
    """(compiled graph, its fixture folder): the plain-instruction case on Qwen3-VL and on Qwen2.5-VL."""
    if request.param == "qwen3vl":
        return graph, FIXTURE
    return fixture_graph(GRAPH_25, FIXTURE_25), FIXTURE_25


def batch(data, meta, targets=True):
    images = data["images"].permute(0, 1, 4, 2, 3).float() / 255  # uint8 [B, V, H, W, 3] -> [B, V, 3, H, W] in [0, 1]
    out = {"images": images, "instruction": list(meta["instructions"])}
    if "state" in data:  # already in [-1, 1], as starVLA was given it (cg.feed does not normalize)
        out["state"] = data["state"]
    if targets:
        out["actions"] = data["actions"]
        out["actions_mask"] = torch.ones(data["actions"].shape[:2], dtype=torch.bool)
    return out


def test_the_fixture_is_starvla_qwenoft_at_the_pinned_commit():
    meta, data = case()
    assert meta["framework"] == "QwenOFT" and meta["starvla_commit"].startswith("0ed0aad")
    assert meta["dtype"] == "float32" and meta["action_token"] == PLACEHOLDER
    assert state_metadata(FIXTURE)["starvla_commit"] == meta["starvla_commit"]
    assert data["predicted_actions"].shape == (len(meta["instructions"]), meta["horizon"], meta["action_dim"])


def test_prompt_and_placeholders_are_starvlas(parity):
    """The processor step writes starVLA's prompt: the token ids equal those starVLA fed its VLM
    (starVLA pads on the left, the step on the right: the real tokens of each row are compared)."""
    graph, fixture = parity
    meta, data = case(fixture=fixture)
    made = graph.feed(batch(data, meta, targets=False))
    ours, our_mask = made["vlm_input_ids"], made["vlm_attention_mask"].bool()
    theirs, their_mask = data["input_ids"], data["attention_mask"].bool()
    for i in range(len(meta["instructions"])):
        assert ours[i][our_mask[i]].tolist() == theirs[i][their_mask[i]].tolist(), i
    h = meta["horizon"]
    assert placeholder_suffix(h, PLACEHOLDER) == f" Please predict the next {h} robot actions: <action>{PLACEHOLDER * h}<action>."
    vlm = graph.model["vlm"]
    assert int((ours == vlm.placeholder_id).sum()) == h * len(meta["instructions"])


def test_training_loss_and_placeholder_states_match_starvla(parity):
    graph, fixture = parity
    meta, data = case(fixture=fixture)
    b = batch(data, meta)
    with torch.no_grad():
        loss = graph.train["action"](**graph.feed(b, "action"))["loss"]
        fed = graph.feed(batch(data, meta, targets=False))
        queries = graph.model["vlm"](**{k[len("vlm_"):]: v for k, v in fed.items()})["action_hidden"]
    diff_q = (queries - data["action_queries"]).abs().max().item()
    diff = abs(loss.item() - data["loss"].item())
    print(f"loss {loss.item():.7f} vs starVLA {data['loss'].item():.7f} (|diff| {diff:.2e}); "
          f"placeholder hidden states max |diff| {diff_q:.2e}")
    assert diff_q <= TOL
    assert diff <= TOL


def test_predicted_actions_match_starvla(parity):
    graph, fixture = parity
    meta, data = case(fixture=fixture)
    with torch.no_grad():
        actions = graph.infer(**graph.feed(batch(data, meta, targets=False)))["actions"]
    diff = (actions - data["predicted_actions"]).abs().max().item()
    print(f"predicted actions max |diff| {diff:.2e}")
    assert actions.shape == data["predicted_actions"].shape
    assert diff <= TOL


def test_the_loss_is_l1_mean_and_a_changed_weight_breaks_parity(graph):
    """The reduction is torch's L1Loss mean over every step and dimension; and the comparison can
    fail: one head weight changed moves the actions far beyond the tolerance."""
    meta, data = case()
    with torch.no_grad():
        fed = graph.feed(batch(data, meta, targets=False))
        actions = graph.infer(**fed)["actions"]
        loss = graph.train["action"](**graph.feed(batch(data, meta), "action"))["loss"]
        assert abs(loss.item() - torch.nn.L1Loss()(actions, data["actions"]).item()) <= 1e-6
        head = graph.model["head"]
        saved = head.linear_out.bias.clone()
        try:
            head.linear_out.bias.add_(0.01)
            moved = graph.infer(**fed)["actions"]
        finally:
            head.linear_out.bias.copy_(saved)
    assert (moved - data["predicted_actions"]).abs().max().item() > 100 * TOL


def test_the_qwen25_fixture_is_starvlas_qwen25_interface_and_its_graph_compiles_at_full_size():
    """The Qwen2.5-VL fixture went through starVLA's Qwen2.5-VL interface (picked by the base VLM's
    name), on images whose side is a multiple of 28 (its qwen_vl_utils resize leaves them alone);
    starvla/qwen25vl-oft is Qwen2.5-VL-3B (width 2048) with starVLA's 2 x width MLP-ResNet."""
    meta, data = case(fixture=FIXTURE_25)
    assert meta["framework"] == "QwenOFT" and meta["starvla_commit"].startswith("0ed0aad")
    assert meta["vlm_interface"].endswith("QWen2_5._QWen_VL_Interface") and meta["image_size"] % 28 == 0
    assert json.loads((FIXTURE_25 / "vlm" / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    assert state_metadata(FIXTURE_25)["starvla_commit"] == meta["starvla_commit"]
    assert data["predicted_actions"].shape == (len(meta["instructions"]), meta["horizon"], meta["action_dim"])
    cg = compile_graph(GRAPH_25)  # meta: Qwen2.5-VL-3B from the bundled config
    assert cg.shapes[("vlm", "action_hidden")][1:] == (8, 2048)
    head = cg.model["head"]
    assert head.linear_in.weight.shape == (4096, 2048) and len(head.blocks) == 2


def test_the_packaged_graph_compiles_at_full_size_and_errors_name_the_field():
    cg = compile_graph(GRAPH)  # meta: Qwen3-VL-4B from the bundled config
    assert cg.shapes[("vlm", "action_hidden")][1:] == (8, 2560)
    head = cg.model["head"]
    assert head.linear_in.weight.shape == (5120, 2560) and len(head.blocks) == 2  # starVLA: hidden = 2 x VLM width
    spec = yaml.safe_load(GRAPH.read_text())
    spec["blocks"]["vlm"]["with"]["action_placeholders"] = 4  # 4 placeholder tokens for a chunk of 8 steps
    with pytest.raises(SpecError, match="tokens"):
        compile_graph(spec)
    spec["blocks"]["vlm"]["with"].update(action_placeholders=8, action_vocab=16)
    with pytest.raises(SpecError, match="action_placeholders"):
        compile_graph(spec)


def test_the_prompt_survives_saving_the_pipeline_and_too_few_placeholders_are_named(graph, tmp_path):
    """A run folder's preprocess pipeline keeps the placeholder prompt: saved and loaded back, the
    step makes the same token ids. A row without enough placeholders is an error naming the block."""
    meta, data = case()
    step = next(s for s in graph.preprocess if getattr(s, "block", "") == "vlm")
    assert step.settings()["suffix"] == placeholder_suffix(meta["horizon"], PLACEHOLDER)
    Pipeline("preprocess", [step]).save(tmp_path)
    loaded = Pipeline.load(tmp_path, "preprocess")
    b = batch(data, meta, targets=False)
    assert torch.equal(loaded(dict(b))["vlm.input_ids"], step(dict(b))["vlm.input_ids"])
    vlm = graph.model["vlm"]
    ids = step(dict(b))["vlm.input_ids"]
    cut = torch.where(ids == vlm.placeholder_id, 0, ids)
    cut[1, -1] = vlm.placeholder_id  # row 1 keeps one placeholder, row 0 none
    with pytest.raises(ValueError, match=r"vlm: rows \[0, 1\] hold \[0, 1\] action placeholder tokens"):
        vlm.placeholder_states(torch.zeros(*ids.shape, vlm.width), cut)


def test_trains_saves_and_loads_as_a_policy(tmp_path):
    """End to end: two training steps from starVLA's weights, the run folder loaded back by
    load_policy infers what the trained in-memory graph infers (the placeholder prompt comes back
    with the run's preprocess pipeline); `graphvla export` refuses the run, naming why."""
    from graphvla.data.api import DataBundle, collate
    from graphvla.data.normalize import Normalizer
    from graphvla.policy.loading import load_policy
    from graphvla.policy.policy import Policy
    from graphvla.runners.train import Trainer
    from train_doubles import port_stats

    meta, data = case()
    spec_data = fixture_spec(meta)
    spec_data["trainer"].update(max_steps=2, batch_size=2, num_workers=0, warmup_steps=1, save_every=100)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_data, allow_unicode=True))
    spec = load_spec(str(tmp_path / "spec.yaml"))
    ds = FixtureSamples(*case())
    stats = port_stats(ds, ["actions"])
    trainer = Trainer.from_spec(spec, DataBundle({"action": ds}, stats), tmp_path / "run", collate=collate, progress=False,
                                normalizer=Normalizer(stats, spec.section("trainer")["normalization"]))
    state = load_state(FIXTURE)
    trainer.cg.model.load_state_dict({graph_key(k): v for k, v in state.items()}, strict=True)
    trainer.run()
    obs = [{"images": data["images"][i].numpy(), "instruction": meta["instructions"][i]} for i in range(2)]
    loaded = load_policy(tmp_path / "run").infer_batch(obs)
    in_memory = Policy.from_compiled(trainer.cg, trainer.normalizer).infer_batch(obs)
    for x, y in zip(loaded, in_memory):
        assert x["actions"].shape == (meta["horizon"], meta["action_dim"])
        np.testing.assert_allclose(x["actions"], y["actions"], rtol=0, atol=1e-6)
    # export has no placeholder path yet: it refuses, naming the field, and writes nothing
    from click.testing import CliRunner

    from graphvla.cli import main
    result = CliRunner().invoke(main, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "exported")])
    assert result.exit_code != 0 and "with.action_placeholders" in result.output, result.output
    assert not (tmp_path / "exported").exists()


def assert_matches_fixture(cg, meta, data):
    """The graph's prompt token ids, training loss and predicted actions equal starVLA's case."""
    with torch.no_grad():
        fed = cg.feed(batch(data, meta, targets=False))
        ours, mask = fed["vlm_input_ids"], fed["vlm_attention_mask"].bool()
        for i in range(len(meta["instructions"])):
            assert ours[i][mask[i]].tolist() == data["input_ids"][i][data["attention_mask"][i].bool()].tolist(), i
        actions = cg.infer(**fed)["actions"]
        loss = cg.train["action"](**cg.feed(batch(data, meta), "action"))["loss"]
    assert abs(loss.item() - data["loss"].item()) <= TOL
    assert (actions - data["predicted_actions"]).abs().max().item() <= TOL


def test_prompt_template_is_starvlas_cot_prompt():
    """with.prompt_template is starVLA's datasets.vla_data.CoT_prompt: the instruction with the
    placeholder suffix goes in place of {instruction}; token ids, loss and actions match starVLA's."""
    meta, data = case("case_cot")
    cg = fixture_graph(prompt_template=meta["cot_prompt"])
    assert_matches_fixture(cg, meta, data)
    assert abs(data["loss"].item() - case()[1]["loss"].item()) > 1e-3  # the template changes the numbers
    spec = fixture_spec(meta)
    spec["blocks"]["vlm"]["with"]["prompt_template"] = "Your task is the task."
    with pytest.raises(SpecError, match="prompt_template"):
        compile_graph(spec, device="cpu")


def test_state_in_the_prompt_is_starvlas():
    """starvla/qwen3vl-oft-state: starVLA's QwenOFT given a state writes "[STATE] bins [ACTION]" after
    the instruction, before the placeholder suffix; token ids, loss and actions match starVLA's."""
    meta, data = case("case_state")
    cg = fixture_graph(STATE_GRAPH)
    assert_matches_fixture(cg, meta, data)
    assert abs(data["loss"].item() - case()[1]["loss"].item()) > 1e-3  # the state changes the numbers
