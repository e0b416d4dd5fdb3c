"""backbone.smolvla_vlm + head.smolvla_expert are LeRobot's SmolVLA: with the weights of a policy
LeRobot 0.4.1's own code built and saved (tests/fixtures/lerobot/smolvla, written by
scripts/parity/lerobot_smolvla.py: a tiny SmolVLM config, two cameras, fp32 on the CPU), a graph of
the two blocks gives LeRobot's prefix embeddings, its training loss (with the noise and the Beta time
LeRobot used, passed as inputs) and its predict_action_chunk (10 Euler steps from the noise given)
within 1e-5. graphs/lerobot/smolvla.yaml compiles on meta at LeRobot's default SmolVLAConfig on
SmolVLM2-500M-Video-Instruct's config. No LeRobot code is imported: only its numbers."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from graphvla.compiler.compile import compile_graph
from lerobot_import import import_cli, refused

# GRAPHVLA_LEROBOT_SMOLVLA_FIXTURE=DIR: the same tests on another LeRobot release's fixture (scripts/parity/
# lerobot_smolvla.py --out DIR in that release's venv; docs/lerobot.md, "Which LeRobot versions")
FIXTURE = Path(os.environ.get("GRAPHVLA_LEROBOT_SMOLVLA_FIXTURE") or Path(__file__).resolve().parent / "fixtures" / "lerobot" / "smolvla")
GRAPH = Path(__file__).resolve().parents[1] / "graphvla" / "graphs" / "lerobot" / "smolvla.yaml"
TOL = 1e-5


@pytest.fixture(scope="module")
def case():
    return json.loads((FIXTURE / "case.json").read_text()), load_file(str(FIXTURE / "case.safetensors"))


def tiny_spec(weights=str(FIXTURE), **head) -> dict:
    """The fixture's config as a graph: the two blocks read LeRobot's saved model.safetensors."""
    meta = json.loads((FIXTURE / "case.json").read_text())
    tiny, lang = meta["tiny"], meta["tiny"]["tokenizer_max_length"]
    vlm_config = json.loads((FIXTURE / "vlm_config.json").read_text())
    return {
        "graphvla": 1, "name": "smolvla-tiny",
        "inputs": {
            "images": {"kind": "image", "views": len(meta["cameras"]), "size": meta["image"][1:]},
            "tokens": {"kind": "tokens", "shape": [lang]},
            "tokens_mask": {"kind": "mask", "shape": [lang]},
            "state": {"kind": "state", "dim": meta["state_dim"]},
            "actions": {"kind": "action", "dim": meta["action_dim"], "horizon": meta["chunk_size"], "train_only": True},
            "flow_noise": {"kind": "action", "dim": tiny["max_action_dim"], "horizon": meta["chunk_size"],
                      "train_only": True, "optional": True},
            "flow_time": {"kind": "state", "dim": 1, "train_only": True, "optional": True},
        },
        "blocks": {
            "backbone": {"type": "backbone.smolvla_vlm",
                    "in": {"images": "inputs.images", "tokens": "inputs.tokens", "tokens_mask": "inputs.tokens_mask",
                           "state": "inputs.state"},
                    "with": {"config": vlm_config, "num_vlm_layers": tiny["num_vlm_layers"],
                             "image_size": tiny["resize_imgs_with_padding"][0], "max_state_dim": tiny["max_state_dim"],
                             "patch_positions": "shifted", "weights": weights}},  # transformers 4.57.1's
            "head": {"type": "head.smolvla_expert",
                     "in": {"keys": "backbone.keys", "values": "backbone.values", "mask": "backbone.mask", "target": "inputs.actions",
                            "noise": "inputs.flow_noise", "time": "inputs.flow_time"},
                     "with": {"width": 48, "heads": 4, "head_dim": 16, "max_action_dim": tiny["max_action_dim"],
                              "num_steps": tiny["num_steps"], "self_attn_every": tiny["self_attn_every_n_layers"],
                              "weights": weights, **head}},
        },
        "losses": {"action": {"from": "head.loss", "weight": 1.0}},
        "outputs": {"actions": "head.actions"},
    }


@pytest.fixture(scope="module")
def graph():
    cg = compile_graph(tiny_spec(), device="cpu")
    cg.model.eval()
    return cg


def images_of(meta, data):
    return torch.stack([data[f"image.{cam}"] for cam in meta["cameras"]], dim=1)  # [B, V, 3, H, W]


def observation(meta, data):
    return {"images": images_of(meta, data), "tokens": data["tokens"], "tokens_mask": data["tokens_mask"],
            "state": data["state"]}


def train_batch(meta, data):
    return {**observation(meta, data), "actions": data["action"], "flow_noise": data["noise"], "flow_time": data["time"][:, None]}


def test_the_fixture_is_lerobot_041_smolvla(case):
    meta, data = case
    assert meta["policy"] == "smolvla" and meta["lerobot"] == "0.4.1"
    cfg = json.loads((FIXTURE / "config.json").read_text())
    assert cfg["type"] == "smolvla" and cfg["attention_mode"] == "cross_attn" and cfg["num_expert_layers"] == -1
    assert data["predict_action_chunk"].shape == (meta["batch"], meta["chunk_size"], meta["action_dim"])
    assert not bool(data["tokens_mask"].all()), "the case right-pads a prompt"
    assert sum(f.stat().st_size for f in FIXTURE.iterdir()) < 3 * 2 ** 20


def test_every_saved_tensor_is_read_or_known_unused(graph):
    """The blocks take every tensor of LeRobot's save but the VLM's LM head and final text norm,
    which SmolVLA's actions never reach."""
    saved = set(load_file(str(FIXTURE / "model.safetensors")))
    unused = {k for k in saved if k.startswith(("model.vlm_with_expert.vlm.lm_head.",
                                                 "model.vlm_with_expert.vlm.model.text_model.norm."))}
    assert unused and len(saved) - len(unused) == len(graph.model.state_dict())


