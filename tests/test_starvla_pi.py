"""graphs/starvla/qwen3vl-pi-v3 and qwen25vl-pi-v3 are starVLA's QwenPI_v3, and qwen3vl-pi and qwen25vl-pi
its QwenPI: with the weights starVLA's own code initialised (tests/fixtures/starvla/qwenpi_v3,
qwenpi_v3_qwen25, qwenpi and qwenpi_qwen25, written by scripts/parity/starvla_pi.py from starVLA at
commit 0ed0aad on a tiny Qwen3-VL / Qwen2.5-VL, float32 on the CPU), the packaged graphs give
starVLA's training loss (on the noise and times starVLA drew) and predicted actions (from the
starting noise starVLA drew) on the same batch within 1e-5. No
starVLA code is imported: only its numbers. Every key of starVLA's state_dict maps to exactly one
key of the graph's, through the importer's prefix table."""
from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from graphvla.compiler.compile import compile_graph
from graphvla.errors import SpecError
from graphvla.runners.importers.starvla import graph_key
from graphvla.spec.loader import load_spec
from starvla_samples import FixtureSamples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from starvla_weights import load_state, state_metadata  # noqa: E402  (bench/: the fixtures' weights store)

warnings.filterwarnings("ignore")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "starvla"
GRAPHS = Path(__file__).resolve().parents[1] / "graphvla" / "graphs" / "starvla"
CASES = {"qwen3vl": (GRAPHS / "qwen3vl-pi-v3.yaml", FIXTURES / "qwenpi_v3"),
         "qwen25vl": (GRAPHS / "qwen25vl-pi-v3.yaml", FIXTURES / "qwenpi_v3_qwen25")}
# starVLA's QwenPI (no projectors, interleaved self-attention, the state through the head, 2 repeats)
PI_CASES = {"pi-qwen3vl": (GRAPHS / "qwen3vl-pi.yaml", FIXTURES / "qwenpi"),
            "pi-qwen25vl": (GRAPHS / "qwen25vl-pi.yaml", FIXTURES / "qwenpi_qwen25")}
ALL_CASES = {**CASES, **PI_CASES}
TOL = 1e-5
# QwenPI_v3 given a state writes it into the prompt (starVLA's add_discretized_state_to_instruction)
STATE_PROMPT = {"type": "glue.state_text", "in": {"text": "inputs.instruction", "state": "inputs.state"},
                "with": {"bins": 256, "low": -1.0, "high": 1.0, "template": "{text} [STATE] {state} [ACTION]"}}


def case(fixture, name="case"):
    """(case.json, the tensors of a case): `case` (plain instructions) or `case_state` (a state in
    each example; the same images, actions and weights)."""
    meta = json.loads((fixture / "case.json").read_text())
    data = load_file(str(fixture / f"{name}.safetensors"))
    if name != "case":
        data.update({k: v for k, v in load_file(str(fixture / "case.safetensors")).items() if k in ("images", "actions")})
    return meta, data


def fixture_spec(graph, fixture, state=False) -> dict:
    """The packaged graph at the fixture's sizes: the tiny VLM (config and processor from the
    fixture, float32, weights to be loaded), its views and image size, the DiT's width and head
    size, horizon, action width, repeats and position table as starVLA's config had them."""
    meta, _ = case(fixture)
    spec = copy.deepcopy(load_spec(str(graph)).data)
    vlm = spec["blocks"]["vlm"]["with"]
    for key in ("model", "dtype", "gradient_checkpointing"):
        vlm.pop(key, None)
    vlm.update(config=json.loads((fixture / "vlm" / "config.json").read_text()), processor=str(fixture / "vlm"))
    if "project" in spec["blocks"]:
        spec["blocks"]["project"]["with"]["width"] = meta["dit_width"]
    spec["blocks"]["head"]["with"].update(
        attention_head_dim=meta["attention_head_dim"], state_dim=meta["state_dim"], max_seq_len=meta["max_seq_len"],
        repeated_diffusion_steps=meta["repeated_diffusion_steps"], num_steps=meta["num_inference_timesteps"],
        future_tokens=meta["future_tokens"], output_dim=meta["dit_output_dim"],
        interleave_self_attention=meta["interleave_self_attention"])
    h, a = meta["horizon"], meta["action_dim"]
    spec["inputs"]["images"].update(views=meta["views"], size=[meta["image_size"]] * 2)
    spec["inputs"]["actions"].update(dim=a, horizon=h)
    spec["inputs"]["actions_mask"]["shape"] = [h]
    if meta["framework"] == "QwenPI":  # the state (optional) goes to the head's state encoder
        spec["inputs"]["state"]["dim"] = meta["state_dim"]
    elif state:
        spec["inputs"]["state"] = {"kind": "state", "dim": meta["state_dim"]}
        spec["blocks"] = {"state_prompt": STATE_PROMPT, **spec["blocks"]}
        spec["blocks"]["vlm"]["in"]["text"] = "state_prompt.text"
    return spec


