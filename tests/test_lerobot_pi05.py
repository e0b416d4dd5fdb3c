"""graphs/lerobot/pi05 is LeRobot's pi0.5 (LeRobot 0.4.1's port of openpi's PyTorch model): with the
weights of a tiny pi0.5 that LeRobot's own code built and saved (tests/fixtures/lerobot/pi05, written by
scripts/parity/lerobot_pi05.py: SigLIP + Gemma + a Gemma expert with adaptive norms, of the same families
at tiny sizes, fp32 on the CPU), the graph gives LeRobot's prefix embeddings, training loss (with the
noise and flow time LeRobot drew) and predict_action_chunk (with its noise) within 1e-5; `graphvla import
lerobot` of LeRobot 0.4.1's save with its processor files, served, gives preprocessor ->
predict_action_chunk -> postprocessor within 1e-4 (the state written into the prompt by the run itself,
or the tokens LeRobot's preprocessor made). No LeRobot code is imported: only its numbers."""
from __future__ import annotations

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

# GRAPHVLA_LEROBOT_PI05_FIXTURE=DIR: the same tests on another LeRobot release's fixture (scripts/parity/
# lerobot_pi05.py --out DIR in that release's venv; docs/lerobot.md, "Which LeRobot versions")
FIXTURE = Path(os.environ.get("GRAPHVLA_LEROBOT_PI05_FIXTURE") or Path(__file__).resolve().parent / "fixtures" / "lerobot" / "pi05")
IMPORT_04 = FIXTURE / "import_04"
TOL = 1e-5
SERVE_TOL = 1e-4
CAMS = ("observation.images.top", "observation.images.wrist")


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory) -> Path:
    """LeRobot 0.4.1's save_pretrained folder (config, weights, processor files)."""
    folder = tmp_path_factory.mktemp("lerobot") / "pi05_tiny"
    shutil.copytree(IMPORT_04, folder)
    (folder / "case.safetensors").unlink()
    (folder / "case.json").unlink()
    shutil.copy(FIXTURE / "model.safetensors", folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def case():
    return json.loads((FIXTURE / "case.json").read_text()), load_file(str(FIXTURE / "case.safetensors"))


def parity_spec(folder: Path) -> dict:
    """The importer's spec for the saved policy (its tokenizer is not on this machine: tokens are inputs),
    with inputs for the training noise and flow time wired to the head (the test feeds LeRobot's draws)."""
    cfg_path, cfg = L.read_config(folder)
    features = L.features_of(cfg, cfg_path)
    state = load_file(str(folder / "model.safetensors"))
    _, modes, images, pre = L.normalization_of(folder, "0.4", state, cfg, features, cfg_path)
    spec = L.build_spec(L.POLICIES["pi05"], cfg, cfg_path, features, images, modes, pre)
    h, d = features["horizon"], cfg["max_action_dim"]
    spec["inputs"]["flow_noise"] = {"kind": "action", "dim": d, "horizon": h, "train_only": True, "optional": True}
    spec["inputs"]["flow_time"] = {"kind": "state", "dim": 1, "train_only": True, "optional": True}
    spec["blocks"]["head"]["in"].update(noise="inputs.flow_noise", time="inputs.flow_time")
    return spec


@pytest.fixture(scope="module")
def graph(saved_policy):
    spec = parity_spec(saved_policy)
    assert "state" not in spec["inputs"] and "prompt" not in spec["blocks"]  # the tokens hold the state
    cg = compile_graph(spec, device="cpu")
    state = load_file(str(saved_policy / "model.safetensors"))
    mapped = L.map_weights(state, cg.model.state_dict(), L.fixed_tables(cg, L.POLICIES["pi05"]),
                           saved_policy / "model.safetensors", L.POLICIES["pi05"])
    assert set(mapped) == set(cg.model.state_dict())  # every graph tensor from LeRobot's
    assert len(state) == len(mapped) + 1  # ... and every LeRobot tensor used but the expert's lm_head
    assert any(k.endswith("input_layernorm.dense.weight") and k.startswith("head.") for k in mapped)
    cg.model.load_state_dict(mapped, strict=True)
    cg.model.eval()
    return cg


def images_of(data) -> torch.Tensor:
    return torch.stack([data["image0"], data["image1"]], dim=1)


def test_the_prefix_is_lerobots_embed_prefix(graph, case):
    _, data = case
    with torch.no_grad():
        x, pad = graph.model["backbone"].embed(images_of(data), None, data["tokens"], data["tokens_mask"])
    diff = (x - data["prefix"]).abs().max().item()
    print(f"pi0.5 prefix embeddings vs LeRobot's embed_prefix: max |diff| {diff:.2e}")
    assert diff <= TOL and torch.equal(pad, data["prefix_mask"])


def test_training_loss_is_lerobots(graph, case):
    """PI05Policy.forward's loss with the noise and time LeRobot drew; a different time moves it."""
    _, data = case
    fed = graph.feed({"images": images_of(data), "tokens": data["tokens"], "tokens_mask": data["tokens_mask"],
                      "actions": data["actions"], "flow_noise": data["train_noise"],
                      "flow_time": data["train_time"]}, "action")
    with torch.no_grad():
        loss = graph.train["action"](**fed)["loss"].item()
        other = graph.train["action"](**{**fed, "flow_time": data["train_time"] * 0.5})["loss"].item()
    want = data["loss"].item()
    assert abs(data["losses"][:, :, :3].mean().item() - want) <= 1e-6  # the real action dims only
    print(f"pi0.5 training loss {loss:.6f} vs LeRobot {want:.6f}: |diff| {abs(loss - want):.2e}")
    assert abs(loss - want) <= TOL
    assert abs(other - want) > 100 * TOL


def test_predicted_chunk_is_lerobots_predict_action_chunk(graph, case):
    """10 Euler steps from LeRobot's noise, the flow time conditioning the expert's norms."""
    _, data = case
    batch = {"images": images_of(data), "tokens": data["tokens"], "tokens_mask": data["tokens_mask"]}
    with torch.no_grad():
        out = graph.infer(**graph.feed(batch), noise=data["infer_noise"])["actions"]
        other = graph.infer(**graph.feed(batch), noise=data["infer_noise"] * 0.5)["actions"]
    diff = (out - data["chunk"]).abs().max().item()
    print(f"pi0.5 predict_action_chunk: max |diff| {diff:.2e}")
    assert out.shape == data["chunk"].shape and diff <= TOL
    assert (other - data["chunk"]).abs().max().item() > 100 * TOL


def test_the_time_conditioning_matters(graph, case):
    """Zeroing the adaptive norms' dense layers (openpi's initialization) changes the velocity: the
    parity above exercises them."""
    _, data = case
    head, bb = graph.model["head"], graph.model["backbone"]
    with torch.no_grad():
        out = bb(images_of(data), data["tokens"], tokens_mask=data["tokens_mask"])
        x = data["infer_noise"]
        t = torch.full((2,), 0.7)
        v = head.velocity(out["kv"], out["prefix_mask"], None, x, t)
        v_other_time = head.velocity(out["kv"], out["prefix_mask"], None, x, t * 0.5)
        saved = head.norm.dense.weight.clone()
        head.norm.dense.weight.zero_()
        v_zero = head.velocity(out["kv"], out["prefix_mask"], None, x, t)
        head.norm.dense.weight.copy_(saved)
    assert (v - v_other_time).abs().max() > 1e-3 and (v - v_zero).abs().max() > 1e-3


def test_the_default_graph_compiles_at_lerobots_sizes():
    """lerobot/pi05 at LeRobot's default sizes (PaliGemma 3B + the 300M expert with adaRMS), on meta:
    pi0's 3,238,048,528 less the state projection (33,792) and half of the time MLP's input (1,048,576),
    plus a Linear(1024, 3072) instead of a weight of 1024 in each of the expert's 37 norms (116,467,712)."""
    from graphvla.spec.loader import load_spec

    with parameters_on_meta():
        cg = compile_graph(load_spec("lerobot/pi05"), device="cpu")
    bb, head = cg.model["backbone"], cg.model["head"]
    assert len(bb.layers) == len(head.layers) == 18 and len(bb.vision.layers) == 27
    assert bb.vision.num_patches == 256 and head.norm.dense.weight.shape == (3072, 1024)
    assert bb.embed_tokens.weight.shape == (257152, 2048) and not hasattr(head, "state_proj")
    assert sum(p.numel() for p in cg.model.parameters()) == 3_353_433_872
    assert [type(s).__name__ for s in cg.preprocess.steps] == ["Normalize", "StatePrompt", "PaliGemmaTokens"]


def test_the_prompt_step_writes_lerobots_prompts():
    """glue.state_text with pi0.5's options writes, from the normalized state, the prompts LeRobot's
    Pi05PrepareStateTokenizerProcessorStep wrote (recorded in the fixture): padding to max_state_dim,
    a value below -1 as bin -1, one above 1 as 255, the task cleaned."""
    from graphvla.processors.normalize import shift_scale_of
    from graphvla.processors.text import state_prompts

    info = json.loads((IMPORT_04 / "case.json").read_text())
    data = load_file(str(IMPORT_04 / "case.safetensors"))
    norm = load_file(str(next(IMPORT_04.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))))
    shift, scale = shift_scale_of({"q01": norm["observation.state.q01"].tolist(),
                                   "q99": norm["observation.state.q99"].tolist()}, "q01_q99")
    params = {"bins": 256, "low": -1.0, "high": 1.0, "template": "Task: {text}, State: {state};\nAction: ",
              "pad_to": 6, "binning": "digitize", "clean_text": True}
    for i in range(2):
        state = ((data[f"state{i}"].double() - torch.tensor(shift)) / torch.tensor(scale)).float()[None]
        assert state_prompts(params, [info["tasks"][i]], state) == [info["prompts"][i]]
    assert "State: -1 " in info["prompts"][0] and " 255 " in info["prompts"][0]


