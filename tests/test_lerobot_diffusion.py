"""graphs/lerobot/diffusion is LeRobot's Diffusion Policy: on two tiny configurations
(tests/fixtures/lerobot/diffusion, written by scripts/parity/lerobot_diffusion.py with LeRobot 0.4.1's
own code, float32 on the CPU) the graph, sized by the importer's reading of LeRobot's config.json and
loaded through the importer's key mapping, gives LeRobot's training loss, its denoised horizon and its
returned actions within 1e-5 from the same draws (training noise and timesteps, starting noise, DDPM's
per-step noise). `ddpm`: one encoder for two cameras, center crop, DDPM over all 20 timesteps, epsilon,
FiLM scale and bias. `ddim`: an encoder per camera, no crop, environment state, DDIM in 5 of 50
timesteps, sample prediction, FiLM bias only, linear betas, padding masked in the loss.
No LeRobot code is imported: only its numbers. The parameters are the fixture recipe's (too large to
commit for ResNet-18), checked against the sha256 LeRobot's own state_dict gave."""
from __future__ import annotations

import hashlib
import os
import shutil
import json
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graphvla.blocks.heads import diffusion_schedule as schedule
from graphvla.compiler.compile import compile_graph
from graphvla.errors import SpecError
from graphvla.runners.importers.lerobot_diffusion import GRID_KEY, fit_spec, graph_key, spec_with
from graphvla.spec.loader import load_spec
from lerobot_import import import_cli, refused

warnings.filterwarnings("ignore")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lerobot" / "diffusion"
GRAPH = Path(__file__).resolve().parents[1] / "graphvla" / "graphs" / "lerobot" / "diffusion.yaml"
TOL = 1e-5
CASES = ("ddpm", "ddim")


