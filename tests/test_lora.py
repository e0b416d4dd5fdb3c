"""LoRA per block through peft (blocks/lora.py, applied by compiler/build.py): `--set
blocks.vlm.train.lora.r=8` alone works on the tiny VLM graphs; the LoRA tiny VLM's loss falls and
only adapter and head weights change; merged (eval, serving) and unmerged outputs agree; the
checkpoint holds the adapters and load_policy serves them merged; bad keys name the field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from graphvla.blocks.lora import describe, is_merged, lora_layers
from graphvla.compiler.compile import compile_graph
from graphvla.compiler.lower import graph_argument
from graphvla.data.api import DataBundle, collate
from graphvla.data.normalize import Normalizer
from graphvla.errors import SpecError
from graphvla.policy.loading import load_policy
from graphvla.policy.policy import Policy
from graphvla.runners.train import Trainer
from graphvla.spec.loader import load_spec
from train_doubles import SyntheticActions, port_stats

TINY = Path(__file__).parent.parent / "graphvla" / "graphs" / "tiny"
LORA = ["blocks.vlm.train.lora.r=8"]


@pytest.mark.parametrize("graph", ["querytf", "flowdit", "dualsystem", "fast", "fast-lm"])
def test_r_alone_puts_adapters_on_every_tiny_vlm_graph(graph):
    cg = compile_graph(str(TINY / f"{graph}.yaml"), LORA)  # meta: no weights
    total, trainable = cg.param_counts()["vlm"]
    vlm = cg.model["vlm"]
    adapters = sum(p.numel() for n, p in vlm.named_parameters() if "lora_" in n)
    assert adapters > 0 and len(vlm.lora_modules) == 14  # q/k/v/o and gate/up/down of 2 decoder layers
    if graph == "fast-lm":  # the new action-token embeddings keep training (no adapter reaches them)
        embed = vlm.model.get_input_embeddings().weight
        assert trainable == adapters + embed.numel() and embed.requires_grad
    else:
        assert trainable == adapters
    assert vlm.lora_settings == {"r": 8, "alpha": 16.0, "dropout": 0.05, "target_modules": vlm.lora_settings["target_modules"]}


@pytest.mark.parametrize("overrides, field, message", [
    (LORA + ["blocks.vlm.train.lora.target_modules=[nope]"], "blocks.vlm.train.lora.target_modules", "not found"),
    (["blocks.vlm.train.lora.alpha=4"], "blocks.vlm.train.lora", "missing required key 'r'"),
    (["blocks.vlm.train.lora={r: 4, rank: 4}"], "blocks.vlm.train.lora.rank", "unknown key"),
    (["blocks.vlm.train.lora.r=0"], "blocks.vlm.train.lora.r", ""),
    (LORA + ["blocks.vlm.train.freeze=true"], "blocks.vlm.train.freeze", "exclude each other"),
])
def test_bad_lora_keys_name_the_field(overrides, field, message):
    with pytest.raises(SpecError) as err:
        compile_graph(str(TINY / "querytf.yaml"), overrides)
    text = str(err.value)
    assert f"{field}:" in text and message in text, text


def test_lora_on_a_plain_block_adapts_its_linear_layers():
    cg = compile_graph(str(TINY / "mlp.yaml"), ["blocks.head.train.lora.r=2"])
    head = cg.model["head"]
    assert head.lora_modules == ["net.0", "net.2", "net.4"]
    assert {n for n, p in head.named_parameters() if p.requires_grad} == {
        f"net.{i}.lora_{ab}.default.weight" for i in (0, 2, 4) for ab in "AB"}
    from graphvla.compiler.summary import summarize

    [row] = [line for line in summarize(cg).splitlines() if line.startswith("head ")]
    assert row.rstrip().endswith("LoRA r 2"), row  # the summary says why so few parameters train


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A short LoRA run of the tiny OFT graph (adapters on the VLM, the head trained in full)."""
    tmp = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    spec = load_spec(str(TINY / "querytf.yaml"), LORA + ["blocks.vlm.train.lr=3.0e-3", "trainer.max_steps=30",
                                                     "trainer.batch_size=4", "trainer.warmup_steps=2",
                                                     "trainer.save_every=100"])
    ds = SyntheticActions(16, size=128, state_dim=4, horizon=8, action_dim=4)
    stats = port_stats(ds, ["state", "actions"])
    t = Trainer.from_spec(spec, DataBundle({"action": ds}, stats), tmp / "run", normalizer=Normalizer(stats, {}),
                          collate=collate, progress=False)
    before = {k: v.clone() for k, v in t.cg.model.state_dict().items()}
    result = t.run()
    return t, result, before, ds


def mean(xs):
    return sum(xs) / len(xs)