@pytest.fixture(scope="module")
def imported_run(saved_policy, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "pi05"
    result = import_cli(saved_policy, run)
    assert result.exit_code == 0, result.output
    assert "LeRobot pi05" in result.output and "observation.language.tokens" in result.output
    return run


def observation(data, i: int) -> dict:
    return {**{c: data[f"image{i}_{k}"].numpy() for k, c in enumerate(CAMS)},
            "observation.state": data[f"state{i}"].numpy(),
            "observation.language.tokens": data[f"tokens{i}"][0].numpy(),
            "observation.language.attention_mask": data[f"tokens_mask{i}"][0].numpy()}


def serve_chunks(run: Path, observations: list, keys: set) -> list:
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.runners.serve import ServerThread
    from graphvla.runners.serve.section import serve_options, serve_section

    out = []
    options = serve_options(serve_section(str(run)), "127.0.0.1", 0, None, 1, None, None)
    with ServerThread(load_policy(run), options) as srv:
        for obs in observations:
            with PolicyClient("127.0.0.1", srv.port) as client:
                assert client.metadata["seed"] == 0 and client.metadata["execute_steps"] == 5  # n_action_steps
                assert keys <= set(client.metadata["observation_keys"]), client.metadata["observation_keys"]
                out.append(client.infer(obs)["actions"])
    return out


def test_an_imported_lerobot_04_pi05_serves_its_predict_action_chunk(imported_run):
    """LeRobot 0.4.1's save imported through the command line and served, the client sending LeRobot's
    keys (cameras and the tokens its preprocessor made, the state inside them) on a fresh connection
    whose session seeded 0 draws LeRobot's noise: preprocessor -> predict_action_chunk -> postprocessor."""
    run = imported_run
    info = json.loads((run / "imported.json").read_text())
    assert info["format"] == "0.4" and info["normalization"] == {"actions": "q01_q99"}
    data = load_file(str(IMPORT_04 / "case.safetensors"))
    obs = [{k: v for k, v in observation(data, i).items() if k != "observation.state"} for i in range(2)]
    out = serve_chunks(run, obs, {*CAMS, "observation.language.tokens", "observation.language.attention_mask"})
    diffs = [abs(out[i] - data[f"chunk{i}"][0].numpy()).max() for i in range(2)]
    print(f"served imported pi0.5 (tokens) vs LeRobot 0.4.1 predict_action_chunk: max |diff| {max(diffs):.2e}")
    assert max(diffs) <= SERVE_TOL
    assert abs(out[0] - out[1]).max() > 1e-3


@pytest.fixture(scope="module")
def text_run(saved_policy, tmp_path_factory) -> Path:
    """The save with its tokenizer step's tokenizer_name pointing at the stand-in tokenizer LeRobot's step
    ran with, imported: the run writes the prompt (state included) and tokenizes it itself."""
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


def test_an_import_whose_tokenizer_is_on_disk_writes_the_prompt_itself(text_run):
    """From LeRobot's `task` and raw `observation.state` the run's pipeline (normalize by q01/q99, the
    state in 256 bins into the prompt, tokenized without a newline) makes exactly the tokens LeRobot's
    preprocessor made, and the served chunks are LeRobot's."""
    from graphvla.policy.loading import load_policy

    run = text_run
    data = load_file(str(IMPORT_04 / "case.safetensors"))
    tasks = json.loads((IMPORT_04 / "case.json").read_text())["tasks"]
    info = json.loads((run / "imported.json").read_text())
    assert info["normalization"] == {"state": "q01_q99", "actions": "q01_q99"}
    policy = load_policy(run)
    made = policy.preprocess({"instruction": tasks, "state": torch.stack([data["state0"], data["state1"]])})
    for i in range(2):
        assert torch.equal(made["backbone.tokens"][i], data[f"tokens{i}"][0])
        assert torch.equal(made["backbone.tokens_mask"][i], data[f"tokens_mask{i}"][0])
    assert list(run.rglob("tokenizer.json")), "the run does not carry the tokenizer"
    obs = [{**{k: v for k, v in observation(data, i).items() if not k.startswith("observation.language")},
            "task": tasks[i]} for i in range(2)]
    out = serve_chunks(run, obs, {*CAMS, "observation.state", "task"})
    diffs = [abs(out[i] - data[f"chunk{i}"][0].numpy()).max() for i in range(2)]
    print(f"served imported pi0.5 (task + state) vs LeRobot 0.4.1: max |diff| {max(diffs):.2e}")
    assert max(diffs) <= SERVE_TOL


def test_pi05_saves_the_graph_cannot_take_are_refused_by_name(saved_policy, tmp_path):
    def attempt(edit, match, files=None):
        refused(saved_policy, tmp_path, edit, match, files)

    attempt(lambda c: c.update(image_resolution=[16, 24]), "image_resolution [16, 24]")
    attempt(lambda c: c.update(max_action_dim=2), "max_action_dim 2")
    attempt(lambda c: c["normalization_mapping"].update(VISUAL="MEAN_STD"), "normalization_mapping.VISUAL")
    attempt(lambda c: c["input_features"].pop("observation.state"), "pi0.5 needs observation.state")

    def state_proj(src):  # pi0's state projection in a pi05 save
        from safetensors.torch import save_file

        t = load_file(str(src / "model.safetensors"))
        t["model.state_proj.weight"] = torch.zeros(16, 6)
        save_file(t, str(src / "model.safetensors"))
    attempt(lambda c: None, "model.state_proj.weight", state_proj)

    def relative_actions(src):
        pre = json.loads((src / "policy_preprocessor.json").read_text())
        pre["steps"].insert(4, {"registry_name": "relative_actions_processor", "config": {"enabled": True}})
        (src / "policy_preprocessor.json").write_text(json.dumps(pre))
    attempt(lambda c: None, "relative_actions_processor is enabled", relative_actions)

    def pi0_newline(src):  # a pi0 pipeline step in a pi05 save
        pre = json.loads((src / "policy_preprocessor.json").read_text())
        pre["steps"].insert(3, {"registry_name": "pi0_new_line_processor", "config": {}})
        (src / "policy_preprocessor.json").write_text(json.dumps(pre))
    attempt(lambda c: None, "pi0_new_line_processor", pi0_newline)


def test_pi0_style_time_mlp_names_import_to_the_same_weights(saved_policy, imported_run, tmp_path):
    """Weights with pi0's action_time_mlp_* names and no `model.` prefix (LeRobot's loader remaps both)
    import to the same run tensors."""
    renamed_weights_import_the_same(saved_policy, imported_run, tmp_path,
                                    lambda k: k[len("model."):].replace("time_mlp_", "action_time_mlp_"),
                                    "action_time_mlp_in.")


def test_empty_cameras_are_left_out_and_change_nothing(saved_policy, tmp_path):
    """A save with LeRobot's empty_cameras (observation.images.empty_camera_0 in its config, which LeRobot
    fills with -1 and masks out) imports without it and serves, from the real cameras, the chunk
    LeRobot's predict_action_chunk gave with the empty camera."""
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
    obs = {k: v for k, v in observation(data, 0).items() if k != "observation.state"}
    out = serve_chunks(run, [obs], set(CAMS))
    assert abs(out[0] - data["chunk0_empty_camera"][0].numpy()).max() <= SERVE_TOL
    assert abs(out[0] - data["chunk0"][0].numpy()).max() <= SERVE_TOL  # the empty camera changed nothing


@pytest.mark.slow
def test_an_export_of_the_imported_pi05_gives_lerobots_actions(imported_run, text_run, tmp_path):
    """graphvla export of the imported run that takes LeRobot's tokens (noise an input, normalization
    folded in) with a session seeded 0 gives LeRobot's chunks; the run that writes its prompt is refused
    by name (glue.state_text makes strings inside the graph, which torch.export cannot carry)."""
    import numpy as np

    from graphvla.policy.session import Session
    from graphvla.runners.export import ExportError, export_policy
    from graphvla.runners.exported import load_exported

    data = load_file(str(IMPORT_04 / "case.safetensors"))
    exported = load_exported(export_policy(imported_run, tmp_path / "export"))
    noise = next(d for d in exported.manifest["inputs"] if d["name"] == "noise")
    assert noise["shape"] == ["batch", 5, 6] and noise["num_steps"] == 10
    for i in range(2):
        o = observation(data, i)
        ports = {"images": np.stack([o[c] for c in CAMS]), "tokens": o["observation.language.tokens"],
                 "tokens_mask": o["observation.language.attention_mask"]}
        actions = exported.infer(ports, session=Session(0))["actions"]
        assert abs(actions - data[f"chunk{i}"][0].numpy()).max() <= SERVE_TOL
    with pytest.raises(ExportError, match="glue.state_text"):
        export_policy(text_run, tmp_path / "export_text")
    assert not (tmp_path / "export_text").exists()
