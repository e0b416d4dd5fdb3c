"""Graph checks and lowering: cycles, dangling refs, unused blocks, port kinds, inferred
dimensions, the train graph's weighted loss, the pruned inference graph, share, optional inputs."""
from __future__ import annotations

import pytest
import torch
from conftest import line_of, spec_issues
from test_spec import BASE

from graphvla import compile_graph, load_spec, validate_graph

TWO_HEADS = BASE.replace("losses:\n  action: {from: head.loss, weight: 1.0}\n", """\
  head2:
    type: head.mlp
    in: {context: vision.hidden, target: inputs.actions}
    with: {hidden: 16, layers: 1}
losses:
  action: {from: head.loss, weight: 0.7}
  aux: {from: head2.loss, weight: 2.5}
""")


def _batch(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.rand(b, 1, 3, 32, 32, generator=g),
        "instruction": ["pick the cube", "open the drawer", "push it"][:b],
        "state": torch.randn(b, 8, generator=g),
        "actions": torch.randn(b, 8, 4, generator=g),
    }


# --- graph checks ----------------------------------------------------------------------------

def test_cycle_is_reported_as_its_path():
    text = BASE.replace("blocks:\n", "blocks:\n  f1:\n    type: glue.fuse\n    in: {a: f2.hidden}\n  f2:\n    type: glue.fuse\n    in: {a: f1.hidden}\n")
    issues = spec_issues(validate_graph, text)
    [cycle] = [i for i in issues if "cycle" in i.message]
    assert cycle.message in ("the graph has a cycle: f1 -> f2 -> f1", "the graph has a cycle: f2 -> f1 -> f2")
    assert cycle.block in ("f1", "f2")
    assert cycle.location.line in (line_of(text, "{a: f2.hidden}"), line_of(text, "{a: f1.hidden}"))


def test_self_loop_is_a_cycle():
    issues = spec_issues(validate_graph, BASE.replace("in: {a: vision.hidden, b: language.pooled}", "in: {a: fuse.hidden}"))
    assert any(i.message == "the graph has a cycle: fuse -> fuse" for i in issues)


@pytest.mark.parametrize("ref, words", [
    ("nothere.hidden", "no block 'nothere'"),
    ("inputs.nothere", "no input 'nothere'"),
    ("vision.nothere", "block 'vision' (encoder.image) has no output port 'nothere'"),
    ("visionhidden", "is not a reference"),
])
def test_dangling_references(ref, words):
    issues = spec_issues(validate_graph, BASE.replace("context: fuse.hidden", f"context: {ref}"))
    [issue] = [i for i in issues if words in i.message]
    assert issue.path == ("blocks", "head", "in", "context") and issue.block == "head"
    assert issue.location.line == line_of(BASE, "state: inputs.state")  # the head's `in` line


def test_unused_blocks_and_inputs_are_warnings_not_errors():
    text = BASE.replace("blocks:\n", "blocks:\n  spare:\n    type: encoder.text\n    in: {text: inputs.instruction}\n")
    text = text.replace("  state: {kind: state, dim: 8}\n", "  state: {kind: state, dim: 8}\n  depth: {kind: state, dim: 2}\n")
    spec = validate_graph(text)
    warnings = {i.message: i for i in spec.warnings}
    assert "block 'spare' feeds no loss and no output; it will not be built" in warnings
    assert "input 'depth' is not used" in warnings
    assert all(i.severity == "warning" for i in spec.warnings)
    cg = compile_graph(text)
    assert "spare" not in cg.model and {w.message for w in cg.warnings} >= set(warnings)


def test_no_losses_is_a_warning():
    spec = validate_graph(BASE.replace("losses:\n  action: {from: head.loss, weight: 1.0}\n", ""))
    assert any("no losses" in w.message for w in spec.warnings)


def test_port_kind_mismatch_names_both_kinds():
    [issue] = spec_issues(validate_graph, BASE.replace("context: fuse.hidden", "context: inputs.actions"))
    assert issue.message == "port 'context' of head.mlp takes hidden or latent, but 'inputs.actions' is action"
    assert issue.block == "head"