def recipe_tensor(name: str, shape) -> torch.Tensor:
    """scripts/parity/lerobot_diffusion.py's recipe: weights N(0, 1/fan_in), norm scales 1 + N(0, 0.01),
    biases N(0, 0.01), each from a generator seeded by crc32 of LeRobot's parameter name."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float32)
    if len(shape) > 1:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= int(d)
        return x / fan_in ** 0.5
    return 1 + 0.1 * x if name.endswith("weight") else 0.1 * x


def load_case(name):
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    return meta, load_file(str(FIXTURES / f"{name}.safetensors"))


def lerobot_state(meta) -> dict:
    state = {k: recipe_tensor(k, shape) for k, shape in meta["parameters"].items()}
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].numpy().tobytes())
    assert h.hexdigest() == meta["recipe_sha256"], "the recipe no longer makes LeRobot's parameters"
    return state


def build(name):
    meta, data = load_case(name)
    spec = fit_spec(load_spec(str(GRAPH)).data, meta["config"])
    torch.manual_seed(0)
    cg = compile_graph(spec, device="cpu")
    state = lerobot_state(meta)
    mapped = {graph_key(k): v for k, v in state.items()}
    assert None not in mapped and len(mapped) == len(state)  # every LeRobot parameter has one graph name
    assert set(mapped) == set(cg.model.state_dict())  # and every graph tensor comes from one
    cg.model.load_state_dict(mapped, strict=True)
    return cg, meta, data


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return (request.param, *build(request.param))


def graph_images(data):
    """LeRobot's [B, S, cameras, C, H, W] as the graph's [B, cameras * S, C, H, W], camera-major."""
    x = data["images"].transpose(1, 2)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def inputs(data, targets=True):
    out = {"images": graph_images(data), "state": data["state"]}
    if "env_state" in data:
        out["env_state"] = data["env_state"]
    if targets:
        out.update(actions=data["action"], actions_mask=~data["action_is_pad"])
    return out


def test_the_fixtures_are_lerobots_and_every_tensor_is_accounted_for(case):
    name, cg, meta, data = case
    assert meta["lerobot_version"] == "0.4.1" and meta["config"]["type"] == "diffusion"
    # LeRobot's spatial-softmax grids (buffers, not parameters) are the grids the graph computes
    grids = [k for k in meta["buffers"] if GRID_KEY.match(k)]
    assert grids and len(grids) == len(meta["buffers"])
    for enc in cg.model["backbone"].encoders:
        torch.testing.assert_close(enc.keypoints.grid, data["pos_grid"], atol=0, rtol=0)


def test_training_loss_matches_lerobot_with_its_draws(case):
    name, cg, meta, data = case
    cg.model.train()  # the ddpm case has a center crop (crop_is_random false), the ddim case none
    with torch.no_grad():
        features = cg.model["backbone"](graph_images(data))["features"]
        extra = {"env_state": data["env_state"]} if "env_state" in data else {}
        loss = cg.model["head"](state=data["state"], context=features, target=data["action"],
                                mask=~data["action_is_pad"], noise=data["train_noise"],
                                timesteps=data["train_timesteps"], **extra)["loss"]
    assert abs(loss.item() - data["loss"].item()) <= TOL, (loss.item(), data["loss"].item())


def test_the_training_graph_draws_noise_then_timesteps_as_lerobot_does(case):
    """The compiled training stream, drawing for itself, gives the head's loss on the draws torch's
    global generator makes in LeRobot's order (torch.randn of the chunk, then torch.randint)."""
    name, cg, meta, data = case
    cg.model.train()
    b, h, a = data["action"].shape
    with torch.no_grad():
        torch.manual_seed(5)
        loss = cg.train["action"](**cg.feed(inputs(data), "action"))["loss"]
        torch.manual_seed(5)
        noise = torch.randn((b, h, a))
        t = torch.randint(0, meta["config"]["num_train_timesteps"], (b,))
        features = cg.model["backbone"](graph_images(data))["features"]
        extra = {"env_state": data["env_state"]} if "env_state" in data else {}
        direct = cg.model["head"](state=data["state"], context=features, target=data["action"],
                                  mask=~data["action_is_pad"], noise=noise, timesteps=t, **extra)["loss"]
    assert loss.item() == pytest.approx(direct.item(), abs=1e-6)


def test_sampled_actions_match_lerobot_with_the_same_noise(case):
    name, cg, meta, data = case
    cg.model.eval()
    head = cg.model["head"]
    assert head.noise_shape(data["state"].shape[0]) == tuple(data["draws"].shape)
    with torch.no_grad():
        actions = cg.infer(**cg.feed(inputs(data, targets=False)), noise=data["draws"])["actions"]
        features = cg.model["backbone"](graph_images(data))["features"]
        extra = {"env_state": data["env_state"]} if "env_state" in data else {}
        chunk = head.chunk(data["state"], features, noise=data["draws"], **extra)
    assert actions.shape == data["actions"].shape
    assert (chunk - data["chunk"]).abs().max().item() <= TOL
    assert (actions - data["actions"]).abs().max().item() <= TOL
    # the noise is the only randomness: other noise, other actions
    with torch.no_grad():
        other = cg.infer(**cg.feed(inputs(data, targets=False)), noise=data["draws"] + 0.5)["actions"]
    assert (other - data["actions"]).abs().max().item() > 1e-3


def test_a_changed_weight_breaks_parity():
    cg, meta, data = build("ddim")
    cg.model.eval()
    with torch.no_grad():
        cg.model["head"].unet.out_proj.bias.add_(1e-3)
        actions = cg.infer(**cg.feed(inputs(data, targets=False)), noise=data["draws"])["actions"]
    assert (actions - data["actions"]).abs().max().item() > 1e-4


