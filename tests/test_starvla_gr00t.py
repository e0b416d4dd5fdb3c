"""graphs/starvla/qwen3vl-gr00t and qwen25vl-gr00t are starVLA's QwenGR00T: with the weights starVLA's
own code initialised (tests/fixtures/starvla/qwengr00t and qwengr00t_qwen25, written by
scripts/parity/starvla_gr00t.py from starVLA at commit 0ed0aad on a tiny Qwen3-VL / Qwen2.5-VL and a
tiny DiT, float32 on the CPU), the packaged graph, sized by the importer from the fixture's starVLA
config, gives starVLA's training loss (with the noise and times starVLA drew) and its predicted
actions (from the noise it drew) within 1e-5, without and with a state. No starVLA code is imported:
only its numbers. `graphvla import starvla` turns a QwenGR00T run folder (qwengr00t_ckpt) into a run
whose actions equal what starVLA serves for the same observation and seed within 1e-4."""
from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from graphvla.cli import main
from graphvla.compiler.compile import compile_graph
from graphvla.policy.loading import load_policy
from graphvla.policy.session import Session
from graphvla.runners.importers import starvla as importer
from graphvla.runners.importers.starvla import StarVLAImportError, graph_key, import_starvla

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from starvla_weights import load_state, state_metadata  # noqa: E402  (bench/: the fixtures' weights store)

warnings.filterwarnings("ignore")
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "starvla"
FIXTURE = FIXTURES / "qwengr00t"
FIXTURE_25 = FIXTURES / "qwengr00t_qwen25"
CKPT_FIXTURE = FIXTURES / "qwengr00t_ckpt"
GRAPHS = {"qwen3_vl": "starvla/qwen3vl-gr00t", "qwen2_5_vl": "starvla/qwen25vl-gr00t"}
TOL = 1e-5


def case(fixture, name="case"):
    meta = json.loads((fixture / "case.json").read_text())
    data = load_file(str(fixture / f"{name}.safetensors"))
    if name != "case":
        data.update({k: v for k, v in load_file(str(fixture / "case.safetensors")).items() if k in ("images", "actions")})
    return meta, data


def fixture_graph(fixture, cot_prompt=None):
    """The packaged graph for the fixture's VLM, sized from the fixture's starVLA config by the
    importer's own translation (with `cot_prompt` as datasets.vla_data.CoT_prompt), with starVLA's
    weights loaded through the importer's key mapping."""
    meta, _ = case(fixture)
    vlm_config = json.loads((fixture / "vlm" / "config.json").read_text())
    data = {"CoT_prompt": cot_prompt} if cot_prompt else {}
    cfg = {"framework": {"name": "QwenGR00T", "action_model": meta["action_model"]}, "datasets": {"vla_data": data}}
    framework = importer.FRAMEWORKS["QwenGR00T"]
    graph = importer.graph_of(framework, vlm_config, fixture / "vlm" / "config.json")
    assert graph == GRAPHS[vlm_config["model_type"]]
    spec = importer.build_spec(cfg, fixture / "case.json", framework, graph, fixture / "vlm", vlm_config,
                               meta["views"], meta["image_size"])
    cg = compile_graph(spec, device="cpu")
    state = load_state(fixture)
    mapped = {graph_key(k, "QwenGR00T"): v for k, v in state.items()}
    assert None not in mapped and len(mapped) == len(state)
    assert set(mapped) == set(cg.model.state_dict())  # every key accounted for, both ways
    cg.model.load_state_dict(mapped, strict=True)
    cg.model.eval()
    return cg


@pytest.fixture(scope="module", params=["qwen3vl", "qwen25vl"])
def parity(request):
    fixture = FIXTURE if request.param == "qwen3vl" else FIXTURE_25
    return fixture_graph(fixture), fixture


def batch(data, meta, targets=True):
    out = {"images": data["images"].permute(0, 1, 4, 2, 3).float() / 255, "instruction": list(meta["instructions"])}
    if "state" in data:
        out["state"] = data["state"][:, 0]  # starVLA's [B, 1, S]: one state row
    if targets:
        out["actions"] = data["actions"]
    return out