def fixture_weights(fixture) -> dict:
    """starVLA's state_dict of the fixture: its state.json in the weights store (the tiny VLM stored
    once for every fixture on it), rebuilt and checked against its sha256."""
    return load_state(fixture)


def fixture_graph(name="qwen3vl", state=False):
    graph, fixture = ALL_CASES[name]
    cg = compile_graph(fixture_spec(graph, fixture, state), device="cpu")
    weights = fixture_weights(fixture)
    framework = case(fixture)[0]["framework"]
    mapped = {graph_key(k, framework): v for k, v in weights.items()}  # the importer's mapping
    assert None not in mapped and len(mapped) == len(weights)  # no two starVLA keys land on one graph key
    assert set(mapped) == set(cg.model.state_dict())  # every key accounted for, both ways
    cg.model.load_state_dict(mapped, strict=True)
    cg.model.eval()
    return cg


@pytest.fixture(scope="module", params=list(ALL_CASES))
def parity(request):
    """(compiled graph, fixture folder): the plain-instruction case of QwenPI_v3 and QwenPI on
    Qwen3-VL and on Qwen2.5-VL."""
    return fixture_graph(request.param), ALL_CASES[request.param][1]


def batch(data, meta, targets=True):
    images = data["images"].permute(0, 1, 4, 2, 3).float() / 255  # uint8 [B, V, H, W, 3] -> [B, V, 3, H, W] in [0, 1]
    out = {"images": images, "instruction": list(meta["instructions"])}
    if "state" in data:  # already in [-1, 1], as starVLA was given it (cg.feed does not normalize)
        out["state"] = data["state"]
    if targets:
        out["actions"] = data["actions"]
        out["actions_mask"] = torch.ones(data["actions"].shape[:2], dtype=torch.bool)
    return out


def head_inputs(cg, fed):
    """What the head reads: the (projected, QwenPI_v3) layer stack and the VLM's attention mask."""
    vlm = cg.model["vlm"](**{k[len("vlm_"):]: v for k, v in fed.items() if k.startswith("vlm_")})
    layers = cg.model["project"](vlm["layers"])["layers"] if "project" in cg.model else vlm["layers"]
    return layers, vlm["mask"]


def check_case(cg, meta, data):
    """Token ids, the training loss (on starVLA's recorded noise and times, and on the graph's own
    draws from starVLA's seed) and the predicted actions (from starVLA's starting noise)."""
    with torch.no_grad():
        fed = cg.feed(batch(data, meta, targets=False))
        ours, mask = fed["vlm_input_ids"], fed["vlm_attention_mask"].bool()
        for i in range(len(meta["instructions"])):  # starVLA pads on the left, the step on the right
            assert ours[i][mask[i]].tolist() == data["input_ids"][i][data["attention_mask"][i].bool()].tolist(), i
        context, context_mask = head_inputs(cg, fed)
        head_state = data["state"] if meta["framework"] == "QwenPI" and "state" in data else None
        loss = cg.model["head"](context, context_mask, head_state, target=data["actions"], noise=data["train_noise"],
                                time=data["train_time"])["loss"]
        torch.manual_seed(meta["train_seed"])
        graph_loss = cg.train["action"](**cg.feed(batch(data, meta), "action"))["loss"]
        actions = cg.infer(**fed, noise=data["predict_noise"])["actions"]
    diffs = (abs(loss.item() - data["loss"].item()), abs(graph_loss.item() - data["loss"].item()),
             (actions - data["predicted_actions"]).abs().max().item())
    print(f"loss {loss.item():.7f} vs starVLA {data['loss'].item():.7f}: |diff| {diffs[0]:.2e} (recorded draws), "
          f"{diffs[1]:.2e} (the graph's draws from the seed); actions max |diff| {diffs[2]:.2e}")
    assert actions.shape == data["predicted_actions"].shape
    assert max(diffs) <= TOL
    return fed


