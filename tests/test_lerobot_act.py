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
import os
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
    stats, modes, images, _ = L.normalization_of(folder, "0.3", state, cfg, features, cfg_path)
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


# `graphvla import lerobot` ------------------------------------------------------------------------
def imported(saved_policy, out: Path, **config_changes) -> Path:
    """The saved policy (config.json edited by `config_changes`) imported through the command line."""
    from click.testing import CliRunner

    from graphvla.cli import main

    src = saved_policy
    if config_changes:
        src = out.parent / f"{out.name}-src"
        shutil.copytree(saved_policy, src)
        cfg = json.loads((src / "config.json").read_text())
        cfg.update(config_changes)
        (src / "config.json").write_text(json.dumps(cfg))
    result = CliRunner().invoke(main, ["import", "lerobot", str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "LeRobot act" in result.output and "observation.images.top" in result.output
    return out


@pytest.fixture(scope="module")
def run(saved_policy, tmp_path_factory):
    return imported(saved_policy, tmp_path_factory.mktemp("runs") / "act")


def lerobot_obs(meta, data, i, prefix="image.", state="state"):
    """One observation as a LeRobot client sends it: its keys, float CHW images in [0, 1], raw state."""
    obs = {cam: data[f"{prefix}{cam}"][i].numpy() for cam in meta["cameras"]}
    obs["observation.state"] = data[state][i].numpy()
    return obs


def served(run: Path, observations: list, overrides=()) -> tuple[dict, list]:
    """(server metadata, the actions of each observation) from `graphvla serve RUN [--set serve.K=V ...]`'s
    server, one session."""
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.runners.serve import ServerThread
    from graphvla.runners.serve.section import serve_options, serve_section

    options = serve_options(serve_section(str(run), overrides), "127.0.0.1", 0, None, 1, None, None)
    with ServerThread(load_policy(run), options) as srv:
        with PolicyClient("127.0.0.1", srv.port) as client:
            client.reset(0)
            actions = [client.infer(o)["actions"] for o in observations]
            meta = client.metadata
    return meta, actions


def test_an_imported_policy_serves_lerobots_predict_action_chunk(run, case):
    meta, data = case
    info = json.loads((run / "imported.json").read_text())
    state = load_file(str(FIXTURE / "small.safetensors"))
    normalization = [k for k in state if k.split(".")[0] in ("normalize_inputs", "normalize_targets", "unnormalize_outputs")]
    # every tensor accounted for: the weights, the statistics, and ACT's fixed CVAE position table
    recipe = json.loads((FIXTURE / "backbone.json").read_text())["tensors"]
    assert info["tensors"] + len(normalization) + 1 == len(state) + len(recipe)
    server_meta, actions = served(run, [lerobot_obs(meta, data, i) for i in range(meta["batch"])])
    assert set(meta["cameras"]) | {"observation.state"} <= set(server_meta["observation_keys"])
    assert server_meta["execute_steps"] == meta["chunk_size"]  # n_action_steps
    diff = max(np.abs(a - data["predict_action_chunk"][i].numpy()).max() for i, a in enumerate(actions))
    print(f"served imported ACT vs LeRobot predict_action_chunk: max |diff| {diff:.2e}")
    assert diff <= SERVE_TOL


def test_select_action_is_the_served_chunk_executed_n_action_steps_at_a_time(run, case):
    """LeRobot's select_action queue (n_action_steps = chunk) is what a client executing the served
    metadata's execute_steps of each chunk runs."""
    from graphvla.policy.loading import load_policy

    meta, data = case
    policy = load_policy(run)
    session = policy.new_session(0)
    ports = lambda t: {"images": np.stack([data[f"episode.image.{c}"][t].numpy() for c in meta["cameras"]]),  # noqa: E731
                       "state": data["episode.state"][t].numpy()}
    k = meta["chunk_size"]
    executed = []
    for t in range(meta["episode"]):
        if t % k == 0:
            chunk = policy.infer(ports(t), session)["actions"]
        executed.append(chunk[t % k])
    diff = np.abs(np.stack(executed) - data["episode.select_action"].numpy()).max()
    assert diff <= SERVE_TOL, diff


def test_temporal_ensembling_as_a_serve_option(run, case):
    """`graphvla serve RUN --set serve.temporal_ensemble=C` ensembles a run imported without it."""
    meta, data = case
    obs = [lerobot_obs(meta, data, t, "episode.image.", "episode.state") for t in range(meta["episode"])]
    server_meta, actions = served(run, obs, [f"serve.temporal_ensemble={meta['temporal_ensemble_coeff']}"])
    assert server_meta["execute_steps"] == 1 and server_meta["temporal_ensemble"] == {"coeff": meta["temporal_ensemble_coeff"]}
    assert np.abs(np.stack([a[0] for a in actions]) - data["episode.ensembled"].numpy()).max() <= SERVE_TOL
    plain_meta, plain = served(run, obs[:2])
    assert plain_meta["temporal_ensemble"] is None and plain_meta["execute_steps"] == meta["chunk_size"]
    assert np.abs(plain[1] - data["episode.chunks"][1].numpy()).max() <= SERVE_TOL  # the raw chunk


def test_temporal_ensembling_is_act_temporal_ensembler(saved_policy, case, tmp_path):
    """On LeRobot's own chunks the ensemble equals ACTTemporalEnsembler's actions; an imported policy with
    temporal_ensemble_coeff serves them (queried every step, execute_steps 1), and a reset starts over."""
    from graphvla.policy.ensemble import TemporalEnsemble

    meta, data = case
    chunks, expected = data["episode.chunks"].numpy(), data["episode.ensembled"].numpy()
    ens = TemporalEnsemble(meta["temporal_ensemble_coeff"], meta["chunk_size"])
    ours = np.stack([ens.update(c)[0] for c in chunks])
    assert np.abs(ours - expected).max() <= 1e-6
    assert np.abs(ours[1:] - chunks[1:, 0]).max() > 1e-3  # it is not the newest chunk's first action
    run = imported(saved_policy, tmp_path / "act-te", temporal_ensemble_coeff=meta["temporal_ensemble_coeff"],
                   n_action_steps=1)
    obs = [lerobot_obs(meta, data, t, "episode.image.", "episode.state") for t in range(meta["episode"])]
    server_meta, actions = served(run, obs)
    assert server_meta["execute_steps"] == 1 and server_meta["temporal_ensemble"] == {"coeff": meta["temporal_ensemble_coeff"]}
    diff = np.abs(np.stack([a[0] for a in actions]) - expected).max()
    print(f"served temporal ensemble vs ACTTemporalEnsembler: max |diff| {diff:.2e}")
    assert diff <= SERVE_TOL
    from graphvla.policy.loading import load_policy

    policy = load_policy(run)
    s = policy.new_session(0)
    ports = lambda o: {"images": np.stack([o[c] for c in meta["cameras"]]), "state": o["observation.state"]}  # noqa: E731
    first = policy.infer(ports(obs[3]), s)["actions"]
    assert not np.allclose(policy.infer(ports(obs[4]), s)["actions"][0], first[1], atol=1e-4)  # folded in
    s.reset()
    assert np.array_equal(policy.infer(ports(obs[3]), s)["actions"], first)  # a new episode starts over
    # an export of the run (torch.export) ensembles the same way, per session
    from graphvla.runners.export import export_policy
    from graphvla.runners.exported import load_exported

    exported = load_exported(export_policy(str(run), str(tmp_path / "act-te-export"), "torch-export"))
    s = exported.new_session(0)
    ours = np.stack([exported.infer(ports(o), s)["actions"][0] for o in obs])
    assert exported.metadata["temporal_ensemble"] == {"coeff": meta["temporal_ensemble_coeff"]}
    assert np.abs(ours - expected).max() <= SERVE_TOL


def test_bad_policies_are_refused_by_name_and_leave_nothing(saved_policy, tmp_path):
    def attempt(name, edit=None, files=None):
        src = tmp_path / f"{name}-src"
        shutil.copytree(saved_policy, src)
        if edit:
            cfg = json.loads((src / "config.json").read_text())
            edit(cfg)
            (src / "config.json").write_text(json.dumps(cfg))
        if files:
            files(src)
        out = tmp_path / name
        with pytest.raises(L.LeRobotImportError) as e:
            L.import_lerobot(src, out)
        assert not out.exists() and not list(tmp_path.glob(f".*{name}*"))
        return str(e.value)

    assert "type 'tdmpc' (a LeRobot policy type) cannot be imported" in attempt("tdmpc", lambda c: c.update(type="tdmpc"))
    assert "type 'nope' (not a LeRobot policy type)" in attempt("nope", lambda c: c.update(type="nope"))
    assert "vision_backbone 'resnet50'" in attempt("r50", lambda c: c.update(vision_backbone="resnet50"))
    msg = attempt("v04", files=lambda d: (d / "policy_preprocessor.json").write_text("{}"))
    assert "policy_preprocessor.json without policy_postprocessor.json" in msg

    def drop(d):
        t = load_file(str(d / "model.safetensors"))
        t.pop("model.action_head.bias")
        save_file(t, str(d / "model.safetensors"))

    assert "head.action_out.bias" in attempt("missing", files=drop)
    msg = attempt("dims", lambda c: c["output_features"]["action"].update(shape=[5]))
    assert "'model.action_head." in msg and "has shape [3" in msg and "head.action_out." in msg
    (tmp_path / "taken").mkdir()
    with pytest.raises(L.LeRobotImportError, match="already exists"):
        L.import_lerobot(saved_policy, tmp_path / "taken")
    from click.testing import CliRunner

    from graphvla.cli import main

    result = CliRunner().invoke(main, ["import", "lerobot", str(saved_policy), "-o", str(tmp_path / "o"), "--base-vlm", "x"])
    assert result.exit_code == 1 and "--base-vlm: options of `graphvla import starvla`" in result.output
    assert not (tmp_path / "o").exists()


FIXTURE_04 = FIXTURE.with_name("act_04")
# other releases' saves of the same policy (scripts/parity/lerobot_act.py --format-04 --out DIR in that
# release's venv), compared the same way: GRAPHVLA_LEROBOT_ACT_SAVES=DIR[:DIR...] (docs/lerobot.md,
# "Which LeRobot versions"); their files are not committed where they equal act_04's but for config.json
SAVES_04 = [FIXTURE_04] + [Path(p) for p in os.environ.get("GRAPHVLA_LEROBOT_ACT_SAVES", "").split(os.pathsep) if p]
MADE_BY = {}  # a rebuilt save's folder -> (the LeRobot release that wrote it, its fixture folder)


@pytest.fixture(scope="module", params=SAVES_04, ids=lambda p: p.name)
def saved_policy_04(request, tmp_path_factory) -> Path:
    """The same policy as LeRobot 0.4.1 (or a later release) saves it (model without normalization,
    processor files), rebuilt byte for byte (sha256 checked)."""
    fixture_04 = request.param
    folder = tmp_path_factory.mktemp("lerobot04") / "act_tiny"
    folder.mkdir()
    for f in fixture_04.iterdir():
        if f.name not in ("model.json", "case.safetensors"):
            shutil.copy(f, folder / f.name)
    recipe = json.loads((FIXTURE / "backbone.json").read_text())["tensors"]
    tensors = {k: v for k, v in load_file(str(FIXTURE / "small.safetensors")).items()
               if not k.startswith(("normalize_inputs.", "normalize_targets.", "unnormalize_outputs."))}
    tensors.update({k: recipe_tensor(e) for k, e in recipe.items()})
    save_file(tensors, str(folder / "model.safetensors"))
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    made = json.loads((fixture_04 / "model.json").read_text())
    assert digest == made["model_safetensors_sha256"]
    MADE_BY[folder] = (made["lerobot"], fixture_04)
    return folder


def test_a_lerobot_04_save_with_processor_files_serves_its_predict_action_chunk(saved_policy_04, case, tmp_path):
    meta, data = case
    release, fixture_04 = MADE_BY[saved_policy_04]
    expected = load_file(str(fixture_04 / "case.safetensors"))["predict_action_chunk"]
    run = imported(saved_policy_04, tmp_path / "act04")
    info = json.loads((run / "imported.json").read_text())
    assert info["format"] == "0.4" and info["normalization"] == {"state": "mean_std", "actions": "mean_std"}
    _, actions = served(run, [lerobot_obs(meta, data, i) for i in range(meta["batch"])])
    diff = max(np.abs(a - expected[i].numpy()).max() for i, a in enumerate(actions))
    print(f"served imported {release} ACT vs its predict_action_chunk (pre/post processors): max |diff| {diff:.2e}")
    assert diff <= SERVE_TOL


def test_04_processor_files_are_checked(saved_policy_04, tmp_path):
    def attempt(name, edit):
        src = tmp_path / f"{name}-src"
        shutil.copytree(saved_policy_04, src)
        edit(src)
        with pytest.raises(L.LeRobotImportError) as e:
            L.import_lerobot(src, tmp_path / name)
        assert not (tmp_path / name).exists()
        return str(e.value)

    def add_step(d):
        pre = json.loads((d / "policy_preprocessor.json").read_text())
        pre["steps"].insert(1, {"registry_name": "tokenizer_processor", "config": {}})
        (d / "policy_preprocessor.json").write_text(json.dumps(pre))

    assert "steps[1] 'tokenizer_processor' is not supported" in attempt("step", add_step)
    msg = attempt("state", lambda d: (d / "policy_postprocessor_step_0_unnormalizer_processor.safetensors").unlink())
    assert "unnormalizer_processor" in msg and "state_file" in msg

    def drop_stat(d):
        f = d / "policy_preprocessor_step_3_normalizer_processor.safetensors"
        t = load_file(str(f))
        t.pop("observation.state.std")
        save_file(t, str(f))

    assert "observation.state.std" in attempt("stat", drop_stat)

    def rename(d):  # a client that sends 'observation.images.cam_high' for the 'top' camera
        pre = json.loads((d / "policy_preprocessor.json").read_text())
        pre["steps"][0]["config"]["rename_map"] = {"observation.images.cam_high": "observation.images.top"}
        (d / "policy_preprocessor.json").write_text(json.dumps(pre))

    src = tmp_path / "renamed-src"
    shutil.copytree(saved_policy_04, src)
    rename(src)
    run = L.import_lerobot(src, tmp_path / "renamed")
    key_map = json.loads((run / "imported.json").read_text())["key_map"]
    assert key_map["observation.images.cam_high"] == "images[0]" and "observation.images.top" not in key_map


def test_config_fields_of_releases_not_compared_are_refused_by_name(saved_policy_04, tmp_path):
    """LeRobot 0.4.4 and 0.6.1 save this policy with the same weights and processor files and two more
    config.json fields (use_peft false, pretrained_revision null): such a save imports to the same run. A
    field of no release the import was compared with, or a PEFT adapter save, is refused by name."""
    from lerobot_import import refused

    base = L.import_lerobot(saved_policy_04, tmp_path / "base")
    newer = tmp_path / "newer-src"
    shutil.copytree(saved_policy_04, newer)
    cfg = json.loads((newer / "config.json").read_text())
    cfg.update(use_peft=False, pretrained_revision=None)
    (newer / "config.json").write_text(json.dumps(cfg))
    run = L.import_lerobot(newer, tmp_path / "newer")
    a, b = (load_file(str(next(r.rglob("model.safetensors")))) for r in (base, run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    (tmp_path / "r").mkdir()
    refused(saved_policy_04, tmp_path / "r", lambda c: c.update(use_peft=True), "use_peft True is not supported")
    refused(saved_policy_04, tmp_path / "r", lambda c: c.update(action_delta_mode="joint"),
            "field(s) ['action_delta_mode'] are not in the config of LeRobot's 'act'")
    with pytest.raises(L.LeRobotImportError, match="patch_positions is SmolVLA's option"):
        L.import_lerobot(saved_policy_04, tmp_path / "pp", patch_positions="index")
    assert not (tmp_path / "pp").exists()


def test_rtc_and_graphvla_eval_on_an_imported_act(saved_policy, case, tmp_path):
    """Real-time chunking on the served import (ACT regresses: the committed prefix, then a blend), and
    `graphvla eval` (GraphVLA's Meta-World suite, one short episode) on the saved policy cut to
    Meta-World's sizes: one 64 x 64 camera, 4-d actions (the action head and statistics padded by a row)."""
    from click.testing import CliRunner

    from conftest import require_metaworld
    from graphvla.cli import main
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.protocol import RTC_KEY
    from graphvla.runners.serve import ServerThread
    from graphvla.runners.serve.section import serve_options, serve_section

    meta, data = case
    run = imported(saved_policy, tmp_path / "act")
    obs = lerobot_obs(meta, data, 0)
    old = data["predict_action_chunk"][1].numpy()
    options = serve_options(serve_section(str(run)), "127.0.0.1", 0, None, 1, None, None)
    with ServerThread(load_policy(run), options) as srv:
        with PolicyClient("127.0.0.1", srv.port) as client:
            plain = client.infer(obs)["actions"]
            reply = client.infer({**obs, RTC_KEY: {"delay": 2, "remaining_actions": old}})
    assert reply["rtc"]["applied"] and reply["rtc"]["method"] == "blend"
    assert np.allclose(reply["actions"][:2], old[:2], atol=1e-6) and not np.allclose(reply["actions"][2], plain[2], atol=1e-4)

    require_metaworld()
    src = tmp_path / "mw-src"
    shutil.copytree(saved_policy, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["input_features"] = {"observation.images.top": {"type": "VISUAL", "shape": [3, 64, 64]},
                             "observation.state": {"type": "STATE", "shape": [4]}}
    cfg["output_features"]["action"]["shape"] = [4]
    (src / "config.json").write_text(json.dumps(cfg))
    state = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if "wrist" not in k}
    pad = lambda t, dim: torch.cat([t, t.narrow(dim, 0, 1) * 0.5], dim=dim)  # noqa: E731
    for key, dim in (("model.action_head.weight", 0), ("model.action_head.bias", 0),
                     ("model.vae_encoder_action_input_proj.weight", 1)):
        state[key] = pad(state[key], dim)
    for module in ("normalize_targets", "unnormalize_outputs"):
        for n in ("mean", "std"):
            state[f"{module}.buffer_action.{n}"] = pad(state[f"{module}.buffer_action.{n}"], 0)
    save_file(state, str(src / "model.safetensors"))
    mw = L.import_lerobot(src, tmp_path / "mw")
    result = CliRunner().invoke(main, ["eval", str(mw), "--suite", "metaworld", "--tasks", "reach-v3", "--episodes", "1",
                                       "--max-steps", "8", "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    episode = json.loads((tmp_path / "eval" / "results.json").read_text())["episodes"]["reach-v3"][0]
    assert episode["steps"] == 8 and episode["queries"] == 2  # chunks of 5 executed 5 at a time (n_action_steps)


def test_graphvla_trains_the_act_graph_and_serves_it(tmp_path, metaworld_data):
    """lerobot/act (tiny sizes) trains with `graphvla train`'s trainer on a Meta-World recording (the
    CVAE's eps drawn in forward, the mask from the chunk padding), and the run loads and answers."""
    from graphvla.policy.loading import load_policy
    from graphvla.runners.train import train
    from graphvla.runners.train.dataio import load_bundle
    from graphvla.spec.loader import load_spec

    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(f"datasets:\n  - path: {metaworld_data}\n    keys: {{images: [observation.images.corner], "
                         "state: observation.state, actions: action}\n")
    overrides = ["inputs.images.size=[64, 64]", "inputs.state.dim=4", "inputs.actions.dim=4", "inputs.actions.horizon=5",
                 "inputs.actions_mask.shape=[5]", "blocks.head.with.width=32", "blocks.head.with.heads=4",
                 "blocks.head.with.ffn=64", "blocks.head.with.encoder_layers=1", "blocks.head.with.vae_layers=1",
                 "blocks.head.with.latent_dim=8", "trainer.max_steps=3", "trainer.batch_size=4", "trainer.save_every=3",
                 "trainer.lr=1.0e-4", "blocks.head.train.lr=1.0e-4"]
    spec = load_spec(GRAPH, overrides)
    result = train(spec, load_bundle(str(data_yaml), spec), tmp_path / "run", progress=False)
    assert result.step == 3 and all(np.isfinite(r["loss"]) for r in result.history)
    policy = load_policy(tmp_path / "run")
    out = policy.infer({"images": np.zeros((64, 64, 3), np.uint8), "state": np.zeros(4, np.float32)})
    assert out["actions"].shape == (5, 4) and np.isfinite(out["actions"]).all()


def test_a_hub_id_imports_from_the_hub_cache(saved_policy, tmp_path, monkeypatch):
    """`graphvla import lerobot org/name -o RUN` reads the snapshot in the Hugging Face cache (offline),
    the way a policy pushed by LeRobot is read; an id the cache lacks is named and leaves nothing."""
    from test_hub import put_in_cache

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    put_in_cache(cache, "model", "someone/act_tiny", saved_policy, "a" * 40)
    run = L.import_lerobot("someone/act_tiny", tmp_path / "from-hub")
    info = json.loads((run / "imported.json").read_text())
    assert info["source"] == "someone/act_tiny" and info["folder"].endswith("a" * 40)
    with pytest.raises(L.LeRobotImportError, match="someone/act_tinny"):
        L.import_lerobot("someone/act_tinny", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