def test_prefix_matches_lerobots_embed_prefix(graph, case):
    meta, data = case
    vlm = graph.model["backbone"]
    with torch.no_grad():
        emb, mask, _ = vlm.prefix(images_of(meta, data), data["tokens"], data["tokens_mask"], data["state"])
    scale = data["prefix_embs"].abs().max().item()  # image tokens are scaled by sqrt(width): values up to ~30
    assert (emb - data["prefix_embs"]).abs().max().item() <= TOL * max(1.0, scale)
    assert torch.equal(mask, data["prefix_pad_masks"])


def test_training_loss_matches_lerobot(graph, case):
    meta, data = case
    with torch.no_grad():
        loss = graph.train["action"](**graph.feed(train_batch(meta, data), "action"))["loss"]
    diff = abs(loss.item() - data["loss"].item())
    print(f"loss {loss.item():.7f} vs LeRobot {data['loss'].item():.7f}: |diff| {diff:.1e}")
    assert diff <= TOL
    with torch.no_grad():  # the per-element losses too
        out = graph.model["backbone"](**graph.feed(observation(meta, data)))
        head = graph.model["head"]
        actions = torch.nn.functional.pad(data["action"], (0, head.params["max_action_dim"] - meta["action_dim"]))
        t = data["time"][:, None, None]
        x_t = t * data["noise"] + (1 - t) * actions
        v = head.velocity(out["keys"], out["values"], out["mask"], x_t, data["time"])
    assert ((v - (data["noise"] - actions)) ** 2 - data["losses"]).abs().max().item() <= TOL


def test_predicted_chunk_matches_lerobot(graph, case):
    meta, data = case
    with torch.no_grad():
        actions = graph.infer(**graph.feed(observation(meta, data)), noise=data["infer_noise"])["actions"]
    diff = (actions - data["predict_action_chunk"]).abs().max().item()
    print(f"predict_action_chunk max |diff| {diff:.2e}")
    assert diff <= TOL