def test_loss_must_come_from_a_loss_port_and_outputs_cannot_need_targets():
    issues = spec_issues(validate_graph, BASE.replace("from: head.loss", "from: head.actions").replace("actions: head.actions", "actions: head.loss"))
    messages = {i.path: i.message for i in issues}
    assert messages[("losses", "action", "from")] == "'head.actions' is an action port, expected a loss port"
    assert "only exists in training" in messages[("outputs", "actions")]


def test_required_port_not_wired():
    [issue] = spec_issues(validate_graph, BASE.replace("in: {context: fuse.hidden, state: inputs.state, target: inputs.actions}",
                                                  "in: {state: inputs.state, target: inputs.actions}"))
    assert "required input port 'context' of head.mlp is not wired" in issue.message and issue.block == "head"


def test_dimension_mismatch_names_both_ends_of_the_edge():
    [issue] = spec_issues(compile_graph, BASE, ["blocks.head.with.horizon=5"])
    assert issue.message == "head.mlp: with.horizon=5 but inputs.actions has horizon 8 (edge inputs.actions -> head.target)"
    assert issue.block == "head" and issue.path == ("blocks", "head", "with", "horizon")
    [issue] = spec_issues(compile_graph, BASE, ["blocks.vision.with.patch=7"])
    assert issue.message.startswith("edge inputs.images -> vision.images: image size 32x32 is not divisible by the patch size 7")
    assert issue.location.line == line_of(BASE, "{images: inputs.images}")  # the wiring line of vision.images


def test_a_failed_block_does_not_cascade_into_its_consumers():
    issues = spec_issues(compile_graph, BASE, ["blocks.vision.with.patch=7"])
    assert [i.block for i in issues] == ["vision"]


def test_runaway_constructor_is_stopped_with_a_hint():
    [issue] = spec_issues(compile_graph, BASE, ["blocks.vision.with.layers=30000"])
    assert "far too large" in issue.message and issue.path == ("blocks", "vision", "with")


# --- lowering --------------------------------------------------------------------------------

def test_shapes_are_computed_on_meta_without_weights():
    cg = compile_graph(BASE)
    assert all(p.is_meta for p in cg.model.parameters())
    assert cg.shapes[("vision", "hidden")] == ("B", 4, 32)
    assert cg.shapes[("language", "hidden")] == ("B", "*", 32)
    assert cg.shapes[("head", "actions")] == ("B", 8, 4)
    assert cg.shapes[("head", "loss")] == ()
    real = compile_graph(BASE, device="cpu")
    assert cg.param_counts() == real.param_counts()


def test_train_graph_returns_weighted_total_and_every_loss():
    torch.manual_seed(0)
    cg = compile_graph(TWO_HEADS, device="cpu")
    out = cg.train["action"](**cg.feed(_batch(), "action"))
    assert set(out["losses"]) == {"action", "aux"}
    # recompute each loss by calling the block modules by hand
    b = _batch()
    m = cg.model
    vis = m["vision"](images=b["images"])
    lang = m["language"](ids=cg.feed(b)["language_ids"])  # the bytes its processor step makes
    fused = m["fuse"](a=vis["hidden"], b=lang["pooled"])
    l1 = m["head"](context=fused["hidden"], state=b["state"], target=b["actions"])["loss"]
    l2 = m["head2"](context=vis["hidden"], target=b["actions"])["loss"]
    torch.testing.assert_close(out["losses"]["action"], l1)
    torch.testing.assert_close(out["losses"]["aux"], l2)
    torch.testing.assert_close(out["loss"], 0.7 * l1 + 2.5 * l2)
    assert out["loss"].requires_grad