def test_the_fixtures_are_starvla_qwenpi_v3_and_qwenpi_at_the_pinned_commit():
    for name, (_, fixture) in ALL_CASES.items():
        meta, data = case(fixture)
        framework = "QwenPI" if name in PI_CASES else "QwenPI_v3"
        assert meta["framework"] == framework and meta["starvla_commit"].startswith("0ed0aad"), name
        assert state_metadata(fixture)["starvla_commit"] == meta["starvla_commit"]
        b, h, a = len(meta["instructions"]), meta["horizon"], meta["action_dim"]
        r = meta["repeated_diffusion_steps"]
        assert data["predicted_actions"].shape == (b, h, a) and data["predict_noise"].shape == (b, h, a)
        assert data["train_noise"].shape == (r * b, h, a) and data["train_time"].shape == (r * b,)
        if framework == "QwenPI_v3":
            assert not meta["interleave_self_attention"] and meta["dit_width"] < 64  # the projectors are real layers
    for name in ("qwen25vl", "pi-qwen25vl"):
        assert case(ALL_CASES[name][1])[0]["vlm_interface"].endswith("QWen2_5._QWen_VL_Interface")


def test_loss_and_actions_match_starvla(parity):
    cg, fixture = parity
    check_case(cg, *case(fixture))


def test_state_in_the_prompt_is_starvlas():
    """QwenPI_v3 given a state writes "[STATE] bins [ACTION]" after the instruction and runs no state
    encoder: the same graph with glue.state_text in front of the VLM matches starVLA's state case."""
    meta, data = case(CASES["qwen3vl"][1], "case_state")
    check_case(fixture_graph("qwen3vl", state=True), meta, data)
    assert abs(data["loss"].item() - case(CASES["qwen3vl"][1])[1]["loss"].item()) > 1e-4  # the state changes the numbers


def test_qwenpi_takes_the_state_through_its_head():
    """starVLA's QwenPI given a state feeds it to the head's state encoder (a token before the future
    tokens), not to the prompt: starvla/qwen3vl-pi with the state wired matches starVLA's state case;
    QwenPI differs from QwenPI_v3 as the graphs say (no projectors, interleaved self-attention, 2 repeats)."""
    meta, data = case(PI_CASES["pi-qwen3vl"][1], "case_state")
    cg = fixture_graph("pi-qwen3vl")
    check_case(cg, meta, data)
    assert abs(data["loss"].item() - case(PI_CASES["pi-qwen3vl"][1])[1]["loss"].item()) > 1e-4  # the state counts
    assert meta["interleave_self_attention"] and meta["repeated_diffusion_steps"] == 2 and meta["dit_width"] == 64
    assert "project" not in cg.model and cg.model["head"].state_encoder is not None
    full = compile_graph(GRAPHS / "qwen3vl-pi.yaml")  # on meta: the DiT at Qwen3-VL-4B's width, 36 blocks
    head = full.model["head"]
    assert head.width == 2560 and len(head.model.transformer_blocks) == 36 and head.model.transformer_blocks[0].attn1.heads == 40
    assert compile_graph(GRAPHS / "qwen25vl-pi.yaml").model["head"].width == 2048


def test_the_comparison_can_fail(parity):
    """One decoder bias moved by 0.01 moves the actions far beyond the tolerance; other draws of the
    noise and times give another loss."""
    cg, fixture = parity
    meta, data = case(fixture)
    head = cg.model["head"]
    with torch.no_grad():
        fed = cg.feed(batch(data, meta, targets=False))
        context, context_mask = head_inputs(cg, fed)
        other = head(context, context_mask, target=data["actions"], noise=data["train_noise"].flip(0),
                     time=data["train_time"].flip(0) * 0.5)["loss"]
        saved = head.action_decoder.layer2.bias.clone()
        try:
            head.action_decoder.layer2.bias.add_(0.01)
            moved = cg.infer(**fed, noise=data["predict_noise"])["actions"]
        finally:
            head.action_decoder.layer2.bias.copy_(saved)
    assert (moved - data["predicted_actions"]).abs().max().item() > 100 * TOL
    assert abs(other.item() - data["loss"].item()) > 100 * TOL