def context(graph, fed):
    vlm = graph.model["vlm"](**{k[len("vlm_"):]: v for k, v in fed.items() if k.startswith("vlm_")})
    return vlm["hidden"], vlm["mask"]


def test_the_fixtures_are_starvla_qwengr00t_at_the_pinned_commit():
    for fixture, vlm in ((FIXTURE, "qwen3_vl"), (FIXTURE_25, "qwen2_5_vl")):
        meta, data = case(fixture)
        assert meta["framework"] == "QwenGR00T" and meta["starvla_commit"].startswith("0ed0aad")
        assert json.loads((fixture / "vlm" / "config.json").read_text())["model_type"] == vlm
        assert state_metadata(fixture)["starvla_commit"] == meta["starvla_commit"]
        b, r, h, a = len(meta["instructions"]), meta["repeated_diffusion_steps"], meta["horizon"], meta["action_dim"]
        assert data["train_noise"].shape == (r * b, h, a) and data["train_time"].shape == (r * b,)
        assert data["noise"].shape == data["predicted_actions"].shape == (b, h, a)
    assert case(FIXTURE_25)[0]["image_size"] % 28 == 0  # qwen_vl_utils' resize leaves the images alone


@pytest.mark.parametrize("name", ["case", "case_state"])
def test_prompt_context_loss_and_actions_match_starvla(parity, name):
    """The VLM gets starVLA's tokens (the instruction alone in the chat template; starVLA pads on the
    left, the graph on the right: real tokens compared), its hidden states equal the context starVLA's
    head got, the loss with starVLA's noise and times and the actions from its noise are starVLA's."""
    graph, fixture = parity
    check_case(graph, fixture, name)


def test_cot_prompt_matches_starvla():
    """starVLA's datasets.vla_data.CoT_prompt (read by the importer into the VLM's prompt_template):
    the same tokens, context, loss and actions as starVLA's (tiny Qwen3-VL)."""
    meta, _ = case(FIXTURE)
    check_case(fixture_graph(FIXTURE, meta["cot_prompt"]), FIXTURE, "case_cot")


def check_case(graph, fixture, name):
    meta, data = case(fixture, name)
    fed = graph.feed(batch(data, meta, targets=False))
    ours, our_mask = fed["vlm_input_ids"], fed["vlm_attention_mask"].bool()
    theirs, their_mask = data["input_ids"], data["attention_mask"].bool()
    for i in range(len(meta["instructions"])):
        assert ours[i][our_mask[i]].tolist() == theirs[i][their_mask[i]].tolist(), i
    with torch.no_grad():
        hidden, mask = context(graph, fed)
        diff_c = max((hidden[i][mask[i]] - data["context"][i][their_mask[i]]).abs().max().item()
                     for i in range(len(meta["instructions"])))
        state = batch(data, meta).get("state")
        loss = graph.model["head"](hidden, mask, state, data["actions"], noise=data["train_noise"],
                                   time=data["train_time"])["loss"]
        actions = graph.infer(**fed, noise=data["noise"])["actions"]
    diff_l = abs(loss.item() - data["loss"].item())
    diff_a = (actions - data["predicted_actions"]).abs().max().item()
    print(f"{fixture.name}/{name}: context {diff_c:.2e}, loss {loss.item():.7f} vs {data['loss'].item():.7f} "
          f"({diff_l:.2e}), actions {diff_a:.2e}")
    assert diff_c <= TOL and diff_l <= TOL and diff_a <= TOL