def test_streams_get_their_own_train_graph():
    text = TWO_HEADS.replace("aux: {from: head2.loss, weight: 2.5}", "aux: {from: head2.loss, weight: 2.5, stream: side}")
    cg = compile_graph(text)
    assert set(cg.train) == {"action", "side"}
    called = {s: {n.target for n in gm.graph.nodes if n.op == "call_module"} for s, gm in cg.train.items()}
    assert called == {"action": {"vision", "language", "fuse", "head"}, "side": {"vision", "head2"}}
    side_inputs = [n.target for n in cg.train["side"].graph.nodes if n.op == "placeholder"]
    assert side_inputs == ["images", "actions"]


def test_inference_graph_has_no_targets_and_runs():
    torch.manual_seed(0)
    cg = compile_graph(TWO_HEADS, device="cpu")
    placeholders = [n.target for n in cg.infer.graph.nodes if n.op == "placeholder"]
    assert placeholders == ["images", "state", "language_ids"]  # the text encoder takes its step's bytes
    assert "loss" not in cg.infer.code and "head2" not in cg.infer.code
    b = _batch()
    out = cg.infer(**cg.feed(b))
    assert set(out) == {"actions"} and out["actions"].shape == (3, 8, 4)
    train_out = cg.model["head"](context=cg.model["fuse"](a=cg.model["vision"](images=b["images"])["hidden"],
                                                       b=cg.model["language"](ids=cg.feed(b)["language_ids"])["pooled"])["hidden"],
                                 state=b["state"])
    torch.testing.assert_close(out["actions"], train_out["actions"])


def test_compiled_train_graph_learns():
    torch.manual_seed(0)
    cg = compile_graph(BASE, device="cpu")
    opt = torch.optim.Adam(cg.model.parameters(), lr=3e-3)
    batch = _batch(b=2)
    first = None
    for _ in range(25):
        loss = cg.train["action"](**cg.feed(batch, "action"))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


SHARED = BASE.replace("blocks:\n", """\
blocks:
  wrist:
    share: vision
    in: {images: inputs.wrist_cam}
""").replace("  state: {kind: state", "  wrist_cam: {kind: image, views: 1, size: [32, 32]}\n  state: {kind: state").replace(
    "in: {a: vision.hidden, b: language.pooled}", "in: {a: vision.hidden, b: language.pooled, c: wrist.pooled}")


def test_share_calls_one_module_twice_and_counts_parameters_once():
    torch.manual_seed(0)
    cg = compile_graph(SHARED, device="cpu")
    assert "wrist" not in cg.model
    calls = [n for n in cg.train["action"].graph.nodes if n.op == "call_module" and n.target == "vision"]
    assert [n.name for n in calls] == ["vision", "wrist"]
    plain = compile_graph(BASE.replace("in: {a: vision.hidden, b: language.pooled}",
                                       "in: {a: vision.hidden, b: language.pooled, c: vision.pooled}"))
    total = sum(t for t, _ in cg.param_counts().values())
    assert total == sum(t for t, _ in plain.param_counts().values())
    assert total == sum(p.numel() for p in cg.train["action"].parameters())
    # both calls use the same weights: identical images give identical pooled features
    b = _batch()
    vis = cg.model["vision"](images=b["images"])["pooled"]
    fused = cg.model["fuse"](a=cg.model["vision"](images=b["images"])["hidden"],
                             b=cg.model["language"](ids=cg.feed(b)["language_ids"])["pooled"], c=vis)
    out = cg.infer(**cg.feed({**b, "wrist_cam": b["images"]}))
    torch.testing.assert_close(out["actions"], cg.model["head"](context=fused["hidden"], state=b["state"])["actions"])


def test_share_of_a_block_that_feeds_nothing_itself():
    text = SHARED.replace("in: {a: vision.hidden, b: language.pooled, c: wrist.pooled}", "in: {a: wrist.hidden, b: language.pooled}")
    spec = load_spec(text)
    assert not any("vision" in w.message for w in spec.warnings)
    cg = compile_graph(text)
    assert "vision" in cg.model and cg.shapes[("wrist", "hidden")] == ("B", 4, 32)