def test_the_packaged_graphs_compile_at_full_size_with_starvlas_parameter_counts():
    """On meta, from the bundled configs: Qwen3-VL-4B's 36 layers projected 2560 -> 1024, a 36-block
    DiT of width 1024; the counts are those starVLA's QwenPI_v3 docstring gives for Qwen3-VL-4B with
    action_dit_hidden_dim 1024 (action_model 538,678,305, project_layers 94,593,024)."""
    cg = compile_graph(GRAPHS / "qwen3vl-pi-v3.yaml")
    count = {b: sum(p.numel() for p in cg.model[b].parameters()) for b in ("vlm", "project", "head")}
    assert count == {"vlm": 4_437_815_808, "project": 94_593_024, "head": 538_678_305}
    assert cg.shapes[("project", "layers")][1] == 36 and cg.shapes[("project", "layers")][-1] == 1024
    head = cg.model["head"]
    assert len(head.model.transformer_blocks) == 36 and head.model.transformer_blocks[0].attn1.heads == 16
    cg = compile_graph(GRAPHS / "qwen25vl-pi-v3.yaml")  # Qwen2.5-VL-3B: 36 layers of 2048
    assert cg.shapes[("vlm", "layers")][1] == 36 and cg.shapes[("vlm", "layers")][-1] == 2048
    assert sum(p.numel() for p in cg.model["project"].parameters()) == 36 * (2 * 2048 + 2048 * 1024 + 1024)


def test_bad_values_are_named():
    graph, fixture = CASES["qwen3vl"]
    spec = fixture_spec(graph, fixture)
    spec["blocks"]["head"]["with"]["attention_head_dim"] = 7  # does not divide the DiT width 32
    with pytest.raises(SpecError, match="attention_head_dim"):
        compile_graph(spec, device="cpu")
    spec = fixture_spec(graph, fixture)
    spec["blocks"]["head"]["with"]["max_seq_len"] = 2  # fewer positions than the chunk's 4 steps
    with pytest.raises(SpecError, match="max_seq_len"):
        compile_graph(spec, device="cpu")
    cg = fixture_graph()
    meta, data = case(fixture)
    fed = cg.feed(batch(data, meta, targets=False))
    with pytest.raises(ValueError, match=r"noise must be \[batch, horizon, action dim\]"):
        cg.infer(**fed, noise=data["predict_noise"][:, :2])


# --- graphvla import starvla: QwenPI_v3 / QwenPI checkpoints as starVLA's trainer writes them -------

IMPORT_TOL = 1e-4


def expected(name="qwenpi_v3"):
    """What starVLA served from the checkpoint fixture `name`_ckpt (scripts/parity/starvla_pi_ckpt.py)."""
    from starvla_ckpt import expected as of

    return of(FIXTURES / f"{name}_ckpt")


def starvla_run(tmp_path, name="qwenpi_v3") -> Path:
    """The trainer's folder with its weights file rebuilt from the parity fixture's state, as the script
    wrote it (the fixture keeps only its sha256): byte for byte the file starVLA loaded."""
    from starvla_ckpt import starvla_run as rebuilt

    return rebuilt(FIXTURES / f"{name}_ckpt", tmp_path / "starvla-run", fixture_weights(FIXTURES / name))


def observations(name="qwenpi_v3"):
    meta, data = expected(name)
    return [{"images": data["images"][i].numpy(), "instruction": meta["instructions"][i],
             **({"state": data["state"][i].numpy()} if "state" in data else {})}
            for i in range(len(meta["instructions"]))]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from graphvla.runners.importers.starvla import import_starvla

    tmp = tmp_path_factory.mktemp("pi-import")
    d = starvla_run(tmp)
    return d, import_starvla(d, tmp / "run", base_vlm=FIXTURES / "qwenpi_v3" / "vlm", image_size=64)


