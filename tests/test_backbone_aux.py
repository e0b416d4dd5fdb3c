"""Auxiliary and glue blocks: aux.lm_loss equals the backbone's own LM loss, aux.future_obs
learns to predict future latents, glue.select_layers / glue.projector select and project."""
from __future__ import annotations

import warnings

import pytest
import torch

from graphvla.blocks.aux.future_obs import FutureObs
from graphvla.blocks.aux.lm_loss import LMLoss, next_token_loss
from graphvla.blocks.base import BuildContext, ParamError, PortInfo
from graphvla.blocks.glue.select_layers import SelectLayers
from graphvla.blocks.glue.projector import Projector
from vlm_samples import through_step

warnings.filterwarnings("ignore")
CTX = BuildContext("b")


def test_lm_loss_block_equals_the_backbones_lm_loss():
    from graphvla.blocks.backbones.hf_vlm import HFVLM

    torch.manual_seed(0)
    info = {"images": PortInfo("image", (2, 1, 3, 64, 64)), "text": PortInfo("text", None),
            "target_text": PortInfo("text", None)}
    vlm = HFVLM({"tiny": "qwen2_5_vl"}, info, CTX).eval()
    with torch.no_grad():
        out = through_step(vlm, images=torch.rand(2, 1, 3, 64, 64), text=["pick the cube", "open it"], target_text=["yes", "the drawer"])
    block = LMLoss({}, {"logits": PortInfo("hidden", tuple(out["logits"].shape)),
                        "labels": PortInfo("tokens", tuple(out["labels"].shape))}, CTX)
    loss = block(logits=out["logits"], labels=out["labels"])["loss"]
    assert torch.allclose(loss, out["lm_loss"], atol=1e-5)
    smoothed = LMLoss({"label_smoothing": 0.1}, block.port_info, CTX)(logits=out["logits"], labels=out["labels"])["loss"]
    assert not torch.allclose(smoothed, loss)


def test_next_token_loss_ignores_unlabelled_positions():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[-100, 3, -100, 7]])
    expect = (torch.nn.functional.cross_entropy(logits[0, 0:1], torch.tensor([3]))
              + torch.nn.functional.cross_entropy(logits[0, 2:3], torch.tensor([7]))) / 2
    assert torch.allclose(next_token_loss(logits, labels), expect)
    z = next_token_loss(logits, labels, z_loss=1.0)
    assert z > next_token_loss(logits, labels)


def test_future_obs_learns_a_mapping_from_context_to_future_latents():
    torch.manual_seed(0)
    b, t, d, n, dz = 16, 4, 8, 2, 4
    context = torch.randn(b, t, d)
    mixing = torch.randn(d, n * dz) / d**0.5
    target = (context.mean(1) @ mixing).view(b, n, dz)  # the future depends on the context
    block = FutureObs({"width": 16, "heads": 2}, {"context": PortInfo("hidden", (b, t, d)),
                                                  "target": PortInfo("latent", (b, n, dz))}, CTX)
    opt = torch.optim.AdamW(block.parameters(), lr=1e-2)
    first = None
    for _ in range(120):
        loss = block(context=context, target=target)["loss"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first / 10, (first, float(loss.detach()))
    pred = block.predict(context=context)
    assert set(pred) == {"pred"} and pred["pred"].shape == (b, n, dz)


def test_future_obs_detaches_the_target_by_default():
    target = torch.randn(2, 3, 4, requires_grad=True)
    info = {"context": PortInfo("hidden", (2, 5, 8)), "target": PortInfo("latent", (2, 3, 4))}
    FutureObs({}, info, CTX)(context=torch.randn(2, 5, 8), target=target)["loss"].backward()
    assert target.grad is None
    target2 = torch.randn(2, 3, 4, requires_grad=True)
    FutureObs({"detach_target": False}, info, CTX)(context=torch.randn(2, 5, 8), target=target2)["loss"].backward()
    assert target2.grad is not None


def test_select_layers():
    layers = torch.arange(2 * 6 * 3 * 4, dtype=torch.float).view(2, 6, 3, 4)
    info = {"layers": PortInfo("layers", tuple(layers.shape), source="vlm.layers")}
    out = SelectLayers({"layers": [0, -1]}, info, CTX)(layers=layers)
    assert torch.equal(out["layers"], layers[:, [0, 5]])
    assert torch.equal(out["hidden"], layers[:, [0, 5]].mean(1))
    assert SelectLayers({"every": 2}, info, CTX).ids == [1, 3, 5]
    assert SelectLayers({"last": 2}, info, CTX).ids == [4, 5]
    with pytest.raises(ParamError) as e:
        SelectLayers({"layers": [6]}, info, CTX)
    assert e.value.key == "layers" and "vlm.layers has 6 layers" in str(e.value)
    with pytest.raises(ParamError):
        SelectLayers({"layers": [0], "last": 1}, info, CTX)


def test_projector_changes_the_width_and_offers_both_views():
    tokens = Projector({"width": 12, "depth": 2}, {"x": PortInfo("hidden", (2, 5, 8))}, CTX)(x=torch.randn(2, 5, 8))
    assert tokens["hidden"].shape == (2, 5, 12) and torch.equal(tokens["layers"][:, 0], tokens["hidden"])
    stack = Projector({"width": 12}, {"x": PortInfo("layers", (2, 3, 5, 8))}, CTX)(x=torch.randn(2, 3, 5, 8))
    assert stack["layers"].shape == (2, 3, 5, 12) and torch.equal(stack["hidden"], stack["layers"][:, -1])
    linear = Projector({"width": 12, "depth": 1, "norm": False}, {"x": PortInfo("state", (2, 8))}, CTX)
    x = torch.randn(2, 8)
    out = linear(x=x)
    assert set(out) == {"hidden"} and torch.allclose(out["hidden"], linear.net[0](x))
