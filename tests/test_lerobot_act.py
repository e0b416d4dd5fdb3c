"""graphs/lerobot/act is LeRobot's ACT: with the weights of a policy LeRobot 0.3.2's own code built and
saved (tests/fixtures/lerobot/act, written by scripts/parity/lerobot_act.py: a tiny config, two
cameras, fp32 on the CPU), the graph gives LeRobot's training loss (L1 + KL, with the CVAE eps LeRobot
drew), its parts and its predicted chunks within 1e-5; `graphvla import lerobot` of that saved folder,
loaded as a Policy and served, gives LeRobot's predict_action_chunk within 1e-4 from LeRobot's own
observation keys; the temporal ensembling option gives ACTTemporalEnsembler's actions. No LeRobot
code is imported: only its numbers.

The fixture holds every saved tensor except the ResNet-18 backbone's, whose tensors are drawn by a
recipe (backbone.json); `saved_policy` rebuilds LeRobot's model.safetensors and checks its sha256
against the one save_pretrained wrote before anything is compared."""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from graphvla.compiler.compile import compile_graph
from graphvla.runners.importers import lerobot as L

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lerobot" / "act"
GRAPH = Path(__file__).resolve().parents[1] / "graphvla" / "graphs" / "lerobot" / "act.yaml"
TOL = 1e-5
SERVE_TOL = 1e-4


def recipe_tensor(entry: dict) -> torch.Tensor:
    g = torch.Generator().manual_seed(entry["seed"])
    t = torch.randn(entry["shape"], generator=g, dtype=torch.float32) * entry["std"] + entry["mean"]
    return t.abs() if entry["abs"] else t


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory) -> Path:
    """LeRobot's save_pretrained folder, rebuilt byte for byte (sha256 checked)."""
    folder = tmp_path_factory.mktemp("lerobot") / "act_tiny"
    folder.mkdir()
    shutil.copy(FIXTURE / "config.json", folder / "config.json")
    recipe = json.loads((FIXTURE / "backbone.json").read_text())
    tensors = load_file(str(FIXTURE / "small.safetensors"))
    tensors.update({k: recipe_tensor(e) for k, e in recipe["tensors"].items()})
    save_file(tensors, str(folder / "model.safetensors"))
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert digest == recipe["model_safetensors_sha256"], "the rebuilt model.safetensors is not LeRobot's"
    return folder


@pytest.fixture(scope="module")
def case():
    return json.loads((FIXTURE / "case.json").read_text()), load_file(str(FIXTURE / "case.safetensors"))


def parity_spec(folder: Path) -> tuple[dict, dict, dict, dict]:
    """(spec, LeRobot's state dict, statistics, modes): the importer's spec for the saved policy, with
    an input for the CVAE's eps wired to the head (the parity test feeds LeRobot's)."""
    cfg_path, cfg = L.read_config(folder)
    features = L.features_of(cfg, cfg_path)
    state = load_file(str(folder / "model.safetensors"))
    stats, modes, images = L.read_statistics(state, cfg, features, cfg_path)
    spec = L.build_spec(L.POLICIES["act"], cfg, cfg_path, features, images, modes)
    spec["inputs"]["cvae_noise"] = {"kind": "state", "dim": cfg["latent_dim"], "train_only": True, "optional": True}
    spec["blocks"]["head"]["in"]["noise"] = "inputs.cvae_noise"
    return spec, state, stats, modes


@pytest.fixture(scope="module")
def graph(saved_policy):
    spec, state, stats, modes = parity_spec(saved_policy)
    cg = compile_graph(spec, device="cpu")
    mapped = L.map_weights(state, cg.model.state_dict(), L.fixed_tables(cg, L.POLICIES["act"]),
                           saved_policy / "model.safetensors", L.POLICIES["act"])
    assert set(mapped) == set(cg.model.state_dict())  # every key accounted for, both ways
    cg.model.load_state_dict(mapped, strict=True)
    cg.model.eval()
    return cg, stats, modes


def images_of(meta, data, prefix="image."):
    return torch.stack([data[f"{prefix}{cam}"] for cam in meta["cameras"]], dim=1)  # [B, V, 3, H, W]


def train_batch(meta, data):
    return {"images": images_of(meta, data), "state": data["normalized.state"], "actions": data["normalized.action"],
            "actions_mask": ~data["action_is_pad"], "cvae_noise": data["noise"]}