def test_imported_run_serves_starvlas_actions(imported):
    """load_policy on the imported run, given the starting noise starVLA's predict_action drew, serves
    what starVLA served (predict_action + FrameworkTools.unnormalize_actions) within 1e-4; every tensor
    of the checkpoint is in the run; sessions (their own noise) and real-time chunking (inpainting, a
    sampling head) work on it."""
    import numpy as np

    from graphvla.policy.loading import load_policy
    from graphvla.policy.session import Session

    d, run = imported
    meta, data = expected()
    info = json.loads((run / "imported.json").read_text())
    policy = load_policy(run)
    weights = load_file(str(d / meta["checkpoint"][len("ckpt/"):]))
    assert info["framework"] == "QwenPI_v3" and info["graph"] == "starvla/qwen3vl-pi-v3"
    assert info["tensors"] == len(weights) == len(policy.cg.model.state_dict())
    out = policy.infer_batch(observations(), noise=data["noise"])
    actions = np.stack([o["actions"] for o in out])
    diff = np.abs(actions - data["actions"].numpy()).max()
    print(f"imported run vs starVLA served actions: max |diff| {diff:.2e}")
    assert actions.shape == tuple(data["actions"].shape) and diff <= IMPORT_TOL
    other = np.stack([o["actions"] for o in policy.infer_batch(observations(), noise=-data["noise"])])
    assert np.abs(other - data["actions"].numpy()).max() > 100 * IMPORT_TOL  # the noise matters
    assert policy.samples and policy._guided  # the policy draws the noise; real-time chunking inpaints
    sessions = [Session(seed=1), Session(seed=2)]
    first = policy.infer_batch(observations(), sessions)
    assert all(np.isfinite(o["actions"]).all() and o["actions"].shape == actions.shape[1:] for o in first)


def test_imported_qwenpi_run_serves_starvlas_actions(tmp_path):
    """A QwenPI checkpoint (framework.name QwenPI; QwenFM is the same entry) imports to
    starvla/qwen3vl-pi: with the state each observation carried and starVLA's starting noise, the run
    serves what starVLA served within 1e-4, every tensor mapped."""
    import numpy as np

    from graphvla.policy.loading import load_policy
    from graphvla.runners.importers.starvla import import_starvla

    meta, data = expected("qwenpi")
    d = starvla_run(tmp_path, "qwenpi")
    run = import_starvla(d, tmp_path / "run", base_vlm=FIXTURES / "qwenpi" / "vlm", image_size=64)
    info = json.loads((run / "imported.json").read_text())
    assert info["framework"] == "QwenPI" and info["graph"] == "starvla/qwen3vl-pi"
    policy = load_policy(run)
    assert info["tensors"] == len(fixture_weights(FIXTURES / "qwenpi")) == len(policy.cg.model.state_dict())
    assert policy.inputs["state"]["dim"] == meta.get("state_dim", data["state"].shape[1])
    actions = np.stack([o["actions"] for o in policy.infer_batch(observations("qwenpi"), noise=data["noise"])])
    diff = np.abs(actions - data["actions"].numpy()).max()
    print(f"imported QwenPI run vs starVLA served actions: max |diff| {diff:.2e}")
    assert diff <= IMPORT_TOL
    stateless = [{k: v for k, v in o.items() if k != "state"} for o in observations("qwenpi")]
    moved = np.stack([o["actions"] for o in policy.infer_batch(stateless, noise=data["noise"])])
    assert np.abs(moved - data["actions"].numpy()).max() > 10 * IMPORT_TOL  # the state reaches the head


def test_a_run_trained_with_a_state_imports_with_the_state_prompt(tmp_path):
    """datasets.vla_data.include_state: QwenPI_v3 wrote the state into the prompt. The imported run
    puts glue.state_text in front of the VLM and takes a state_dim-wide state; given starVLA's noise,
    it serves what starVLA served for the same observations with their states."""
    import numpy as np

    from graphvla.policy.loading import load_policy
    from graphvla.runners.importers.starvla import import_starvla

    meta, data = expected()
    d = starvla_run(tmp_path)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["datasets"]["vla_data"]["include_state"] = True
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = import_starvla(d, tmp_path / "run", base_vlm=FIXTURES / "qwenpi_v3" / "vlm", image_size=64)
    policy = load_policy(run)
    assert policy.inputs["state"]["dim"] == cfg["framework"]["action_model"]["state_dim"]
    assert policy.cg.block("state_prompt") is not None
    obs = [{**o, "state": data["state_prompt_state"][i].numpy()} for i, o in enumerate(observations())]
    actions = np.stack([o["actions"] for o in policy.infer_batch(obs, noise=data["state_prompt_noise"])])
    diff = np.abs(actions - data["state_prompt_actions"].numpy()).max()
    print(f"imported run with the state prompt vs starVLA served actions: max |diff| {diff:.2e}")
    assert diff <= IMPORT_TOL
    plain = np.stack([o["actions"] for o in policy.infer_batch([{**o, "state": np.zeros_like(o["state"])} for o in obs],
                                                               noise=data["state_prompt_noise"])])
    assert np.abs(plain - data["state_prompt_actions"].numpy()).max() > 10 * IMPORT_TOL  # the state is read