def test_schedules_match_the_published_formulas():
    # squaredcos_cap_v2 (Nichol & Dhariwal): alpha_bar_t / alpha_bar_0 follows cos^2, betas capped at 0.999
    abar = schedule.alphas_cumprod("squaredcos_cap_v2", 100)
    f = lambda t: torch.cos(torch.tensor((t / 100 + 0.008) / 1.008 * torch.pi / 2, dtype=torch.float64)) ** 2
    assert abar[49].item() == pytest.approx((f(50) / f(0)).item(), rel=1e-5)
    assert schedule.betas("squaredcos_cap_v2", 100).max().item() == pytest.approx(0.999)
    assert schedule.inference_timesteps(100, 10) == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert schedule.Sampler(abar, "DDPM", 10).draws == 10 and schedule.Sampler(abar, "DDIM", 10).draws == 1
    # a perfect epsilon model recovers x0 in one DDIM step from t to 0
    x0 = torch.rand(3, 4, 2) * 2 - 1
    eps = torch.randn(3, 4, 2)
    t = torch.full((3,), 60, dtype=torch.long)
    xt = schedule.add_noise(abar, x0, eps, t)
    s = schedule.Sampler(abar, "DDIM", 1, clip_sample=False)
    s.timesteps = [60]
    torch.testing.assert_close(s.step(eps, 0, xt, None), x0, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="inference steps must be in"):
        schedule.inference_timesteps(10, 11)


def test_the_packaged_graph_is_lerobots_default_and_bad_settings_are_named():
    cg = compile_graph(load_spec(str(GRAPH)).data, device="meta")
    head = cg.model["head"]
    assert cg.shapes[("backbone", "features")][1:] == (2, 64)  # 2 observation steps, 32 keypoints x (x, y)
    assert cg.shapes[("head", "actions")][1:] == (8, 2)
    assert head.noise_shape(1) == (1, 100, 16, 2)  # DDPM over the 100 training timesteps
    # as many parameters as LeRobot's DiffusionPolicy at its default (PushT) configuration, as the
    # parity script counted them (262,709,026)
    meta, _ = load_case("ddpm")
    assert sum(p.numel() for p in cg.model.parameters()) == meta["default_pusht_parameters"] == 262_709_026
    assert spec_with(dict(meta["config"], use_group_norm=False))["backbone"]["norm"] == "batch_norm"  # LeRobot 0.6's default
    with pytest.raises(ValueError, match="use_group_norm='yes'"):
        spec_with(dict(meta["config"], use_group_norm="yes"))
    spec = fit_spec(load_spec(str(GRAPH)).data, meta["config"])
    spec["blocks"]["backbone"]["with"]["crop"] = [100, 100]
    with pytest.raises(SpecError, match="crop"):
        compile_graph(spec, device="meta")
    spec = fit_spec(load_spec(str(GRAPH)).data, meta["config"])
    spec["blocks"]["head"]["with"]["n_action_steps"] = 8
    with pytest.raises(SpecError, match="n_action_steps"):
        compile_graph(spec, device="meta")
    cg, meta, data = build("ddpm")
    with pytest.raises(ValueError, match="noise must be"):
        cg.infer(**cg.feed(inputs(data, targets=False)), noise=data["draws"][:, :3])


# `graphvla import lerobot` of a Diffusion Policy ---------------------------------------------------
IMPORT = FIXTURES / "import"
SERVE_TOL = 1e-4


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory) -> Path:
    """LeRobot 0.3.2's save_pretrained folder of the import case, rebuilt byte for byte (sha256 checked):
    its config.json, and model.safetensors from the recipe's parameters plus the saved statistics and grids."""
    from safetensors.torch import save_file

    meta = json.loads((IMPORT / "case.json").read_text())
    folder = tmp_path_factory.mktemp("lerobot") / "diffusion_tiny"
    folder.mkdir()
    (folder / "config.json").write_text((IMPORT / "config.json").read_text())
    tensors = load_file(str(IMPORT / "small.safetensors"))
    tensors.update({k: recipe_tensor(k, shape) for k, shape in meta["parameters"].items()})
    save_file(tensors, str(folder / "model.safetensors"), metadata=meta["file_metadata"])
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert digest == meta["model_safetensors_sha256"], "the rebuilt model.safetensors is not LeRobot's"
    return folder