def test_a_changed_noise_time_or_weight_breaks_parity(graph, case):
    """The comparisons can fail: other noise, another time, one weight each move the numbers."""
    meta, data = case
    with torch.no_grad():
        b = train_batch(meta, data)
        b["flow_time"] = b["flow_time"] * 0.5
        assert abs(graph.train["action"](**graph.feed(b, "action"))["loss"].item() - data["loss"].item()) > 100 * TOL
        fed = graph.feed(observation(meta, data))
        other = graph.infer(**fed, noise=data["infer_noise"] + 0.5)["actions"]
        assert (other - data["predict_action_chunk"]).abs().max().item() > 100 * TOL
        layer = graph.model["head"].layers[1].self_attn.k_proj  # a cross-attention layer's key projection
        saved = layer.weight.clone()
        try:
            layer.weight.add_(0.05)
            moved = graph.infer(**fed, noise=data["infer_noise"])["actions"]
        finally:
            layer.weight.copy_(saved)
    assert (moved - data["predict_action_chunk"]).abs().max().item() > 100 * TOL


def test_noise_of_the_wrong_shape_is_refused_by_name(graph, case):
    meta, data = case
    with pytest.raises(Exception, match="noise"):
        with torch.no_grad():
            graph.infer(**graph.feed(observation(meta, data)), noise=data["infer_noise"][..., :3])


def test_bad_weights_and_layer_counts_are_refused_by_name(tmp_path):
    with pytest.raises(Exception, match="weights") as e:
        compile_graph(tiny_spec(weights=str(tmp_path)), device="cpu")
    assert str(tmp_path) in str(e.value)
    with pytest.raises(Exception, match="layers"):
        compile_graph(tiny_spec(layers=3), device="cpu")  # 4 VLM layers are not a multiple of 3


def test_the_packaged_graph_is_lerobots_default_smolvla_on_meta():
    """lerobot/smolvla at LeRobot's default SmolVLAConfig on SmolVLM2-500M-Video-Instruct: 16 of its
    32 text layers kept, an expert of width 720 (0.75 x 960) with one layer per kept VLM layer,
    chunks of 50, 32-d padded state and actions, 512 x 512 images (64 tokens each)."""
    cg = compile_graph(GRAPH)
    vlm, head = cg.model["backbone"], cg.model["head"]
    assert len(vlm.layers) == 16 and vlm.width == 960 and (vlm.heads, vlm.kv_heads, vlm.head_dim) == (15, 5, 64)
    assert len(head.layers) == 16 and head.params["width"] == 720 and head.cross == [j % 2 == 1 for j in range(16)]
    assert head.layers[0].mlp.gate_proj.weight.shape == (2048, 720)
    assert head.layers[1].self_attn.k_proj.weight.shape == (320, 320)
    assert vlm.image_tokens() == 64
    assert cg.shapes[("head", "actions")][1:] == (50, 6)
    vision = sum(p.numel() for p in vlm.vision_model.parameters()) + sum(p.numel() for p in vlm.connector.parameters())
    text = sum(p.numel() for n, p in vlm.named_parameters() if n.startswith(("layers.", "embed_tokens.")))
    expert = sum(p.numel() for p in head.parameters())
    print(f"vision+connector {vision:,}, text {text:,}, expert {expert:,}")
    assert text == 49280 * 960 + 16 * (2 * 960 * 960 + 2 * 960 * 320 + 3 * 960 * 2560 + 2 * 960)


# the import: LeRobot 0.4.1's save (config, weights, processor files) --------------------------------
SERVE_TOL = 1e-4
CAMS = ("observation.images.top", "observation.images.wrist")


@pytest.fixture(scope="module")
def saved_policy(tmp_path_factory) -> Path:
    """LeRobot's save_pretrained folder beside the VLM folder it names (vlm_model_name and the tokenizer
    step's tokenizer_name pointed at it: LeRobot wrote a temporary folder's path there)."""
    root = tmp_path_factory.mktemp("lerobot")
    vlm = root / "SmolVLM-tiny"
    shutil.copytree(FIXTURE / "tokenizer", vlm)
    shutil.copy(FIXTURE / "vlm_config.json", vlm / "config.json")
    folder = root / "smolvla_tiny"
    shutil.copytree(FIXTURE / "processors", folder)
    shutil.copy(FIXTURE / "model.safetensors", folder / "model.safetensors")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    cfg["vlm_model_name"] = str(vlm)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    pre = json.loads((folder / "policy_preprocessor.json").read_text())
    for step in pre["steps"]:
        if step["registry_name"] == "tokenizer_processor":
            step["config"]["tokenizer_name"] = str(vlm)
    (folder / "policy_preprocessor.json").write_text(json.dumps(pre, indent=1))
    return folder