def test_share_errors():
    issues = spec_issues(validate_graph, SHARED.replace("share: vision", "share: visoin"))
    assert any(i.message == "share: no block 'visoin'" and i.hint == "did you mean 'vision'?" for i in issues)
    issues = spec_issues(validate_graph, SHARED.replace("share: vision\n", "share: vision\n    with: {width: 8}\n"))
    assert any("'with' is taken from the shared block 'vision'" in i.message for i in issues)


def test_optional_input_is_none_when_absent():
    torch.manual_seed(0)
    # glue.fuse skips an absent input (head.mlp sizes itself for its state, so state goes through fuse)
    text = (BASE.replace("{kind: state, dim: 8}", "{kind: state, dim: 8, optional: true}")
            .replace("in: {a: vision.hidden, b: language.pooled}", "in: {a: vision.hidden, b: language.pooled, c: inputs.state}")
            .replace("state: inputs.state, target", "target"))
    cg = compile_graph(text, device="cpu")
    sig = [(n.target, n.args) for n in cg.infer.graph.nodes if n.op == "placeholder"]
    assert sig == [("images", ()), ("language_ids", ()), ("state", (None,))]
    b = _batch()
    with_state = cg.infer(**cg.feed(b))["actions"]
    without = cg.infer(**cg.feed({k: v for k, v in b.items() if k != "state"}))["actions"]
    assert without.shape == with_state.shape == (3, 8, 4)
    assert not torch.allclose(with_state, without)
    loss = cg.train["action"](**cg.feed({k: v for k, v in b.items() if k != "state"}, "action"))["loss"]
    assert torch.isfinite(loss)


def test_optional_input_into_a_required_port_is_an_error():
    text = BASE.replace("{kind: image, views: 1, size: [32, 32]}", "{kind: image, views: 1, size: [32, 32], optional: true}")
    [issue] = spec_issues(validate_graph, text)
    assert "'inputs.images' is optional but port 'images' of encoder.image is required" in issue.message


def test_frozen_block_has_no_trainable_parameters():
    cg = compile_graph(BASE, ["blocks.vision.train.freeze=true"])
    total, trainable = cg.param_counts()["vision"]
    assert total > 0 and trainable == 0
    assert "frozen" in cg.summary()


def test_summary_lists_blocks_edges_and_losses():
    text = compile_graph(TWO_HEADS).summary()
    assert "head2" in text and "inputs.actions      head.target" in text.replace("  ", "  ")
    assert "[B, 8, 4]" in text and "0.7" in text and "2.5" in text


def test_example_specs_compile_and_run(tmp_path):
    """graphvla/graphs/examples/shared-cameras.yaml: share, a frozen block, an optional input, two streams."""
    from conftest import REPO

    torch.manual_seed(0)
    cg = compile_graph(REPO / "graphvla" / "graphs" / "examples" / "shared-cameras.yaml", device="cpu")
    assert set(cg.train) == {"action", "wrist"} and "wrist_enc" not in cg.model
    assert cg.param_counts()["language"][1] == 0
    g = torch.Generator().manual_seed(1)
    front, wrist = torch.rand(2, 1, 3, 64, 64, generator=g), torch.rand(2, 1, 3, 64, 64, generator=g)
    actions = torch.randn(2, 8, 4, generator=g)
    side = cg.train["wrist"](wrist=wrist, actions=actions)
    own = cg.model["wrist_head"](context=cg.model["front_enc"](images=wrist)["pooled"], target=actions)["loss"]
    torch.testing.assert_close(side["loss"], 0.2 * own)
    out = cg.infer(**cg.feed({"front": front, "wrist": wrist, "instruction": ["a", "b"]}))  # state is optional
    assert out["actions"].shape == (2, 8, 4)
    big = load_spec(REPO / "graphvla" / "graphs" / "examples" / "big-4b.yaml")  # the benchmark's spec stays valid
    assert big.blocks["language"]["with"]["width"] == 4096
