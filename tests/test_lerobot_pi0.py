"""graphs/lerobot/pi0 is LeRobot's pi0 (LeRobot 0.4.1's port of openpi's PyTorch model): with the weights
of a tiny pi0 that LeRobot's own code built and saved (tests/fixtures/lerobot/pi0, written by
scripts/parity/lerobot_pi0.py: SigLIP + Gemma + a Gemma expert of the same families at tiny sizes, fp32
on the CPU), the graph gives LeRobot's prefix embeddings, training loss (with the noise and flow time
LeRobot drew) and predict_action_chunk (with its noise) within 1e-5; `graphvla import lerobot` of
LeRobot 0.4.1's save with its processor files, served, gives preprocessor -> predict_action_chunk ->
postprocessor within 1e-4 from LeRobot's observation keys. No LeRobot code is imported: only its numbers."""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graphvla.blocks.base import parameters_on_meta
from graphvla.compiler.compile import compile_graph
from graphvla.runners.importers import lerobot as L
from lerobot_import import import_cli, refused, renamed_weights_import_the_same

# GRAPHVLA_LEROBOT_PI0_FIXTURE=DIR: the same tests on another LeRobot release's fixture (scripts/parity/
# lerobot_pi0.py --out DIR in that release's venv; docs/lerobot.md, "Which LeRobot versions")
FIXTURE = Path(os.environ.get("GRAPHVLA_LEROBOT_PI0_FIXTURE") or Path(__file__).resolve().parent / "fixtures" / "lerobot" / "pi0")
IMPORT_04 = FIXTURE / "import_04"
TOL = 1e-5
SERVE_TOL = 1e-4


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory) -> Path:
    """LeRobot 0.4.1's save_pretrained folder (config, weights, processor files)."""
    folder = tmp_path_factory.mktemp("lerobot") / "pi0_tiny"
    shutil.copytree(IMPORT_04, folder)
    (folder / "case.safetensors").unlink()
    (folder / "case.json").unlink()
    shutil.copy(FIXTURE / "model.safetensors", folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def case():
    return json.loads((FIXTURE / "case.json").read_text()), load_file(str(FIXTURE / "case.safetensors"))


def parity_spec(folder: Path) -> dict:
    """The importer's spec for the saved policy, with inputs for the training noise and flow time wired to
    the head (the parity test feeds LeRobot's draws)."""
    cfg_path, cfg = L.read_config(folder)
    features = L.features_of(cfg, cfg_path)
    state = load_file(str(folder / "model.safetensors"))
    _, modes, images, pre = L.normalization_of(folder, "0.4", state, cfg, features, cfg_path)
    spec = L.build_spec(L.POLICIES["pi0"], cfg, cfg_path, features, images, modes, pre)
    h, d = features["horizon"], cfg["max_action_dim"]
    spec["inputs"]["flow_noise"] = {"kind": "action", "dim": d, "horizon": h, "train_only": True, "optional": True}
    spec["inputs"]["flow_time"] = {"kind": "state", "dim": 1, "train_only": True, "optional": True}
    spec["blocks"]["head"]["in"].update(noise="inputs.flow_noise", time="inputs.flow_time")
    return spec


@pytest.fixture(scope="module")
def graph(saved_policy):
    spec = parity_spec(saved_policy)
    cg = compile_graph(spec, device="cpu")
    state = load_file(str(saved_policy / "model.safetensors"))
    mapped = L.map_weights(state, cg.model.state_dict(), L.fixed_tables(cg, L.POLICIES["pi0"]),
                           saved_policy / "model.safetensors", L.POLICIES["pi0"])
    assert set(mapped) == set(cg.model.state_dict())  # every graph tensor from LeRobot's
    assert len(state) == len(mapped) + 1  # ... and every LeRobot tensor used but the expert's lm_head
    cg.model.load_state_dict(mapped, strict=True)
    cg.model.eval()
    return cg


def images_of(data) -> torch.Tensor:
    return torch.stack([data["image0"], data["image1"]], dim=1)


def test_the_prefix_is_lerobots_embed_prefix(graph, case):
    """SigLIP + projector per camera (after LeRobot's resize with padding) and the scaled language
    embeddings: LeRobot's embed_prefix and its mask."""
    _, data = case
    bb = graph.model["backbone"]
    with torch.no_grad():
        x, pad = bb.embed(images_of(data), None, data["tokens"], data["tokens_mask"])
    diff = (x - data["prefix"]).abs().max().item()
    print(f"pi0 prefix embeddings vs LeRobot's embed_prefix: max |diff| {diff:.2e}")
    assert diff <= TOL and torch.equal(pad, data["prefix_mask"])
    assert data["images_resized"].min().item() == pytest.approx(-3.0)  # LeRobot pads with -1 before scaling


def test_training_loss_is_lerobots(graph, case):
    """PI0Policy.forward's loss with the noise and time LeRobot drew; a different time moves it."""
    _, data = case
    fed = graph.feed({"images": images_of(data), "state": data["state"], "tokens": data["tokens"],
                      "tokens_mask": data["tokens_mask"], "actions": data["actions"],
                      "flow_noise": data["train_noise"], "flow_time": data["train_time"]}, "action")
    with torch.no_grad():
        loss = graph.train["action"](**fed)["loss"].item()
        other = graph.train["action"](**{**fed, "flow_time": data["train_time"] * 0.5})["loss"].item()
    want = data["loss"].item()
    # LeRobot averages over the real action dims only: its per-element losses, cut, give the same
    assert abs(data["losses"][:, :, :3].mean().item() - want) <= 1e-6
    print(f"pi0 training loss {loss:.6f} vs LeRobot {want:.6f}: |diff| {abs(loss - want):.2e}")
    assert abs(loss - want) <= TOL
    assert abs(other - want) > 100 * TOL


def test_predicted_chunk_is_lerobots_predict_action_chunk(graph, case):
    """10 Euler steps from LeRobot's noise through the prefix keys and values."""
    _, data = case
    batch = {"images": images_of(data), "state": data["state"], "tokens": data["tokens"],
             "tokens_mask": data["tokens_mask"]}
    with torch.no_grad():
        out = graph.infer(**graph.feed(batch), noise=data["infer_noise"])["actions"]
        other = graph.infer(**graph.feed(batch), noise=data["infer_noise"] * 0.5)["actions"]
    diff = (out - data["chunk"]).abs().max().item()
    print(f"pi0 predict_action_chunk: max |diff| {diff:.2e}")
    assert out.shape == data["chunk"].shape and diff <= TOL
    assert (other - data["chunk"]).abs().max().item() > 100 * TOL


def test_the_default_graph_compiles_at_lerobots_sizes():
    """lerobot/pi0 at LeRobot's default sizes (PaliGemma 3B + the 300M expert), on meta."""
    from graphvla.spec.loader import load_spec

    with parameters_on_meta():
        cg = compile_graph(load_spec("lerobot/pi0"), device="cpu")
    bb, head = cg.model["backbone"], cg.model["head"]
    assert len(bb.layers) == len(head.layers) == 18 and len(bb.vision.layers) == 27
    assert bb.vision.num_patches == 256 and head.norm.weight.shape[0] == 1024
    assert bb.embed_tokens.weight.shape == (257152, 2048)
    assert sum(p.numel() for p in cg.model.parameters()) == 3_238_048_528


@pytest.fixture(scope="module")
def imported_run(saved_policy, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "pi0"
    result = import_cli(saved_policy, run)
    assert result.exit_code == 0, result.output
    assert "LeRobot pi0" in result.output and "observation.language.tokens" in result.output
    return run


CAMS = ("observation.images.top", "observation.images.wrist")


def observation(data, i: int) -> dict:
    """Observation i as a LeRobot client sends it: raw cameras and state, the tokens LeRobot's tokenizer
    step made for its task."""
    return {**{c: data[f"image{i}_{k}"].numpy() for k, c in enumerate(CAMS)},
            "observation.state": data[f"state{i}"].numpy(),
            "observation.language.tokens": data[f"tokens{i}"][0].numpy(),
            "observation.language.attention_mask": data[f"tokens_mask{i}"][0].numpy()}


def test_an_imported_lerobot_04_pi0_serves_its_predict_action_chunk(imported_run):
    """LeRobot 0.4.1's save (processor files with dataset statistics), imported through the command line
    and served: each observation (LeRobot's keys: cameras, state, the tokens its tokenizer step made) on
    a fresh connection, whose session seeded 0 draws the noise torch.manual_seed(0) gave LeRobot; the
    result is LeRobot's preprocessor -> predict_action_chunk -> postprocessor."""
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.runners.serve import ServerThread
    from graphvla.runners.serve.section import serve_options, serve_section

    run = imported_run
    info = json.loads((run / "imported.json").read_text())
    assert info["format"] == "0.4" and info["normalization"] == {"state": "mean_std", "actions": "mean_std"}
    assert info["tensors"] == 88  # every LeRobot tensor but the expert's unused lm_head
    data = load_file(str(IMPORT_04 / "case.safetensors"))
    out = []
    options = serve_options(serve_section(str(run)), "127.0.0.1", 0, None, 1, None, None)
    with ServerThread(load_policy(run), options) as srv:
        for i in range(2):
            with PolicyClient("127.0.0.1", srv.port) as client:
                assert client.metadata["seed"] == 0 and client.metadata["execute_steps"] == 5  # n_action_steps
                assert client.metadata["rtc"]["method"] == "guidance"  # head.pi0's own real-time chunking
                assert {*CAMS, "observation.state", "observation.language.tokens",
                        "observation.language.attention_mask"} <= set(client.metadata["observation_keys"])
                out.append(client.infer(observation(data, i))["actions"])
    diffs = [abs(out[i] - data[f"chunk{i}"][0].numpy()).max() for i in range(2)]
    print(f"served imported pi0 vs LeRobot 0.4.1 predict_action_chunk: max |diff| {max(diffs):.2e}")
    assert max(diffs) <= SERVE_TOL
    assert abs(out[0] - out[1]).max() > 1e-3  # the observation matters


@pytest.mark.slow
def test_an_export_of_the_imported_pi0_gives_lerobots_actions(text_run, tmp_path):
    """graphvla export of the imported run that tokenizes its task (noise an input, normalization folded
    in, the tokenizer step saved with the export) with a session seeded 0 gives LeRobot's chunks (about
    35 s on 2 cores)."""
    import numpy as np

    from graphvla.policy.session import Session
    from graphvla.runners.export import export_policy
    from graphvla.runners.exported import load_exported

    data = load_file(str(IMPORT_04 / "case.safetensors"))
    exported = load_exported(export_policy(text_run, tmp_path / "export"))
    tasks = json.loads((IMPORT_04 / "case.json").read_text())["tasks"]
    noise = next(d for d in exported.manifest["inputs"] if d["name"] == "noise")
    assert noise["shape"] == ["batch", 5, 6] and noise["num_steps"] == 10
    for i in range(2):
        o = observation(data, i)
        ports = {"images": np.stack([o[c] for c in CAMS]), "state": o["observation.state"], "instruction": tasks[i]}
        actions = exported.infer(ports, session=Session(0))["actions"]
        assert abs(actions - data[f"chunk{i}"][0].numpy()).max() <= SERVE_TOL


def test_pi0_saves_the_graph_cannot_take_are_refused_by_name(saved_policy, tmp_path):
    def attempt(edit, match, files=None):
        refused(saved_policy, tmp_path, edit, match, files)

    def as_03(c):  # LeRobot 0.3.x's pi0 config
        c.pop("paligemma_variant")
        c["resize_imgs_with_padding"] = [16, 16]
    attempt(as_03, "LeRobot 0.3.x")
    attempt(lambda c: c.update(image_resolution=[16, 24]), "image_resolution [16, 24]")
    attempt(lambda c: c.update(image_resolution=[32, 32]), "image_resolution [32, 32]")
    attempt(lambda c: c.update(max_action_dim=2), "max_action_dim 2")
    attempt(lambda c: c["normalization_mapping"].update(VISUAL="MEAN_STD"), "normalization_mapping.VISUAL")

    def other_tokenizer(src):
        pre = json.loads((src / "policy_preprocessor.json").read_text())
        for step in pre["steps"]:
            if step["registry_name"] == "tokenizer_processor":
                step["config"]["max_length"] = 9
        (src / "policy_preprocessor.json").write_text(json.dumps(pre))
    attempt(lambda c: None, "tokenizer_processor max_length 9", other_tokenizer)

    def extra_tensor(src):
        from safetensors.torch import save_file

        t = load_file(str(src / "model.safetensors"))
        t["model.extra_proj.weight"] = torch.zeros(2, 2)
        save_file(t, str(src / "model.safetensors"))
    attempt(lambda c: None, "model.extra_proj.weight", extra_tensor)

    def unknown_step(src):
        pre = json.loads((src / "policy_preprocessor.json").read_text())
        pre["steps"].insert(2, {"registry_name": "image_crop_processor", "config": {}})
        (src / "policy_preprocessor.json").write_text(json.dumps(pre))
    attempt(lambda c: None, "image_crop_processor", unknown_step)

    def relative_actions(enabled):
        def edit(src):
            pre = json.loads((src / "policy_preprocessor.json").read_text())
            pre["steps"].insert(5, {"registry_name": "relative_actions_processor",
                                    "config": {"enabled": enabled, "exclude_joints": ["gripper"], "action_names": None}})
            (src / "policy_preprocessor.json").write_text(json.dumps(pre))
        return edit
    attempt(lambda c: None, "relative_actions_processor is enabled", relative_actions(True))
    src = tmp_path / "disabled"
    shutil.copytree(saved_policy, src)
    relative_actions(False)(src)
    assert import_cli(src, tmp_path / "run_disabled").exit_code == 0  # a disabled one is a no-op


def test_head_refuses_bad_noise_and_wiring(graph, case, saved_policy):
    _, data = case
    head, bb = graph.model["head"], graph.model["backbone"]
    with torch.no_grad():
        out = bb(images_of(data), data["tokens"], tokens_mask=data["tokens_mask"])
        with pytest.raises(ValueError, match="max_action_dim"):
            head.predict(out["kv"], out["prefix_mask"], data["state"], noise=torch.zeros(2, 5, 3))
    spec = parity_spec(saved_policy)
    spec["blocks"]["head"]["with"]["head_dim"] = 8  # the expert cannot attend to PaliGemma's keys
    with pytest.raises(Exception, match="kv_heads x head_dim"):
        compile_graph(spec, device="cpu")
    spec = parity_spec(saved_policy)
    spec["blocks"]["backbone"]["with"]["resize"] = False  # 12 x 20 cameras, a 16 x 16 tower
    with pytest.raises(Exception, match="resize is false"):
        compile_graph(spec, device="cpu")


def test_real_time_chunking_guidance_pulls_toward_the_previous_chunk(graph, case):
    """head.pi0's rtc: all-zero weights give the plain chunk exactly; weights on the first steps pull
    those steps toward the target (the previous chunk's remaining actions)."""
    from graphvla.blocks.heads.flow_matching import Inpainting

    _, data = case
    head, bb = graph.model["head"], graph.model["backbone"]
    with torch.no_grad():
        out = bb(images_of(data), data["tokens"], tokens_mask=data["tokens_mask"])
        args = (out["kv"], out["prefix_mask"], data["state"])
        plain = head.predict(*args, noise=data["infer_noise"])["actions"]
        target = plain + 0.5
        zero = Inpainting(target, torch.zeros(2, 5))
        assert torch.equal(head.predict(*args, noise=data["infer_noise"], rtc=zero)["actions"], plain)
        weights = torch.tensor([[1.0, 1.0, 0.5, 0.0, 0.0]] * 2)
        guided = head.predict(*args, noise=data["infer_noise"], rtc=Inpainting(target, weights, 5.0))["actions"]
    before = (plain[:, :2] - target[:, :2]).abs().mean().item()
    after = (guided[:, :2] - target[:, :2]).abs().mean().item()
    assert after < 0.5 * before, (before, after)
    with pytest.raises(ValueError, match="rtc.weights"):
        head.predict(*args, noise=data["infer_noise"], rtc=Inpainting(target, torch.zeros(2, 4)))


@pytest.fixture(scope="module")
def text_run(saved_policy, tmp_path_factory) -> Path:
    """The save with its tokenizer step's tokenizer_name pointing at the stand-in tokenizer's folder (the
    tokenizer LeRobot's step ran with), imported: the run tokenizes the task itself."""
    src = tmp_path_factory.mktemp("text") / "src"
    shutil.copytree(saved_policy, src)
    pre = json.loads((src / "policy_preprocessor.json").read_text())
    for step in pre["steps"]:
        if step["registry_name"] == "tokenizer_processor":
            step["config"]["tokenizer_name"] = str(FIXTURE / "tokenizer")
    (src / "policy_preprocessor.json").write_text(json.dumps(pre))
    run = src.parent / "run"
    result = import_cli(src, run)
    assert result.exit_code == 0, result.output
    return run


def test_an_import_whose_tokenizer_is_on_disk_tokenizes_the_task_itself(text_run):
    """When the tokenizer step's tokenizer_name is on this machine (here the folder of the stand-in
    tokenizer LeRobot's step ran with), the run takes LeRobot's `task` string: backbone.paligemma's step
    appends the newline and tokenizes as LeRobot's preprocessor did (its tokens, exactly), the run carries
    the tokenizer's files, and the served chunks are LeRobot's."""
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.runners.serve import ServerThread
    from graphvla.runners.serve.section import serve_options, serve_section

    run = text_run
    data = load_file(str(IMPORT_04 / "case.safetensors"))
    tasks = json.loads((IMPORT_04 / "case.json").read_text())["tasks"]
    policy = load_policy(run)
    made = policy.preprocess({"instruction": tasks})  # the run's own pipeline, read from its files
    for i in range(2):
        assert torch.equal(made["backbone.tokens"][i], data[f"tokens{i}"][0])
        assert torch.equal(made["backbone.tokens_mask"][i], data[f"tokens_mask{i}"][0])
    assert list(run.rglob("tokenizer.json")), "the run does not carry the tokenizer"
    out = []
    options = serve_options(serve_section(str(run)), "127.0.0.1", 0, None, 1, None, None)
    with ServerThread(policy, options) as srv:
        for i in range(2):
            with PolicyClient("127.0.0.1", srv.port) as client:
                assert "task" in client.metadata["observation_keys"]
                obs = {k: v for k, v in observation(data, i).items() if not k.startswith("observation.language")}
                out.append(client.infer({**obs, "task": tasks[i]})["actions"])
    diffs = [abs(out[i] - data[f"chunk{i}"][0].numpy()).max() for i in range(2)]
    print(f"served imported pi0 (task strings) vs LeRobot 0.4.1: max |diff| {max(diffs):.2e}")
    assert max(diffs) <= SERVE_TOL


def test_a_training_step_reaches_every_parameter_the_loss_depends_on(saved_policy, case):
    """Backward through the training graph: every parameter gets a gradient but those after PaliGemma's
    last keys and values (pi0 reads the prefix's keys and values only: the last layer's queries, output
    projection and MLP and the final norm reach nothing, in LeRobot's joint computation too) and the
    embedding rows of tokens not in the batch (or only in its padding)."""
    _, data = case
    cg = compile_graph(parity_spec(saved_policy), device="cpu")
    fed = cg.feed({"images": images_of(data), "state": data["state"], "tokens": data["tokens"],
                   "tokens_mask": data["tokens_mask"], "actions": data["actions"]}, "action")
    cg.train["action"](**fed)["loss"].backward()
    none = sorted(n for n, p in cg.model.named_parameters() if p.grad is None or not p.grad.abs().sum())
    last = f"backbone.layers.{len(cg.model['backbone'].layers) - 1}."
    assert none == sorted(["backbone.norm.weight"] + [last + n for n in (
        "self_attn.q_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")]), none
    used = data["tokens"][data["tokens_mask"]].unique()  # padding tokens are masked out of every attention
    grad = cg.model["backbone"].embed_tokens.weight.grad
    assert grad[used].abs().sum(-1).gt(0).all() and not grad[[i for i in range(64) if i not in used.tolist()]].any()


def test_openpi_style_names_import_to_the_same_weights(saved_policy, imported_run, tmp_path):
    """Weights named as openpi's conversions name them (no `model.` prefix, time_mlp_in / time_mlp_out)
    import to the same run tensors."""
    renamed_weights_import_the_same(saved_policy, imported_run, tmp_path,
                                    lambda k: k[len("model."):].replace("action_time_mlp_", "time_mlp_"),
                                    "time_mlp_in.")


def test_empty_cameras_are_left_out_and_change_nothing(saved_policy, tmp_path):
    """A save with LeRobot's empty_cameras (its config lists observation.images.empty_camera_0, which
    LeRobot fills with -1 and masks out) imports without it and serves, from the real cameras, the chunk
    LeRobot's predict_action_chunk gave with the empty camera."""
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.runners.serve import ServerThread
    from graphvla.runners.serve.section import serve_options, serve_section

    src = tmp_path / "src"
    shutil.copytree(saved_policy, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["empty_cameras"] = 1
    cfg["input_features"]["observation.images.empty_camera_0"] = {"type": "VISUAL", "shape": [3, 16, 16]}
    (src / "config.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    result = import_cli(src, run)
    assert result.exit_code == 0, result.output
    data = load_file(str(IMPORT_04 / "case.safetensors"))
    options = serve_options(serve_section(str(run)), "127.0.0.1", 0, None, 1, None, None)
    with ServerThread(load_policy(run), options) as srv, PolicyClient("127.0.0.1", srv.port) as client:
        assert "observation.images.empty_camera_0" not in client.metadata["observation_keys"]
        out = client.infer(observation(data, 0))["actions"]
    assert abs(out - data["chunk0_empty_camera"][0].numpy()).max() <= SERVE_TOL