def test_the_fixture_is_lerobot_032_act(case):
    meta, data = case
    assert meta["policy"] == "act" and meta["lerobot"] == "0.3.2"
    assert json.loads((FIXTURE / "config.json").read_text())["type"] == "act"
    assert data["predict_action_chunk"].shape == (meta["batch"], meta["chunk_size"], meta["action_dim"])
    assert bool(data["action_is_pad"].any()), "the case pads an episode's end"
    total = sum(f.stat().st_size for f in FIXTURE.iterdir())
    assert total < 3 * 2 ** 20


def test_training_loss_and_its_parts_match_lerobot(graph, case):
    cg, _, _ = graph
    meta, data = case
    fed = cg.feed(train_batch(meta, data), "action")
    with torch.no_grad():
        loss = cg.train["action"](**fed)["loss"]
        head = cg.model["head"]
        feats = cg.model["backbone"](images=fed["images"])["features"]
        parts = head(features=feats, state=fed["state"], target=fed["actions"], mask=fed["actions_mask"],
                     noise=fed["cvae_noise"])
        _, mu, logvar = head.latent(fed["state"], fed["actions"], fed["actions_mask"], fed["cvae_noise"])
    diffs = {"loss": abs(loss.item() - data["loss"].item()),
             "l1": abs(parts["l1_loss"].item() - data["l1_loss"].item()),
             "kld": abs(parts["kld_loss"].item() - data["kld_loss"].item()),
             "mu": (mu - data["mu"]).abs().max().item(), "logvar": (logvar - data["log_sigma_x2"]).abs().max().item(),
             "actions": (parts["actions"] - data["train_actions"]).abs().max().item()}
    print(f"loss {loss.item():.6f} vs LeRobot {data['loss'].item():.6f}; max |diff| " +
          ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert all(v <= TOL for v in diffs.values()), diffs


def test_predicted_chunk_matches_lerobot(graph, case):
    cg, stats, modes = graph
    meta, data = case
    _, post = cg.bound_pipelines(stats, modes)
    batch = {"images": images_of(meta, data), "state": data["normalized.state"]}
    with torch.no_grad():
        out = post(dict(cg.infer(**cg.feed(batch))))
    diff = (out["actions"] - data["predict_action_chunk"]).abs().max().item()
    print(f"predict_action_chunk max |diff| {diff:.2e}")
    assert diff <= TOL


def test_a_changed_weight_or_eps_breaks_parity(graph, case):
    """The comparisons can fail: another eps moves the loss, one weight moves the actions."""
    cg, _, _ = graph
    meta, data = case
    b = train_batch(meta, data)
    b["cvae_noise"] = b["cvae_noise"] + 0.5
    with torch.no_grad():
        assert abs(cg.train["action"](**cg.feed(b, "action"))["loss"].item() - data["loss"].item()) > 100 * TOL
        head = cg.model["head"]
        saved = head.action_out.bias.clone()
        try:
            head.action_out.bias.add_(0.01)
            moved = cg.infer(**cg.feed({"images": images_of(meta, data), "state": data["normalized.state"]}))["actions"]
        finally:
            head.action_out.bias.copy_(saved)
        plain = cg.infer(**cg.feed({"images": images_of(meta, data), "state": data["normalized.state"]}))["actions"]
    assert (moved - plain).abs().max().item() > 100 * TOL


def test_the_packaged_graph_is_lerobots_default_act_on_meta():
    """lerobot/act at LeRobot's default ACTConfig: 51.6M parameters (ResNet-18's batch norm frozen: buffers)."""
    cg = compile_graph(GRAPH)
    head = cg.model["head"]
    assert cg.shapes[("head", "actions")][1:] == (100, 14)
    assert len(head.encoder.layers) == 4 and len(head.decoder.layers) == 1 and len(head.vae_encoder.layers) == 4
    assert head.encoder.layers[0].linear1.weight.shape == (3200, 512)
    assert head.image_in.weight.shape == (512, 512, 1, 1)
    # LeRobot 0.3.2's ACTPolicy(ACTConfig) with one 3x480x640 camera, a 14-d state and 14-d actions: its
    # model has 51,613,582 parameters (counted in the side venv; the frozen batch norm is buffers there too)
    assert sum(p.numel() for p in cg.model.parameters()) == 51_613_582