def test_action_model_type_is_not_read(tmp_path):
    """starVLA's QwenPI_v3 builds its LayerwiseFM head whatever action_model_type says (its framework
    calls LayerwiseFM_ActionHeader.get_action_model): a config naming another type imports the same."""
    from graphvla.runners.importers.starvla import import_starvla

    d = starvla_run(tmp_path)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["framework"]["action_model"]["action_model_type"] = "DiT-B"
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    run = import_starvla(d, tmp_path / "run", base_vlm=FIXTURES / "qwenpi_v3" / "vlm", image_size=64)
    assert json.loads((run / "imported.json").read_text())["graph"] == "starvla/qwen3vl-pi-v3"


def test_import_refuses_what_it_cannot_represent(tmp_path):
    from graphvla.runners.importers.starvla import StarVLAImportError, import_starvla

    vlm = FIXTURES / "qwenpi_v3" / "vlm"
    for i, (edit, message) in enumerate([
        (lambda c: c["framework"]["action_model"]["diffusion_model_cfg"].update(norm_type="layer_norm"),
         r"diffusion_model_cfg\.norm_type is 'layer_norm'"),
        (lambda c: (c["datasets"]["vla_data"].update(include_state=True), c["framework"]["action_model"].update(state_dim=0)),
         r"datasets\.vla_data\.include_state is set but framework\.action_model\.state_dim is 0"),
    ]):
        d = starvla_run(tmp_path / str(i))
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        edit(cfg)
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        with pytest.raises(StarVLAImportError, match=message):
            import_starvla(d, tmp_path / str(i) / "run", base_vlm=vlm, image_size=64)
        assert not (tmp_path / str(i) / "run").exists()


def test_real_time_chunking_inpaints_the_committed_steps():
    """predict(rtc=...) as head.flow_matching's: all-zero weights sample exactly as without it; weights
    on the first two steps pull them towards the previous chunk and leave the sampler deterministic."""
    from graphvla.blocks.heads.flow_matching import Inpainting

    cg = fixture_graph()
    meta, data = case(CASES["qwen3vl"][1])
    noise = data["predict_noise"]
    with torch.no_grad():
        fed = cg.feed(batch(data, meta, targets=False))
        context, context_mask = head_inputs(cg, fed)
    head = cg.model["head"]
    plain = head.predict(context, context_mask, noise=noise)["actions"]
    target = torch.full_like(plain, 0.5)
    zero = head.predict(context, context_mask, noise=noise, rtc=Inpainting(target, torch.zeros(plain.shape[:2])))["actions"]
    weights = torch.zeros(plain.shape[:2])
    weights[:, :2] = 1.0
    guided = head.predict(context, context_mask, noise=noise, rtc=Inpainting(target, weights))["actions"]
    assert torch.equal(zero, plain)
    assert (guided[:, :2] - target[:, :2]).abs().mean() < 0.5 * (plain[:, :2] - target[:, :2]).abs().mean()


def test_imported_run_cli_server_rtc_and_export(imported, tmp_path):
    """The CLI imports the same weights; the server serves the run (a seeded session gives what
    load_policy gives for that seed); a real-time chunking request is inpainted (guidance); the run
    exports, and the exported graph given starVLA's noise serves starVLA's actions."""
    import numpy as np

    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.policy.session import Session
    from graphvla.protocol import RTC_KEY
    from graphvla.runners.export import export_policy
    from graphvla.runners.exported import load_exported
    from graphvla.runners.serve import ServeOptions, ServerThread
    from click.testing import CliRunner

    from graphvla.cli import main

    d, run = imported
    meta, data = expected()
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(main, ["import", "starvla", str(d), "-o", str(out), "--base-vlm",
                                       str(FIXTURES / "qwenpi_v3" / "vlm"), "--image-size", "64"])
    assert result.exit_code == 0 and "QwenPI_v3" in result.output and "starvla/qwen3vl-pi-v3" in result.output, result.output
    step = "checkpoints/step_0000002/model.safetensors"
    assert (out / step).read_bytes() == (run / step).read_bytes()
    policy = load_policy(out)
    obs = observations()
    local = policy.infer_batch(obs[:1], sessions=[Session(5)])[0]["actions"]
    old = data["actions"][1].numpy()[::-1].copy()
    with ServerThread(policy, ServeOptions(port=0, max_batch=1, seed=5)) as srv:
        with PolicyClient("127.0.0.1", srv.port) as client:
            client.reset()  # the session's seed is the server's
            served = client.infer(obs[0])["actions"]
            reply = client.infer({**obs[0], RTC_KEY: {"delay": 1, "remaining_actions": old}})
    assert np.abs(served - local).max() <= 1e-6
    assert reply["rtc"]["applied"] and reply["rtc"]["method"] == "guidance"
    exported = load_exported(export_policy(run, tmp_path / "exported"))
    actions = exported.runner([*exported.tensors(obs), data["noise"]])[0]
    diff = (actions - data["actions"]).abs().max().item()
    print(f"exported run vs starVLA served actions max |diff| {diff:.2e}")
    assert diff <= IMPORT_TOL