@pytest.fixture(scope="module")
def imported_run(saved_policy, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "smolvla"
    result = import_cli(saved_policy, run)
    assert result.exit_code == 0, result.output
    return run


def client_observation(meta, data, i: int) -> dict:
    """Observation i as a LeRobot client sends it: raw cameras, state and the task string."""
    return {**{c: data[f"import.image.{c}"][i].numpy() for c in CAMS},
            "observation.state": data["import.state"][i].numpy(), "task": meta["import_tasks"][i]}


def test_an_imported_lerobot_04_smolvla_serves_its_predict_action_chunk(imported_run, case):
    """Imported through the command line and served: each observation (LeRobot's keys, the task as a
    string) on a fresh connection, whose session seeded 0 draws the noise LeRobot was given; the result
    is LeRobot's preprocessor (newline, tokenizer, normalizer) -> predict_action_chunk -> postprocessor."""
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.runners.serve import ServerThread
    from graphvla.runners.serve.section import serve_options, serve_section

    meta, data = case
    info = json.loads((imported_run / "imported.json").read_text())
    assert info["format"] == "0.4" and info["normalization"] == {"state": "mean_std", "actions": "mean_std"}
    saved = load_file(str(FIXTURE / "model.safetensors"))
    assert info["tensors"] == len(saved) - 2  # all but the VLM's lm_head and final norm
    out = []
    options = serve_options(serve_section(str(imported_run)), "127.0.0.1", 0, None, 1, None, None)
    policy = load_policy(imported_run)
    with ServerThread(policy, options) as srv:
        for i in range(meta["batch"]):
            with PolicyClient("127.0.0.1", srv.port) as client:
                assert client.metadata["execute_steps"] == meta["chunk_size"]
                assert {*CAMS, "observation.state", "task"} <= set(client.metadata["observation_keys"])
                out.append(client.infer(client_observation(meta, data, i))["actions"])
    diffs = [abs(out[i] - data["import.predict_action_chunk"][i].numpy()).max() for i in range(meta["batch"])]
    print(f"served imported SmolVLA vs LeRobot 0.4.1 predict_action_chunk: max |diff| {max(diffs):.2e}")
    assert max(diffs) <= SERVE_TOL
    # the run's tokenizer step gives LeRobot's tokens (one longer prompt truncated, one padded)
    step, = [s for s in policy.preprocess if getattr(s, "kind", "") == "smolvla_tokens"]  # loaded from the run
    made = step({"text": list(meta["import_tasks"])})
    assert torch.equal(made["backbone.tokens"], data["import.tokens"])
    assert torch.equal(made["backbone.tokens_mask"], data["import.tokens_mask"])
    assert not bool(data["import.tokens_mask"].all()) and len(meta["import_tasks"][1]) > 6  # padded, truncated


def served_chunks(run: Path, meta, data) -> list:
    """The served actions of each import observation, each on a fresh connection (session seed 0)."""
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.runners.serve import ServerThread
    from graphvla.runners.serve.section import serve_options, serve_section

    options = serve_options(serve_section(str(run)), "127.0.0.1", 0, None, 1, None, None)
    with ServerThread(load_policy(run), options) as srv:
        out = []
        for i in range(meta["batch"]):
            with PolicyClient("127.0.0.1", srv.port) as client:
                out.append(client.infer(client_observation(meta, data, i))["actions"])
    return out


def test_a_lerobot_051_save_imports_with_index_patch_positions(saved_policy, imported_run, case, tmp_path):
    """LeRobot 0.5.1 and 0.6.1 save this policy with the same files (the config gaining fields), but run
    transformers 5, whose SigLIP patch positions are `index`: imported with --patch-positions index it
    serves 0.5.1's preprocessor -> predict_action_chunk -> postprocessor (import_051/, measured 2.1e-5: 0.5's
    Euler time steps, docs/lerobot.md); the default import (shifted, LeRobot 0.4.x's) is far off."""
    meta, data = case
    made = json.loads((FIXTURE / "import_051" / "case.json").read_text())
    assert made["lerobot"] == "0.5.1" and all(made["same_files_as_the_fixture"].values())
    expected = load_file(str(FIXTURE / "import_051" / "case.safetensors"))["import.predict_action_chunk"]
    src = tmp_path / "smolvla_051"
    shutil.copytree(saved_policy, src)
    cfg = json.loads((src / "config.json").read_text())
    # 0.6.1's fields (0.5.1's but pretrained_revision); 0.6.1's chunks are 0.5.1's bit for bit (import_051/case.json)
    cfg.update(use_peft=False, rtc_config=None, compile_model=False, compile_mode="max-autotune", pretrained_revision=None)
    (src / "config.json").write_text(json.dumps(cfg))
    result = import_cli(src, tmp_path / "run", "--patch-positions", "index")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "imported.json").read_text())["patch_positions"] == "index"
    diff = max(abs(a - expected[i].numpy()).max() for i, a in enumerate(served_chunks(tmp_path / "run", meta, data)))
    print(f"served SmolVLA imported with index patch positions vs LeRobot 0.5.1: max |diff| {diff:.2e}")
    assert diff <= SERVE_TOL
    default = max(abs(a - expected[i].numpy()).max() for i, a in enumerate(served_chunks(imported_run, meta, data)))
    assert default > 0.05  # shifted positions: LeRobot 0.4.x's transformers, not 0.5.1's
    result = import_cli(src, tmp_path / "bad", "--patch-positions", "middle")
    assert result.exit_code != 0 and "middle" in result.output and not (tmp_path / "bad").exists()


