"""`graphvla check SPEC`: one training step and one predict on synthetic inputs; it passes on
every tiny graph and fails with exit code 1 and a message naming the stream and block."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import state_graph, vqa_cotraining

from graphvla.blocks.base import Block, InPort, OutPort
from graphvla.blocks.registry import register
from graphvla.cli import main
from graphvla.runners.check import CheckFailed, run_check, synthetic_batch
from graphvla.spec.loader import load_spec

warnings.filterwarnings("ignore")
TINY = Path(__file__).resolve().parents[1] / "graphvla" / "graphs" / "tiny"


@pytest.mark.parametrize("name", ["querytf", "flowdit", "dualsystem", "fast", "worldmodel-flowdit", "fast-lm"])
def test_check_passes_on_every_tiny_graph(name):
    result = CliRunner().invoke(main, ["check", str(TINY / f"{name}.yaml")])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "train step, stream 'action'" in out and "loss action" in out
    assert "output actions          [2, 8, 4]" in out
    assert out.strip().endswith("ok")


def test_the_training_step_changes_the_weights_and_losses_are_finite():
    torch.manual_seed(0)
    report = run_check(TINY / "querytf.yaml", batch=3)
    assert report.outputs == {"actions": (3, 8, 4)}
    assert all(torch.isfinite(torch.tensor(v)) for v in report.losses["action"].values())
    assert report.params > 100_000
    # backbone and head both receive gradients and move
    from graphvla.compiler.compile import compile_graph

    n_tensors = sum(1 for p in compile_graph(TINY / "querytf.yaml").model.parameters() if p.requires_grad)
    assert report.changed["action"] > n_tensors // 2, (report.changed, n_tensors)


def test_synthetic_batch_follows_the_declared_ports():
    spec = load_spec(TINY / "worldmodel-flowdit.yaml")
    batch = synthetic_batch(spec, batch=3)
    assert batch["images"].shape == (3, 1, 3, 128, 128) and 0 <= batch["images"].min() and batch["images"].max() <= 1
    assert len(batch["instruction"]) == 3 and all(isinstance(t, str) for t in batch["instruction"])
    assert batch["state"].shape == (3, 4) and batch["actions"].shape == (3, 8, 4)
    assert batch["actions_mask"].dtype == torch.bool and batch["actions_mask"].all()


@register
class Exploding(Block):
    type_name = "testcheck.exploding"
    description = "test block: fails in forward"
    in_ports = {"x": InPort(("state", "hidden"))}
    out_ports = {"loss": OutPort("loss", train_only=True), "y": OutPort("hidden")}

    def __init__(self, params, inputs, ctx):
        super().__init__(params, inputs, ctx)
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        if x.device.type != "meta":
            raise RuntimeError("boom at step one")
        return {"loss": (x * self.w).sum(), "y": x}


@register
class NotFinite(Exploding):
    type_name = "testcheck.not_finite"

    def forward(self, x):
        return {"loss": (x * self.w).sum() * float("nan"), "y": x}


def _spec(tmp_path, block_type):
    path = tmp_path / "broken.yaml"
    path.write_text(state_graph(4, {"bad": {"type": block_type, "in": {"x": "inputs.state"}}}, {"y": "bad.y"},
                                losses={"main": {"from": "bad.loss"}}))
    return path


def test_a_failing_block_is_named_and_exits_1(tmp_path):
    result = CliRunner().invoke(main, ["check", str(_spec(tmp_path, "testcheck.exploding"))])
    assert result.exit_code == 1
    assert "check failed" in result.output
    assert "stream 'main'" not in result.output  # the stream is the loss's, 'action' by default
    assert "training step of stream 'action' failed in block 'bad' (testcheck.exploding)" in result.output
    assert "boom at step one" in result.output


def test_a_non_finite_loss_fails(tmp_path):
    with pytest.raises(CheckFailed, match="loss main is not finite"):
        run_check(_spec(tmp_path, "testcheck.not_finite"))


def test_cotraining_stream_shares_the_backbone_and_trains_its_lm_loss():
    """A second node `share:`s the VLM with image-text inputs; its LM loss is a second stream."""
    report = run_check("tiny/querytf", [
        *vqa_cotraining(64, 0.1),
        "blocks.lm={type: aux.lm_loss, in: {logits: vlm_cotrain.logits, labels: vlm_cotrain.labels}, "
        "with: {label_smoothing: 0.0}}",
        "losses.vlm_again={from: lm.loss, weight: 0.0, stream: vlm}"])
    assert sorted(report.losses) == ["action", "vlm"]
    vlm = report.losses["vlm"]
    assert abs(vlm["vlm"] - vlm["vlm_again"]) < 1e-4  # aux.lm_loss recomputes the backbone's own loss
    assert report.changed["vlm"] > 0
    assert report.outputs == {"actions": (2, 8, 4)}


def test_world_model_with_its_next_frame_objective():
    """The tiny world-model graph trains both its action loss and its next-frame loss."""
    spec = TINY / "worldmodel-flowdit.yaml"
    report = run_check(spec)
    assert set(report.losses["action"]) == {"action", "future"}
    assert report.losses["action"]["future"] > 0