def test_the_training_graph_runs_the_same_loss_and_the_comparison_can_fail():
    """graph.train draws noise then times as the head's forward does (randn of the repeated chunk,
    then Beta): under one seed its loss equals the head's with those draws passed in; a changed
    weight or one wrong time moves loss and actions far beyond the tolerance."""
    graph = fixture_graph(FIXTURE)
    meta, data = case(FIXTURE)
    head = graph.model["head"]
    b, r = len(meta["instructions"]), meta["repeated_diffusion_steps"]
    with torch.no_grad():
        fed = graph.feed(batch(data, meta))
        torch.manual_seed(5)
        loss = graph.train["action"](**graph.feed(batch(data, meta), "action"))["loss"]
        torch.manual_seed(5)
        noise = torch.randn((r * b, meta["horizon"], meta["action_dim"]))
        time = head.sample_time(r * b, torch.device("cpu"), torch.float32)
        hidden, mask = context(graph, fed)
        again = head(hidden, mask, None, data["actions"], noise=noise, time=time)["loss"]
        assert abs(loss.item() - again.item()) <= 1e-6
        assert ((time >= 0) & (time <= 1)).all()
        shifted = data["train_time"].clone()
        shifted[0] = 1 - shifted[0]
        moved_loss = head(hidden, mask, None, data["actions"], noise=data["train_noise"], time=shifted)["loss"]
        assert abs(moved_loss.item() - data["loss"].item()) > 100 * TOL
        saved = head.action_decoder.layer2.bias.clone()
        try:
            head.action_decoder.layer2.bias.add_(0.01)
            moved = graph.infer(**graph.feed(batch(data, meta, targets=False)), noise=data["noise"])["actions"]
        finally:
            head.action_decoder.layer2.bias.copy_(saved)
    assert (moved - data["predicted_actions"]).abs().max().item() > 100 * TOL
    # a training step: the loss reaches the DiT, the encoders, the future tokens and the VLM; in
    # training mode starVLA's dropout (0.2) changes the loss for the same draws
    graph.model.train()
    try:
        torch.manual_seed(0)
        loss = graph.train["action"](**graph.feed(batch(data, meta), "action"))["loss"]
        loss.backward()
        with torch.no_grad():
            hidden, mask = context(graph, fed)
            dropped = head(hidden, mask, None, data["actions"], noise=data["train_noise"], time=data["train_time"])["loss"]
    finally:
        graph.model.eval()
    for name, p in [("head.model.transformer_blocks.0.attn1.to_k.weight", head.model.transformer_blocks[0].attn1.to_k.weight),
                    ("head.action_encoder.layer1.weight", head.action_encoder.layer1.weight),
                    ("head.future_tokens.weight", head.future_tokens.weight),
                    ("vlm input embeddings", graph.model["vlm"].model.get_input_embeddings().weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert abs(dropped.item() - data["loss"].item()) > 100 * TOL


# parameters of starVLA's FlowmatchingActionHead built from QwenGR00TDefaultConfig at 0ed0aad with the
# cross-attention width of Qwen3-VL-4B (2560) and Qwen2.5-VL-3B (2048), counted by starVLA's own
# module in the side venv; the state_dict keys and shapes were the same as the graph head's
STARVLA_HEAD_PARAMETERS = {"starvla/qwen3vl-gr00t": 161_472_775, "starvla/qwen25vl-gr00t": 155_181_319}


def test_the_packaged_graphs_compile_at_full_size():
    """starVLA's QwenGR00T defaults: DiT-B (768 wide, 12 heads, 16 blocks, odd ones self-attending),
    cross-attention keys from the VLM's width, 32 future tokens, 1024-wide MLPs; state of 7 optional;
    as many head parameters as starVLA's own head of that configuration."""
    for name, vlm_width in (("starvla/qwen3vl-gr00t", 2560), ("starvla/qwen25vl-gr00t", 2048)):
        cg = compile_graph(name)  # meta tensors from the bundled config
        head = cg.model["head"]
        assert sum(p.numel() for p in head.parameters()) == STARVLA_HEAD_PARAMETERS[name]
        blocks = head.model.transformer_blocks
        assert len(blocks) == 16 and blocks[0].attn1.heads == 12
        assert blocks[0].attn1.to_k.weight.shape == (768, vlm_width) and blocks[1].attn1.to_k.weight.shape == (768, 768)
        assert head.future_tokens.weight.shape == (32, 768) and head.position_embedding.weight.shape == (1024, 768)
        assert head.state_encoder.layer1.weight.shape == (1024, 7) and head.action_decoder.layer1.weight.shape == (1024, 1024)
        assert head.params["repeated_diffusion_steps"] == 8 and head.params["num_steps"] == 4
        assert cg.spec.inputs["state"].get("optional") is True
    spec = yaml.safe_load((Path(importer.__file__).parents[2] / "graphs" / "starvla" / "qwen3vl-gr00t.yaml").read_text())
    spec["blocks"]["head"]["with"]["heads"] = 7
    with pytest.raises(Exception, match="heads"):
        compile_graph(spec)


# --- graphvla import starvla: a QwenGR00T run folder -----------------------------------------------

def ckpt_folder(tmp: Path) -> Path:
    """The run folder as starVLA's trainer wrote it: the committed config and statistics, and the
    weights file, qwengr00t/state.json's state dict saved again (stored once; tests/starvla_ckpt.py
    rebuilds it and checks its sha256)."""
    from starvla_ckpt import starvla_run

    return starvla_run(CKPT_FIXTURE, tmp / "starvla-run")


def expected():
    from starvla_ckpt import expected as of

    return of(CKPT_FIXTURE)


def observation(i, meta, data):
    obs = {"images": data["images"][i].numpy(), "instruction": meta["instructions"][i]}
    if i in meta["state_on"]:
        obs["state"] = data["state"][0].numpy()
    return obs


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gr00t-import")
    return import_starvla(ckpt_folder(tmp), tmp / "run", base_vlm=FIXTURE / "vlm", image_size=64)


def test_import_serves_starvlas_actions(imported):
    """Same observation, same seed: the imported run's actions (its session generator drawing the
    noise) are what starVLA's from_pretrained + predict_action + unnormalize_actions served."""
    meta, data = expected()
    info = json.loads((imported / "imported.json").read_text())
    assert info["framework"] == "QwenGR00T" and info["graph"] == "starvla/qwen3vl-gr00t"
    policy = load_policy(imported)
    assert info["tensors"] == len(load_state(FIXTURE)) == len(policy.cg.model.state_dict())
    for i, seed in enumerate(meta["seeds"]):
        session = Session(seed)
        assert torch.equal(policy.draw_noise(1, [Session(seed).generator]), data["noise"][i:i + 1])
        actions = policy.infer_batch([observation(i, meta, data)], sessions=[session])[0]["actions"]
        diff = np.abs(actions - data["actions"][i].numpy()).max()
        print(f"observation {i}: imported run vs starVLA served actions max |diff| {diff:.2e}")
        assert diff <= 1e-4
    # the comparison can fail: another seed's noise gives other actions
    other = policy.infer_batch([observation(0, meta, data)], sessions=[Session(meta["seeds"][0] + 1)])[0]["actions"]
    assert np.abs(other - data["actions"][0].numpy()).max() > 1e-2


def test_import_rtc_and_export(imported, tmp_path):
    """Real-time chunking (blend: the head has no guided sampler) is served on the imported run; the
    run exports, and the exported graph (its noise drawn from the session as the run's) serves
    starVLA's actions for the observation with a state."""
    from graphvla.protocol import RTC_KEY
    from graphvla.runners.export import export_policy
    from graphvla.runners.exported import load_exported

    meta, data = expected()
    policy = load_policy(imported)
    old = data["actions"][1].numpy()[::-1].copy()
    reply = policy.infer_batch([{**observation(0, meta, data), RTC_KEY: {"delay": 1, "remaining_actions": old}}],
                               sessions=[Session(meta["seeds"][0])])[0]
    assert reply["rtc"]["applied"] and reply["rtc"]["method"] == "blend"
    assert np.allclose(reply["actions"][0], old[0], atol=1e-6)
    exported = load_exported(export_policy(imported, tmp_path / "exported"))
    actions = exported.infer_batch([observation(1, meta, data)], sessions=[Session(meta["seeds"][1])])[0]["actions"]
    diff = np.abs(actions - data["actions"][1].numpy()).max()
    print(f"exported run vs starVLA served actions max |diff| {diff:.2e}")
    assert diff <= 1e-4


def test_import_cli_and_server(imported, tmp_path):
    from graphvla.client import PolicyClient
    from graphvla.runners.serve import ServeOptions, ServerThread

    meta, data = expected()
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(main, ["import", "starvla", str(ckpt_folder(tmp_path)), "-o", str(out),
                                       "--base-vlm", str(FIXTURE / "vlm"), "--image-size", "64"])
    assert result.exit_code == 0, result.output
    assert "QwenGR00T" in result.output and "starvla/qwen3vl-gr00t" in result.output
    with ServerThread(load_policy(out), ServeOptions(port=0, max_batch=1, seed=meta["seeds"][0])) as srv:
        with PolicyClient("127.0.0.1", srv.port) as client:
            client.reset()  # the session's seed is the server's
            served = client.infer(observation(0, meta, data))["actions"]
    assert np.abs(served - data["actions"][0].numpy()).max() <= 1e-4


def edit_config(d: Path, fn):
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    fn(cfg["framework"]["action_model"])
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


BAD = {
    "unknown DiT size": (lambda m: (m.update(action_model_type="DiT-XS"), m["diffusion_model_cfg"].pop("num_attention_heads")),
                         r"config\.yaml: framework\.action_model\.action_model_type 'DiT-XS' is not one of QwenGR00T's DiT sizes"),
    "heads not the width": (lambda m: m.update(action_model_type="DiT-B"),
                            r"config\.yaml: framework\.action_model\.diffusion_model_cfg: 4 heads x 8 is not DiT-B's width 768"),
    "another norm": (lambda m: m["diffusion_model_cfg"].update(norm_type="layer_norm"),
                     r"diffusion_model_cfg\.norm_type is 'layer_norm'"),
    "weights of another width": (lambda m: m["diffusion_model_cfg"].update(num_attention_heads=2),
                                 r"steps_2_model\.safetensors: 'action_model\.[\w.]+' has shape"),
    "no state encoder in the config": (lambda m: m.update(state_dim=0),
                                       r"1 tensor\(s\)|tensor\(s\) the graph has no place for: action_model\.state_encoder"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_gr00t_checkpoints_are_named_and_leave_nothing(name, tmp_path):
    change, message = BAD[name]
    d = ckpt_folder(tmp_path)
    edit_config(d, change)
    out = tmp_path / "out" / "run"
    with pytest.raises(StarVLAImportError, match=message):
        import_starvla(d, out, base_vlm=FIXTURE / "vlm", image_size=64)
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_graphvla_eval_runs_an_imported_gr00t_run(tmp_path):
    """`graphvla eval` (GraphVLA's Meta-World suite, one short episode) on an imported QwenGR00T run:
    the fixture's checkpoint cut to Meta-World's 4-d actions (the action encoder's input and the
    decoder's output rows, the statistics, action_dim 4) and without a state encoder (state_dim 0,
    its tensors dropped): a checkpoint starVLA itself builds, one view."""
    from conftest import require_metaworld
    from safetensors.torch import save_file

    require_metaworld()
    d = ckpt_folder(tmp_path)
    edit_config(d, lambda m: m.update(action_dim=4, state_dim=0))
    path = next((d / "checkpoints").glob("steps_*_model.safetensors"))
    state = load_file(str(path))
    state = {k: v for k, v in state.items() if not k.startswith("action_model.state_encoder.")}
    state["action_model.action_encoder.layer1.weight"] = state["action_model.action_encoder.layer1.weight"][:, :4].contiguous()
    for k in ("action_model.action_decoder.layer2.weight", "action_model.action_decoder.layer2.bias"):
        state[k] = state[k][:4].contiguous()
    save_file(state, str(path))
    stats_file = d / "dataset_statistics.json"
    stats = json.loads(stats_file.read_text())
    for ds in stats.values():
        ds["action"] = {k: v[:4] for k, v in ds["action"].items()}
    stats_file.write_text(json.dumps(stats))
    run = import_starvla(d, tmp_path / "run", base_vlm=FIXTURE / "vlm", views=1, image_size=64)
    assert "state" not in load_policy(run).inputs
    result = CliRunner().invoke(main, ["eval", str(run), "--suite", "metaworld", "--tasks", "reach-v3", "--episodes", "1",
                                       "--max-steps", "8", "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    episode = results["episodes"]["reach-v3"][0]
    assert episode["steps"] == 8 and episode["queries"] == 2  # chunks of 4 executed 4 at a time, served by the run