def test_smolvla_saves_the_graph_cannot_take_are_refused_by_name(saved_policy, tmp_path):
    def attempt(edit, match, files=None):
        refused(saved_policy, tmp_path, edit, match, files)

    attempt(lambda c: c.update(add_image_special_tokens=True), "add_image_special_tokens")
    attempt(lambda c: c.update(empty_cameras=1), "empty_cameras")
    attempt(lambda c: c.update(resize_imgs_with_padding=[32, 48]), "resize_imgs_with_padding")
    attempt(lambda c: c.update(vlm_model_name=str(tmp_path / "nowhere")), "vlm_model_name")

    def padded_to_max(src):
        pre = json.loads((src / "policy_preprocessor.json").read_text())
        for step in pre["steps"]:
            if step["registry_name"] == "tokenizer_processor":
                step["config"]["padding"] = "max_length"
        (src / "policy_preprocessor.json").write_text(json.dumps(pre))

    attempt(lambda c: None, "tokenizer_processor", padded_to_max)


def test_real_time_chunking_guidance_pulls_toward_the_previous_chunk(graph, case):
    """head.smolvla_expert's rtc: all-zero weights give the plain chunk exactly; weights on the first
    steps pull those steps toward the target (the previous chunk's remaining actions)."""
    from graphvla.blocks.heads.flow_matching import Inpainting

    meta, data = case
    head = graph.model["head"]
    with torch.no_grad():
        out = graph.model["backbone"](**graph.feed(observation(meta, data)))
        args = (out["keys"], out["values"], out["mask"])
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


