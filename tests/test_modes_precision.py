"""Modes and precision while training (runners/train/precision.py): trainable blocks train and
frozen ones (and frozen towers inside trainable ones) are in eval, also after a Policy put the graph
in eval; gradient checkpointing really recomputes the tiny VLM's layers; a bf16-loaded block trains
fp32 masters, so a 1e-5 step is not rounded away."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from graphvla.blocks.backbones.hf_vlm import vision_tower
from graphvla.data.api import DataBundle, collate
from graphvla.data.normalize import Normalizer
from graphvla.policy.policy import Policy
from graphvla.runners.train import Trainer
from graphvla.spec.loader import load_spec
from train_doubles import TINY_SPEC, SyntheticActions, port_stats

TINY_QUERYTF = "graphvla/graphs/tiny/querytf.yaml"


def trainer(tmp_path, spec_path, overrides=(), vlm_data=False):
    spec = load_spec(str(spec_path), ["trainer.batch_size=2", "trainer.save_every=100", *overrides])
    ds = (SyntheticActions(8, size=128, state_dim=4, horizon=8, action_dim=4) if vlm_data else SyntheticActions(16))
    stats = port_stats(ds, ["state", "actions"])
    norm = Normalizer(stats, spec.section("trainer").get("normalization") or {})
    return Trainer.from_spec(spec, DataBundle({"action": ds}, stats), tmp_path / "run", normalizer=norm, collate=collate,
                             progress=False)


def modes(module):
    return {name: m.training for name, m in module.named_modules()}


def test_trainable_blocks_train_frozen_ones_eval_even_after_a_policy(tmp_path):
    (tmp_path / "spec.yaml").write_text(TINY_SPEC)
    t = trainer(tmp_path, tmp_path / "spec.yaml", ["blocks.vision.train.freeze=true"])
    Policy(t.cg)  # puts the whole graph in eval mode
    assert not any(modes(t.cg.model).values())
    t.train_step()
    blocks = t.cg.model
    assert all(modes(blocks["head"]).values()) and all(modes(blocks["fuse"]).values())
    assert not any(modes(blocks["vision"]).values())  # frozen: eval (no augmentation, no dropout)


def test_a_frozen_vision_tower_is_eval_inside_a_training_vlm(tmp_path):
    t = trainer(tmp_path, TINY_QUERYTF, ["blocks.vlm.with.freeze_vision=true"], vlm_data=True)
    vlm = t.cg.model["vlm"]
    assert not vlm.model.training  # transformers builds models in eval mode
    t.train_step()
    assert vlm.training and vlm.model.training and vlm.model.model.language_model.training
    assert not any(modes(vision_tower(vlm.model)).values())


def count_layer_calls(model):
    calls = []
    layers = model.model.language_model.layers
    # a hook inside the layer (transformers checkpoints the layer's forward; its own hooks stay
    # outside), run before the MLP: torch stops a recompute early once the saved tensors are back
    handles = [layer.mlp.register_forward_pre_hook(lambda *a: calls.append(1)) for layer in layers]
    return calls, handles, len(layers)


def test_gradient_checkpointing_recomputes_the_layers_in_backward(tmp_path):
    """With gradient_checkpointing each decoder layer runs once in forward and once more in backward
    (its activations were not kept); without it, once. Before the trainer set train mode it was
    silently off (transformers checkpoints only when module.training)."""
    per_step = {}
    for on in (False, True):
        t = trainer(tmp_path / str(on), TINY_QUERYTF, [f"blocks.vlm.with.gradient_checkpointing={str(on).lower()}"],
                    vlm_data=True)
        calls, handles, n = count_layer_calls(t.cg.model["vlm"].model)
        t.train_step()
        for h in handles:
            h.remove()
        per_step[on] = len(calls) / n
    assert per_step == {False: 1.0, True: 2.0}


def test_bf16_block_trains_fp32_masters_so_a_1e5_step_is_kept(tmp_path):
    t = trainer(tmp_path, TINY_QUERYTF, ["blocks.vlm.with.dtype=bfloat16", "blocks.vlm.with.freeze_vision=true",
                                     "blocks.vlm.train.lr=1.0e-5", "trainer.warmup_steps=0", "trainer.grad_clip=0"],
                vlm_data=True)
    vlm = t.cg.model["vlm"].model
    assert t.low_precision == {"vlm": torch.bfloat16}
    weight = vlm.model.language_model.layers[0].mlp.up_proj.weight
    assert weight.dtype == torch.float32 and weight.requires_grad  # the master
    assert all(p.dtype == torch.bfloat16 for p in vision_tower(vlm).parameters())  # frozen: stays bf16
    before = weight.detach().clone()
    t.train_step()
    delta = (weight.detach() - before)
    moved = delta != 0
    assert moved.float().mean() > 0.9  # AdamW's first step moves (almost) every entry by ~lr
    assert delta[moved].abs().max() < 2e-5
    # in pure bf16 the same update would be lost: most entries round back to the old value (85% here;
    # the rest are weights near 0, whose ulp is below 1e-5, from the tiny model's init std of 0.02)
    lost = before.bfloat16() == (before + delta).bfloat16()
    assert lost[moved].float().mean() > 0.75
    # the forward still computes in bf16 (autocast) and the checkpoint holds the fp32 master
    path = t.save()
    saved = load_file(str(path / "model.safetensors"))
    key = "vlm.model.model.language_model.layers.0.mlp.up_proj.weight"
    assert saved[key].dtype == torch.float32 and torch.equal(saved[key], weight.detach())
