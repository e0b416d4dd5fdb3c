"""backbone.world_model: shapes, the block-causal structure over time, and that it learns to
predict the next frame (and exposes features a head can use) from scratch on CPU."""
from __future__ import annotations

import pytest
import torch

from graphvla.blocks.backbones.world_model import WorldModel
from graphvla.blocks.base import BuildContext, ParamError, PortError, PortInfo
from vlm_samples import through_step

TEXTS = ["move right", "move down"]


def make(params=None, frames=2, size=32, history=0, future=True):
    info = {"images": PortInfo("image", (2, frames, 3, size, size)), "text": PortInfo("text", None)}
    if history:
        info["history"] = PortInfo("image", (2, history, 3, size, size))
    if future:
        info["future_images"] = PortInfo("image", (2, 1, 3, size, size))
    p = {"width": 32, "layers": 2, "heads": 4, "patch": 8, "future_res": 2, **(params or {})}
    return WorldModel(p, info, BuildContext("wm"))


def test_shapes_of_every_output():
    torch.manual_seed(0)
    wm = make(frames=2, history=1)
    imgs, hist, fut = torch.rand(2, 2, 3, 32, 32), torch.rand(2, 1, 3, 32, 32), torch.rand(2, 1, 3, 32, 32)
    out = through_step(wm, images=imgs, text=TEXTS, history=hist, future_images=fut)
    n = 16  # (32 / 8)^2 patches per frame
    t = out["mask"].shape[1]
    assert out["hidden"].shape == (2, t, 32)
    assert out["layers"].shape == (2, 2, t, 32)
    assert out["latents"].shape == (2, 3 * n, 32)
    assert out["future"].shape == (2, n, 3 * 2 * 2)
    assert out["future_loss"].dim() == 0
    # instruction bytes + start token + 3 frames of patches; padding only in the instruction
    assert t == 1 + len("move right") + 3 * n
    assert out["mask"][1, 1 + len("move down")] == False  # noqa: E712 (the shorter instruction's padding)
    assert "future_loss" not in through_step(wm, "predict", images=imgs, text=TEXTS, history=hist)


def test_earlier_frames_do_not_see_later_ones():
    torch.manual_seed(0)
    wm = make(frames=2, future=False).eval()
    a = torch.rand(2, 2, 3, 32, 32)
    b = a.clone()
    b[:, 1] = torch.rand(2, 3, 32, 32)  # change only the last frame
    with torch.no_grad():
        ha, hb = through_step(wm, images=a, text=TEXTS)["hidden"], through_step(wm, images=b, text=TEXTS)["hidden"]
    first_frame = slice(1 + len("move right"), 1 + len("move right") + 16)
    assert torch.allclose(ha[:, first_frame], hb[:, first_frame], atol=1e-6)
    assert not torch.allclose(ha[:, first_frame.stop:], hb[:, first_frame.stop:])


def brightening(batch, gen, size=16):
    """Frames t-1, t and the target t+1 of a random pattern whose brightness changes at a
    random rate per sample: the next frame follows from the two before it, not from one."""
    base = torch.rand(batch, 1, 3, size, size, generator=gen) * 0.4 + 0.3
    rate = (torch.rand(batch, 1, 1, 1, 1, generator=gen) - 0.5) * 0.3
    frames = base + rate * torch.arange(3).view(1, 3, 1, 1, 1)
    return frames[:, :2].clamp(0, 1), frames[:, 2:].clamp(0, 1)


def test_learns_to_predict_the_next_frame():
    torch.manual_seed(0)
    wm = make(frames=2, size=16)
    opt = torch.optim.AdamW(wm.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    eval_imgs, eval_future = brightening(32, torch.Generator().manual_seed(99))
    texts = ["watch the light"] * 32
    with torch.no_grad():
        before = float(through_step(wm, images=eval_imgs, text=texts, future_images=eval_future)["future_loss"])
    for _ in range(50):
        imgs, future = brightening(32, gen)
        loss = through_step(wm, images=imgs, text=texts, future_images=future)["future_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(through_step(wm, images=eval_imgs, text=texts, future_images=eval_future)["future_loss"])
    # "the next frame is the current one" is the baseline to beat: it needs the trend over time
    copy_last = float(torch.nn.functional.mse_loss(wm.future_target(eval_imgs[:, 1:]), wm.future_target(eval_future)))
    assert after < before / 3, (before, after)
    assert after < copy_last / 4, (after, copy_last)


def test_errors_name_the_port_or_field():
    with pytest.raises(PortError) as e:
        make({"patch": 5})
    assert e.value.port == "images" and "patch" in str(e.value)
    with pytest.raises(ParamError) as e:
        make({"heads": 5})
    assert e.value.key == "heads"
    with pytest.raises(ParamError) as e:
        make({"max_frames": 2}, frames=2, history=1)
    assert e.value.key == "max_frames"