def test_the_imported_run_serves_sessions_and_real_time_chunking(imported_run, case):
    """Sessions replay (the same seed, the same chunk) and a real-time chunking request (guidance) with
    a delay pulls the committed steps toward the previous chunk's remaining actions."""
    from graphvla.policy.loading import load_policy
    from graphvla.protocol import RTC_DELAY_KEY, RTC_KEY, RTC_REMAINING_KEY

    meta, data = case
    policy = load_policy(imported_run)
    obs = {"images": torch.stack([data[f"import.image.{c}"][0] for c in CAMS]).numpy(),
           "state": data["import.state"][0].numpy(), "text": meta["import_tasks"][0]}  # the graph's ports
    s1, s2 = policy.new_session(3), policy.new_session(3)
    first = policy.infer(dict(obs), s1)["actions"]
    assert abs(first - policy.infer(dict(obs), s2)["actions"]).max() == 0.0
    s3, s4 = policy.new_session(5), policy.new_session(5)
    plain = policy.infer(dict(obs), s3)["actions"]
    remaining = plain + 0.5
    out = policy.infer({**obs, RTC_KEY: {RTC_DELAY_KEY: 2, RTC_REMAINING_KEY: remaining.tolist()}}, s4)
    assert out["rtc"]["method"] == "guidance" and out["rtc"]["applied"]
    guided = out["actions"]
    assert abs(guided[:2] - remaining[:2]).mean() < 0.5 * abs(plain[:2] - remaining[:2]).mean()


@pytest.mark.slow
def test_an_export_of_the_imported_smolvla_gives_lerobots_actions(imported_run, case, tmp_path):
    """graphvla export of the imported run (the tokenizer step in front, tokens of any length, noise an
    input, normalization folded in) with a session seeded 0 gives LeRobot's chunks (about 2 minutes on
    2 busy cores)."""
    from graphvla.policy.session import Session
    from graphvla.runners.export import export_policy
    from graphvla.runners.exported import load_exported

    meta, data = case
    exported = load_exported(export_policy(imported_run, tmp_path / "export"))
    noise = next(d for d in exported.manifest["inputs"] if d["name"] == "noise")
    assert noise["shape"] == ["batch", meta["chunk_size"], meta["tiny"]["max_action_dim"]]
    for i in range(meta["batch"]):
        ports = {"images": torch.stack([data[f"import.image.{c}"][i] for c in CAMS]).numpy(),
                 "state": data["import.state"][i].numpy(), "text": meta["import_tasks"][i]}
        actions = exported.infer(ports, session=Session(0))["actions"]
        assert abs(actions - data["import.predict_action_chunk"][i].numpy()).max() <= SERVE_TOL


def test_graphvla_eval_runs_an_imported_smolvla(saved_policy, tmp_path):
    """`graphvla eval` (GraphVLA's Meta-World suite, one short episode) on an imported SmolVLA at
    Meta-World's sizes: the fixture's weights (state and actions within its max dims of 6, any camera
    size: SmolVLA resizes) with one 64 x 64 camera and 4-d state and actions, saved in LeRobot 0.3's
    format (statistics as buffers in model.safetensors); the instruction is the task's."""
    from click.testing import CliRunner
    from safetensors.torch import save_file

    from conftest import require_metaworld
    from graphvla.cli import main

    require_metaworld()
    cfg = json.loads((saved_policy / "config.json").read_text())
    cfg["input_features"] = {"observation.images.top": {"type": "VISUAL", "shape": [3, 64, 64]},
                             "observation.state": {"type": "STATE", "shape": [4]}}
    cfg["output_features"]["action"]["shape"] = [4]
    tensors = load_file(str(saved_policy / "model.safetensors"))
    tensors["normalize_inputs.buffer_observation_state.mean"] = torch.zeros(4)
    tensors["normalize_inputs.buffer_observation_state.std"] = torch.ones(4)
    for module in ("normalize_targets", "unnormalize_outputs"):
        tensors[f"{module}.buffer_action.mean"] = torch.zeros(4)
        tensors[f"{module}.buffer_action.std"] = torch.full((4,), 0.5)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(src / "model.safetensors"))
    result = import_cli(src, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "imported.json").read_text())["format"] == "0.3"
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "run"), "--suite", "metaworld", "--tasks", "reach-v3",
                                       "--episodes", "1", "--max-steps", "8", "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    episode = json.loads((tmp_path / "eval" / "results.json").read_text())["episodes"]["reach-v3"][0]
    assert episode["steps"] == 8 and episode["queries"] == 2  # chunks of 5 executed 5 at a time (n_action_steps)