@pytest.fixture(scope="module")
def imported_run(saved_policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "diffusion"
    result = import_cli(saved_policy, out)
    assert result.exit_code == 0, result.output
    assert "LeRobot diffusion" in result.output and "observation.images.top" in result.output
    return out


def frame(data, i):
    """One observation as a LeRobot client sends it to select_action: its keys, raw values (images in [0, 1])."""
    return {"observation.images.top": data[f"image{i}"].numpy(), "observation.state": data[f"state{i}"].numpy()}


def window(data, frames):
    """The graph's window of those frames, oldest first: what the policy assembles (cameras x steps)."""
    return {"images": torch.stack([data[f"image{i}"] for i in frames]).numpy(),
            "state": torch.stack([data[f"state{i}"] for i in frames]).numpy()}


def served_windows(run: Path, data) -> tuple[dict, list]:
    """(server metadata, the actions for frame 0 then frame 1) from one connection, as a LeRobot client
    calls select_action: the run keeps the window (infer.observation_window), [f0, f0] then [f0, f1].
    The session's generator is seeded with serve.seed (0): it draws the DDIM starting noises that
    torch.manual_seed(0) gave LeRobot's sampler, in the same order (graphvla/policy/session.py)."""
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.runners.serve import ServerThread
    from graphvla.runners.serve.section import serve_options, serve_section

    options = serve_options(serve_section(str(run)), "127.0.0.1", 0, None, 1, None, None)
    with ServerThread(load_policy(run), options) as srv:
        with PolicyClient("127.0.0.1", srv.port) as client:
            assert client.metadata["seed"] == 0
            out = [client.infer(frame(data, i))["actions"] for i in (0, 1)]
            server_meta = client.metadata
    return server_meta, out


def test_an_imported_diffusion_policy_serves_lerobots_predict_action_chunk(imported_run):
    """The imported LeRobot 0.3.2 save, served, answers one frame at a time with LeRobot's
    predict_action_chunk: for the first step (LeRobot's queues hold frame 0 twice) and for the second
    (the window [frame 0, frame 1])."""
    meta = json.loads((IMPORT / "case.json").read_text())
    data = load_file(str(IMPORT / "case.safetensors"))
    info = json.loads((imported_run / "imported.json").read_text())
    small = load_file(str(IMPORT / "small.safetensors"))
    # every tensor accounted for: the recipe's parameters loaded; statistics and grids read and checked
    assert info["tensors"] == len(meta["parameters"]) and info["normalization"] == {"state": "min_max", "actions": "min_max"}
    assert sorted(k for k in small if not k.startswith(("normalize_", "unnormalize_"))) == ["diffusion.rgb_encoder.pool.pos_grid"]
    assert meta["serve_seed"] == 0
    server_meta, out = served_windows(imported_run, data)
    assert {"observation.images.top", "observation.state"} <= set(server_meta["observation_keys"])
    assert server_meta["execute_steps"] == 4  # n_action_steps
    assert server_meta["observation_window"] == {"steps": 2, "ports": ["images", "state"]}
    assert server_meta["inputs"]["images"]["views"] == 1 and server_meta["inputs"]["state"].get("history", 1) == 1
    first = abs(out[0] - data["chunk_first"][0].numpy()).max()
    second = abs(out[1] - data["chunk_window"][0].numpy()).max()
    print(f"served imported Diffusion Policy vs LeRobot predict_action_chunk: max |diff| {first:.2e}, {second:.2e}")
    assert first <= SERVE_TOL and second <= SERVE_TOL
    assert abs(out[0] - out[1]).max() > 1e-3  # the older frame matters
    # LeRobot's select_action ran the first chunk's first two actions
    assert abs(out[0][:2] - torch.cat([data["select0"], data["select1"]]).numpy()).max() <= SERVE_TOL


IMPORT_04 = FIXTURES / "import_04"
# LeRobot 0.6.1's save of the import case's sizes at 0.6's image-encoder defaults (batch-norm trunks with
# running statistics, an encoder per camera): `--import-04 --variant batch_norm --dst .../import_06_batch_norm`
IMPORT_06_BN = FIXTURES / "import_06_batch_norm"
# other releases' saves (`--import-04 --dst DIR [--variant batch_norm]` in that release's venv), compared the
# same way: GRAPHVLA_LEROBOT_DIFFUSION_SAVES=DIR[:DIR...] (docs/lerobot.md, "Which LeRobot versions")
SAVES_04 = [IMPORT_04, IMPORT_06_BN] + [
    Path(p) for p in os.environ.get("GRAPHVLA_LEROBOT_DIFFUSION_SAVES", "").split(os.pathsep) if p]


@pytest.mark.parametrize("fixture", SAVES_04, ids=lambda p: p.name)
def test_a_lerobot_04_save_with_processor_files_serves_its_predict_action_chunk(fixture, tmp_path):
    """The same policy as LeRobot 0.4.1 (or a later release) saves it (the model without normalization, the
    statistics in policy_preprocessor / policy_postprocessor files), rebuilt byte for byte, imported and
    served: that release's preprocessor -> predict_action_chunk -> postprocessor on the same frames and
    seed. The batch_norm variant's trunks hold batch norm, its running statistics and counters."""
    from safetensors.torch import save_file

    model = json.loads((fixture / "model.json").read_text())
    folder = tmp_path / "diffusion_04"
    folder.mkdir()
    for f in fixture.iterdir():
        if f.name not in ("model.json", "case.safetensors", "small.safetensors"):
            shutil.copy(f, folder / f.name)
    if model.get("variant"):  # its own small tensors (grids, batch-norm buffers) and parameter names
        tensors, parameters = load_file(str(fixture / "small.safetensors")), model["parameters"]
        assert any(k.endswith("running_var") for k in tensors)
    else:
        tensors = {k: v for k, v in load_file(str(IMPORT / "small.safetensors")).items()
                   if not k.startswith(("normalize_inputs.", "normalize_targets.", "unnormalize_outputs."))}
        parameters = json.loads((IMPORT / "case.json").read_text())["parameters"]
    tensors.update({k: recipe_tensor(k, shape) for k, shape in parameters.items()})
    save_file(tensors, str(folder / "model.safetensors"), metadata=model["file_metadata"])
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == model["model_safetensors_sha256"]
    result = import_cli(folder, tmp_path / "run")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run" / "imported.json").read_text())
    assert info["format"] == "0.4" and info["normalization"] == {"state": "min_max", "actions": "min_max"}
    expected = load_file(str(fixture / "case.safetensors"))
    _, out = served_windows(tmp_path / "run", load_file(str(IMPORT / "case.safetensors")))
    diffs = [abs(out[i] - expected[k][0].numpy()).max() for i, k in enumerate(("chunk_first", "chunk_window"))]
    print(f"served imported {model['lerobot_version']} Diffusion Policy ({fixture.name}) vs its "
          f"predict_action_chunk: max |diff| {max(diffs):.2e}")
    assert max(diffs) <= SERVE_TOL


def test_diffusion_policies_the_graph_cannot_take_are_refused_by_name(saved_policy, tmp_path):
    def attempt(edit, match, weights=None):
        def edit_weights(src):
            from safetensors.torch import save_file

            tensors = load_file(str(src / "model.safetensors"))
            weights(tensors)
            save_file(tensors, str(src / "model.safetensors"))

        refused(saved_policy, tmp_path, edit, match, None if weights is None else edit_weights)

    # batch-norm trunks are imported (LeRobot 0.6's default), but a group-norm save has none of their statistics
    attempt(lambda c: c.update(use_group_norm=False), "running_mean")
    attempt(lambda c: c.update(vision_backbone="resnet50"), "vision_backbone='resnet50'")
    attempt(lambda c: c.update(resize_shape=[32, 32]), "resize_shape [32, 32] is not supported")  # LeRobot 0.4.4+

    def two_cameras(c):
        c["input_features"]["observation.images.side"] = c["input_features"]["observation.images.top"]
    attempt(two_cameras, "observation_images_side")  # a camera without statistics is named


@pytest.mark.slow
def test_an_export_of_the_imported_policy_gives_lerobots_actions(imported_run, tmp_path):
    """graphvla export folds the normalization into a torch.export program that takes the noise as an
    input; with a session seeded 0 it gives LeRobot's predict_action_chunk (about 50 s on 2 cores)."""
    from graphvla.policy.session import Session
    from graphvla.runners.export import export_policy
    from graphvla.runners.exported import load_exported

    data = load_file(str(IMPORT / "case.safetensors"))
    exported = load_exported(export_policy(imported_run, tmp_path / "export"))
    noise = next(d for d in exported.manifest["inputs"] if d["name"] == "noise")
    assert noise["shape"] == ["batch", 1, 8, 2] and noise["num_steps"] == 10  # DDIM: one draw, 10 steps
    assert exported.window is not None and exported.window.steps == 2  # the export keeps the window too
    session = Session(0)
    for i, key in ((0, "chunk_first"), (1, "chunk_window")):  # one frame a step, as to select_action
        obs = frame(data, i)
        actions = exported.infer({"images": obs["observation.images.top"][None], "state": obs["observation.state"]},
                                 session=session)["actions"]
        assert abs(actions - data[key][0].numpy()).max() <= SERVE_TOL


def test_a_training_step_with_random_crops_reaches_every_parameter():
    """In training the crop window is random (one per encoder and batch, in bounds) and the loss
    reaches every parameter; at inference the crop is the center one, so predict is deterministic."""
    meta, data = load_case("ddpm")
    spec = fit_spec(load_spec(str(GRAPH)).data, dict(meta["config"], crop_is_random=True))
    torch.manual_seed(0)
    cg = compile_graph(spec, device="cpu")
    enc = cg.model["backbone"]
    assert enc.params["random_crop"] and enc.crop == (56, 56)
    cg.model.train()
    x = torch.arange(64.0).expand(1, 1, 64, 64)  # each pixel holds its column: a window's left edge
    lefts = {int(enc._crop(x)[0, 0, 0, 0]) for _ in range(30)}
    assert len(lefts) > 1 and lefts <= set(range(64 - 56 + 1))  # several windows drawn, all in bounds
    cg.model.eval()
    assert enc._crop(x).shape[-2:] == (56, 56) and enc._crop(x)[0, 0, 0, 0].item() == 4.0  # round((64 - 56) / 2)
    cg.model.train()
    loss = cg.train["action"](**cg.feed(inputs(data), "action"))["loss"]
    loss.backward()
    missing = [n for n, p in cg.model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert torch.isfinite(loss) and not missing, missing


def test_pushts_single_camera_key_is_served_under_its_name(saved_policy, tmp_path):
    """LeRobot's PushT policies name their one camera `observation.image` (OBS_IMAGE), not
    observation.images.<name>: imported, the served key is that name."""
    from safetensors.torch import save_file

    src = tmp_path / "src"
    shutil.copytree(saved_policy, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["input_features"] = {("observation.image" if k == "observation.images.top" else k): v
                             for k, v in cfg["input_features"].items()}
    (src / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(src / "model.safetensors"))
    tensors = {k.replace("observation_images_top", "observation_image"): v for k, v in tensors.items()}
    save_file(tensors, str(src / "model.safetensors"))
    result = import_cli(src, tmp_path / "run")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "run" / "imported.json").read_text())
    assert info["key_map"] == {"observation.image": "images[0]", "observation.state": "state"}


def test_real_time_chunking_on_the_served_import(imported_run):
    """A real-time chunking request on the served import: the committed prefix of the previous chunk,
    then a blend into the new one (the diffusion head samples without guidance)."""
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.protocol import RTC_KEY
    from graphvla.runners.serve import ServerThread
    from graphvla.runners.serve.section import serve_options, serve_section

    data = load_file(str(IMPORT / "case.safetensors"))
    obs = frame(data, 1)
    old = data["chunk_first"][0].numpy()
    options = serve_options(serve_section(str(imported_run)), "127.0.0.1", 0, None, 1, None, None)
    with ServerThread(load_policy(imported_run), options) as srv:
        with PolicyClient("127.0.0.1", srv.port) as client:
            plain = client.infer(obs)["actions"]
            reply = client.infer({**obs, RTC_KEY: {"delay": 2, "remaining_actions": old}})
    assert reply["rtc"]["applied"] and reply["rtc"]["method"] == "blend"
    assert abs(reply["actions"][:2] - old[:2]).max() <= 1e-6
    assert abs(reply["actions"][2:] - plain[2:]).max() > 1e-4


def test_graphvla_trains_the_diffusion_graph_on_a_recording_with_the_observation_window(tmp_path, metaworld_data):
    """lerobot/diffusion (tiny sizes, n_obs_steps 2) trains with `graphvla train`'s trainer on a
    Meta-World recording: the data YAML binds the camera at offsets [-1, 0] (the window, oldest first)
    and the state has history 2; the run loads and answers a window."""
    import numpy as np

    from graphvla.policy.loading import load_policy
    from graphvla.runners.train import train
    from graphvla.runners.train.dataio import load_bundle

    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(f"datasets:\n  - path: {metaworld_data}\n    keys: {{images: {{camera: observation.images.corner, "
                         "offsets: [-1, 0]}, state: observation.state, actions: action}\n")
    overrides = ["inputs.images.size=[64, 64]", "inputs.state.dim=4", "inputs.actions.dim=4", "inputs.actions.horizon=8",
                 "inputs.actions_mask.shape=[8]", "blocks.backbone.with.crop=[56, 56]", "blocks.backbone.with.keypoints=4",
                 "blocks.head.with.down_dims=[16, 32]", "blocks.head.with.kernel_size=3", "blocks.head.with.groups=4",
                 "blocks.head.with.step_embed_dim=16", "blocks.head.with.n_action_steps=4",
                 "blocks.head.with.train_timesteps=10", "trainer.max_steps=2", "trainer.batch_size=4",
                 "trainer.save_every=2", "trainer.warmup_steps=1"]
    spec = load_spec(str(GRAPH), overrides)
    result = train(spec, load_bundle(str(data_yaml), spec), tmp_path / "run", progress=False)
    assert result.step == 2 and all(np.isfinite(r["loss"]) for r in result.history)
    policy = load_policy(tmp_path / "run")
    out = policy.infer({"images": np.zeros((2, 64, 64, 3), np.uint8), "state": np.zeros((2, 4), np.float32)})
    assert out["actions"].shape == (4, 4) and np.isfinite(out["actions"]).all()


def test_graphvla_eval_runs_an_imported_diffusion_policy(tmp_path):
    """`graphvla eval` (GraphVLA's Meta-World suite, one short episode) on an imported Diffusion Policy
    with n_obs_steps 2 (the eval client sends one frame a step; the run keeps the window) at
    Meta-World's sizes: the import case's
    architecture with one 64 x 64 camera and 4-d state and actions, its parameters from the recipe in the
    shapes these sizes give, saved in LeRobot 0.3's format (statistics as buffers)."""
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from conftest import require_metaworld
    from graphvla.cli import main

    require_metaworld()
    meta = json.loads((IMPORT / "case.json").read_text())
    cfg = json.loads((IMPORT / "config.json").read_text())
    cfg.update(crop_shape=[56, 56])  # n_obs_steps 2: the run keeps the window, the eval client sends frames
    cfg["input_features"] = {"observation.images.top": {"type": "VISUAL", "shape": [3, 64, 64]},
                             "observation.state": {"type": "STATE", "shape": [4]}}
    cfg["output_features"]["action"]["shape"] = [4]
    from graphvla.blocks.base import parameters_on_meta

    with parameters_on_meta():  # shapes only; the grids (buffers) are real
        cg = compile_graph(fit_spec(load_spec(str(GRAPH)).data, cfg), device="cpu")
    shapes = {k: v.shape for k, v in cg.model.state_dict().items()}
    tensors = {k: recipe_tensor(k, shapes[graph_key(k)]) for k in meta["parameters"]}
    assert {graph_key(k) for k in tensors} == set(shapes)  # the same architecture: every tensor has its key
    tensors["diffusion.rgb_encoder.pool.pos_grid"] = cg.model["backbone"].encoders[0].keypoints.grid
    for key, stats in (("observation_images_top", {"mean": torch.full((3, 1, 1), 0.4), "std": torch.full((3, 1, 1), 0.25)}),
                       ("observation_state", {"min": -torch.ones(4), "max": torch.ones(4)})):
        tensors.update({f"normalize_inputs.buffer_{key}.{n}": v for n, v in stats.items()})
    for module in ("normalize_targets", "unnormalize_outputs"):
        tensors.update({f"{module}.buffer_action.min": -torch.ones(4), f"{module}.buffer_action.max": torch.ones(4)})
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(src / "model.safetensors"))
    result = import_cli(src, tmp_path / "run")
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--suite", "metaworld", "--tasks", "reach-v3",
                                       "--episodes", "1", "--max-steps", "8", "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    episode = json.loads((tmp_path / "eval" / "results.json").read_text())["episodes"]["reach-v3"][0]
    assert episode["steps"] == 8 and episode["queries"] == 2  # 4 actions executed per chunk (n_action_steps)