def test_lora_vlm_loss_falls_and_only_adapters_and_head_change(lora_run):
    t, result, before, _ = lora_run
    losses = [r["loss"] for r in result.history]
    assert mean(losses[-5:]) < 0.8 * mean(losses[:5]), losses
    changed = {k for k, v in t.cg.model.state_dict().items() if not torch.equal(v, before[k])}
    adapters = {k for k in before if ".lora_" in k}
    head = {k for k in before if k.startswith("head.")}
    assert changed <= adapters | head
    assert {k for k in adapters if ".lora_B." in k} <= changed  # every adapter learned (B starts at 0)
    assert len(changed & head) > 0
    lines = describe(t.cg.model)
    assert lines[0].startswith("parameters: ") and "trainable of" in lines[0]
    assert lines[1].startswith("LoRA adapters on vlm: r=8, alpha=16, dropout=0.05, 14 modules (down_proj, gate_proj")


def test_merged_and_unmerged_outputs_are_equal(lora_run):
    t, _, _, ds = lora_run
    # the graph's inputs as training makes them: the trainer's preprocess pipeline (the VLM's processor step)
    made = t.preprocess(collate([ds[i] for i in range(3)]))
    takes = {n.target for n in t.cg.infer.graph.nodes if n.op == "placeholder"}
    inputs = {graph_argument(k): v for k, v in made.items() if graph_argument(k) in takes}
    vlm = t.cg.model["vlm"]
    base = vlm.model.model.language_model.layers[0].self_attn.q_proj.base_layer.weight
    unmerged_weight = base.detach().clone()
    t.cg.model.eval()  # merges the adapters into the base weights
    assert is_merged(vlm) and not torch.equal(base, unmerged_weight)
    with torch.no_grad():
        merged = t.cg.infer(**inputs)["actions"]
        for layer in lora_layers(vlm):  # the adapters computed beside the base weights, still in eval
            layer.unmerge()
        unmerged = t.cg.infer(**inputs)["actions"]
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)  # float32: W + BA vs Wx + B(Ax)
    torch.testing.assert_close(base.detach(), unmerged_weight, rtol=0, atol=1e-6)  # unmerge restores the base
    assert merged.abs().max() > 0
    t.modes.apply()  # train mode unmerges, so the trainer goes on with the adapters apart
    assert not is_merged(vlm)


def test_checkpoint_holds_the_adapters_and_serving_merges_them(lora_run):
    t, result, _, ds = lora_run
    ckpt = result.checkpoint
    from safetensors.torch import load_file

    adapters = load_file(str(ckpt / "adapters.safetensors"))
    described = json.loads((ckpt / "lora.json").read_text())
    assert set(adapters) == {k for k in t.cg.model.state_dict() if ".lora_" in k}
    assert described["vlm"]["settings"]["r"] == 8 and len(described["vlm"]["modules"]) == 14
    assert not described["vlm"]["merged"]  # written unmerged: the base weights are the base's
    served = load_policy(ckpt)
    assert is_merged(served.cg.model["vlm"])
    live = Policy.from_compiled(t.cg, t.normalizer)
    sample = ds[0]
    obs = {"images": sample["images"].numpy(), "instruction": sample["instruction"], "state": sample["state"].numpy()}
    torch.testing.assert_close(torch.as_tensor(served.infer(obs)["actions"]), torch.as_tensor(live.infer(obs)["actions"]),
                               rtol=0, atol=1e-5)


def test_graphvla_train_with_r_alone_prints_parameters_and_adapters(tmp_path):
    """`graphvla train tiny/querytf --set blocks.vlm.train.lora.r=8` on a small LeRobot folder: the run
    starts with trainable/total parameters and the adapters, and writes them into its checkpoint."""
    import numpy as np
    from click.testing import CliRunner

    from graphvla.cli import main
    from graphvla.data.lerobot_write import LeRobotWriter

    camera = "observation.images.cam"
    writer = LeRobotWriter(tmp_path / "data", fps=10, features={camera: ("image", (128, 128, 3)),
                                                               "observation.state": ("float32", (4,)),
                                                               "action": ("float32", (4,))})
    rng = np.random.default_rng(0)
    for task in ("reach the goal", "push the button"):
        n = 12
        writer.add_episode({camera: rng.integers(0, 255, (n, 128, 128, 3), dtype=np.uint8),
                            "observation.state": rng.normal(size=(n, 4)).astype(np.float32),
                            "action": rng.normal(size=(n, 4)).astype(np.float32)}, task)
    writer.finalize()
    args = ["train", str(TINY / "querytf.yaml"), "--data", str(tmp_path / "data"), "-o", str(tmp_path / "run"),
            "--no-progress", "--set", "blocks.vlm.train.lora.r=8", "--set", "trainer.max_steps=2",
            "--set", "trainer.batch_size=2", "--set", "trainer.warmup_steps=1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "trainable of" in res.output and "LoRA adapters on vlm: r=8, alpha=16" in res.output
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002"
    assert (ckpt / "adapters.safetensors").is_file() and (ckpt / "lora.json").is_file()