def test_a_training_step_reaches_the_expert_and_state_projection_only(case):
    """SmolVLA's defaults (train_expert_only, freeze_vision_encoder): the loss's gradient reaches every
    expert parameter and state_proj; the VLM's layers, embeddings, vision tower and connector do not
    train. With train_vlm the text layers train too."""
    meta, data = case
    cg = compile_graph(tiny_spec(), device="cpu")
    cg.model.train()
    loss = cg.train["action"](**cg.feed(train_batch(meta, data), "action"))["loss"]
    loss.backward()
    grads = {n: p.grad for n, p in cg.model.named_parameters()}
    trainable = {n for n, p in cg.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in grads if n.startswith(("head.", "backbone.state_proj."))}
    assert all(grads[n] is not None and grads[n].abs().sum() > 0 for n in trainable)
    spec = tiny_spec()
    spec["blocks"]["backbone"]["with"]["train_vlm"] = True
    cg = compile_graph(spec, device="cpu")
    trainable = {n for n, p in cg.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.layers.") for n in trainable)
    assert not any(n.startswith("backbone.vision_model.") for n in trainable)


def test_an_imported_lerobot_03_smolvla_serves_its_predict_action_chunk(saved_policy, tmp_path):
    """LeRobot 0.3.2's save of the same weights (normalization buffers inside model.safetensors, no
    processor files; its policy tokenizes the task itself, without truncation): imported and served,
    each observation on a fresh connection (session seeded 0: the noise LeRobot was given) gives
    LeRobot 0.3.2's predict_action_chunk, and the run's step gives its tokens (13 of them: longer than
    tokenizer_max_length 6, as 0.3.2 leaves them)."""
    from safetensors.torch import save_file

    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.runners.serve import ServerThread
    from graphvla.runners.serve.section import serve_options, serve_section

    case03 = FIXTURE / "import_03"
    meta = json.loads((case03 / "case.json").read_text())
    data = load_file(str(case03 / "case.safetensors"))
    assert meta["lerobot"] == "0.3.2"
    src = tmp_path / "src"
    src.mkdir()
    cfg = json.loads((case03 / "config.json").read_text())
    cfg["vlm_model_name"] = json.loads((saved_policy / "config.json").read_text())["vlm_model_name"]
    (src / "config.json").write_text(json.dumps(cfg))
    tensors = {**load_file(str(FIXTURE / "model.safetensors")), **load_file(str(case03 / "buffers.safetensors"))}
    assert sorted(tensors) == meta["saved_keys"]  # LeRobot 0.3.2's model.safetensors, key for key
    save_file(tensors, str(src / "model.safetensors"))
    run = tmp_path / "run"
    result = import_cli(src, run)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "imported.json").read_text())["format"] == "0.3"
    policy = load_policy(run)
    step, = [s for s in policy.preprocess if getattr(s, "kind", "") == "smolvla_tokens"]
    made = step({"text": list(meta["tasks"])})
    assert made["backbone.tokens"].shape[1] == 13 and torch.equal(made["backbone.tokens"], data["tokens"])
    assert torch.equal(made["backbone.tokens_mask"], data["tokens_mask"])
    out = []
    options = serve_options(serve_section(str(run)), "127.0.0.1", 0, None, 1, None, None)
    with ServerThread(policy, options) as srv:
        for i in range(2):
            with PolicyClient("127.0.0.1", srv.port) as client:
                obs = {**{c: data[f"image.{c}"][i].numpy() for c in CAMS},
                       "observation.state": data["state"][i].numpy(), "task": meta["tasks"][i]}
                out.append(client.infer(obs)["actions"])
    diffs = [abs(out[i] - data["predict_action_chunk"][i].numpy()).max() for i in range(2)]
    print(f"served imported SmolVLA vs LeRobot 0.3.2 predict_action_chunk: max |diff| {max(diffs):.2e}")
    assert max(diffs) <= SERVE_TOL