def test_the_observation_window_is_lerobots_queue_camera_major():
    """policy/window.py: after a reset the first frame fills the window, then each frame pushes the
    oldest out; two cameras' windows come out camera-major (view c * steps + s), as the encoder reads them;
    a graph with no port the window fits is refused naming infer.observation_window."""
    from graphvla.policy.window import ObservationWindow

    inputs = {"images": {"kind": "image", "views": 4, "size": [2, 2]}, "state": {"kind": "state", "dim": 3, "history": 2},
              "instruction": {"kind": "text"}}
    w = ObservationWindow.for_graph(2, inputs)
    assert sorted(w.ports) == ["images", "state"] and w.client_inputs(inputs)["images"]["views"] == 2
    assert w.client_inputs(inputs)["state"]["history"] == 1 and w.client_inputs(inputs)["instruction"] == inputs["instruction"]
    frames = {}
    img = lambda t: torch.stack([torch.full((3, 2, 2), 10.0 * t + c) for c in range(2)])  # noqa: E731 [cameras, 3, 2, 2]
    first = w.push("images", img(0), frames)
    assert first[:, 0, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]  # [cam0 t0, cam0 t0, cam1 t0, cam1 t0]
    second = w.push("images", img(1), frames)
    assert second[:, 0, 0, 0].tolist() == [0.0, 10.0, 1.0, 11.0]  # camera-major, oldest first
    state = [w.push("state", torch.full((3,), float(t)), frames) for t in range(3)][-1]
    assert state[:, 0].tolist() == [1.0, 2.0]
    assert ObservationWindow.for_graph(1, inputs) is None
    with pytest.raises(ValueError, match="infer.observation_window: 3"):
        ObservationWindow.for_graph(3, inputs)