def test_without_action_dit_hidden_dim_the_head_reads_the_vlm_layers(tmp_path):
    """action_dit_hidden_dim null (QwenPI_v3's fallback: the DiT at the VLM's width, projectors are
    nn.Identity with no weights): the imported graph's DiT runs at the VLM's width (64), so the
    fixture's checkpoint (a DiT of width 32) is refused, naming the first tensor that does not fit."""
    from graphvla.runners.importers.starvla import StarVLAImportError, import_starvla

    d = starvla_run(tmp_path)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["framework"]["action_model"]["diffusion_model_cfg"]["action_dit_hidden_dim"] = None
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(StarVLAImportError, match=r"'action_model\.[\w.]+' has shape \[[\d, ]*32\], the graph's head\.[\w.]+ needs \[[\d, ]*64\]"):
        import_starvla(d, tmp_path / "run", base_vlm=FIXTURES / "qwenpi_v3" / "vlm", image_size=64)
    assert not (tmp_path / "run").exists()


def test_trains_from_starvlas_weights_saves_and_loads_as_a_policy(tmp_path):
    """End to end: two training steps of starvla/qwen3vl-pi-v3 from starVLA's weights (dropout on,
    the projectors at their own lr), and the run folder loaded back by load_policy infers what the
    trained in-memory graph infers for the same noise."""
    import numpy as np

    from graphvla.data.api import DataBundle, collate
    from graphvla.data.normalize import Normalizer
    from graphvla.policy.loading import load_policy
    from graphvla.policy.policy import Policy
    from graphvla.runners.train import Trainer
    from train_doubles import port_stats

    graph, fixture = CASES["qwen3vl"]
    spec_data = fixture_spec(graph, fixture)
    spec_data["trainer"].update(max_steps=2, batch_size=2, num_workers=0, warmup_steps=1, save_every=100)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_data, allow_unicode=True))
    spec = load_spec(str(tmp_path / "spec.yaml"))
    ds = FixtureSamples(*case(fixture))
    stats = port_stats(ds, ["actions"])
    trainer = Trainer.from_spec(spec, DataBundle({"action": ds}, stats), tmp_path / "run", collate=collate, progress=False,
                                normalizer=Normalizer(stats, spec.section("trainer")["normalization"]))
    weights = {graph_key(k, "QwenPI_v3"): v for k, v in fixture_weights(fixture).items()}
    trainer.cg.model.load_state_dict(weights, strict=True)
    before = {k: v.clone() for k, v in trainer.cg.model.state_dict().items() if k.startswith(("head.", "project."))}
    trainer.run()
    after = trainer.cg.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the head and the projectors trained
    unused = ("head.state_encoder.", "head.model.proj_out_")  # built by starVLA, never run by QwenPI_v3
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(unused))
    meta, data = case(fixture)
    obs = [{"images": data["images"][i].numpy(), "instruction": meta["instructions"][i]} for i in range(2)]
    noise = data["predict_noise"]
    loaded = load_policy(tmp_path / "run").infer_batch(obs, noise=noise)
    in_memory = Policy.from_compiled(trainer.cg, trainer.normalizer).infer_batch(obs, noise=noise)
    for x, y in zip(loaded, in_memory):
        assert x["actions"].shape == (meta["horizon"], meta["action_dim"])
        np.testing.assert_allclose(x["actions"], y["actions"], rtol=0, atol=1e-6)