def test_the_language_wiring_is_checked_by_name():
    """text or tokens + tokens_mask, not both, not neither; text needs with.tokenizer (a folder that
    holds one)."""
    spec = tiny_spec()
    spec["inputs"]["text"] = {"kind": "text"}
    spec["blocks"]["backbone"]["in"]["text"] = "inputs.text"
    with pytest.raises(Exception, match="either text"):
        compile_graph(spec, device="cpu")
    del spec["blocks"]["backbone"]["in"]["tokens"], spec["blocks"]["backbone"]["in"]["tokens_mask"]
    with pytest.raises(Exception, match="tokenizer"):
        compile_graph(spec, device="cpu")
    spec["blocks"]["backbone"]["with"]["tokenizer"] = str(FIXTURE / "processors")  # no tokenizer there
    with pytest.raises(Exception, match="cannot load a tokenizer"):
        compile_graph(spec, device="cpu")
    spec["blocks"]["backbone"]["with"]["tokenizer"] = str(FIXTURE / "tokenizer")
    cg = compile_graph(spec, device="cpu")
    made = cg.feed({"images": torch.zeros(1, 2, 3, 24, 40), "state": torch.zeros(1, 4), "text": ["pick the cube"]})
    assert made["backbone_tokens"].tolist() == [[339, 265, 387, 205]]  # "pick the cube\n"


def test_graphvla_trains_a_smolvla_graph_on_instructions_and_serves_it(tmp_path, metaworld_data):
    """The tiny SmolVLA (the fixture's weights and tokenizer) trains with `graphvla train`'s trainer on a
    Meta-World recording whose frames' task is the instruction (tokenized by the backbone's step; noise
    and time drawn in forward), and the run loads and answers from an image, a state and a text."""
    import numpy as np
    import yaml

    from graphvla.policy.loading import load_policy
    from graphvla.runners.train import train
    from graphvla.runners.train.dataio import load_bundle
    from graphvla.spec.loader import load_spec

    spec = tiny_spec()
    spec["inputs"] = {"images": {"kind": "image", "views": 1, "size": [64, 64]}, "text": {"kind": "text"},
                      "state": {"kind": "state", "dim": 4},
                      "actions": {"kind": "action", "dim": 4, "horizon": 5, "train_only": True}}
    bb = spec["blocks"]["backbone"]
    bb["in"] = {"images": "inputs.images", "text": "inputs.text", "state": "inputs.state"}
    bb["with"]["tokenizer"] = str(FIXTURE / "tokenizer")
    spec["blocks"]["head"]["in"] = {"keys": "backbone.keys", "values": "backbone.values", "mask": "backbone.mask",
                                    "target": "inputs.actions"}
    spec["trainer"] = {"max_steps": 3, "batch_size": 4, "save_every": 3, "lr": 1.0e-4,
                       "normalization": {"state": "mean_std", "actions": "mean_std"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(f"datasets:\n  - path: {metaworld_data}\n    keys: {{images: [observation.images.corner], "
                         "state: observation.state, actions: action}\n")
    spec = load_spec(str(tmp_path / "spec.yaml"))
    result = train(spec, load_bundle(str(data_yaml), spec), tmp_path / "run", progress=False)
    assert result.step == 3 and all(np.isfinite(r["loss"]) for r in result.history)
    policy = load_policy(tmp_path / "run")
    out = policy.infer({"images": np.zeros((64, 64, 3), np.uint8), "state": np.zeros(4, np.float32),
                        "text": "reach the goal"})
    assert out["actions"].shape == (5, 4) and np.isfinite(out["actions"]).all()


def test_weights_of_a_compiled_policy_save_are_read(tmp_path, case):
    """with.weights of a save whose tensors are named model._orig_mod.* (a torch.compile'd policy, as
    LeRobot's loader renames them) gives the same model."""
    from safetensors.torch import save_file

    meta, data = case
    tensors = load_file(str(FIXTURE / "model.safetensors"))
    save_file({"model._orig_mod." + k[len("model."):]: v for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    cg = compile_graph(tiny_spec(weights=str(tmp_path / "model.safetensors")), device="cpu")
    with torch.no_grad():
        actions = cg.infer(**cg.feed(observation(meta, data)), noise=data["infer_noise"])["actions"]
    assert (actions - data["predict_action_chunk"]).abs().max().item() <= TOL
