"""graphs/starvla/qwen3vl-fast and qwen25vl-fast are starVLA's QwenFast: on the fixtures that
scripts/parity/starvla_fast.py wrote with starVLA's own code at commit 0ed0aad (a tiny Qwen3-VL /
Qwen2.5-VL given <robot_action_i> tokens by starVLA's add_special_tokens tool, a tiny FAST tokenizer
fitted by physical-intelligence/fast's own code, float32 on the CPU), the packaged graph builds
starVLA's token sequence and labels, gives its training loss and decodes its actions within 1e-5.
No starVLA or FAST reference code is imported: only the numbers and files they produced."""
from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from graphvla.compiler.compile import compile_graph
from graphvla.errors import SpecError
from graphvla.processors.fast_hub import HubFASTTokenizer, load_fast_tokenizer
from graphvla.processors.hf_processor import load_processor
from graphvla.processors.hf_vlm import chat_answer_tail
from graphvla.spec.loader import load_spec
from starvla_samples import FixtureSamples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from starvla_weights import load_state, state_metadata  # noqa: E402  (bench/: the fixtures' weights store)

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = {"qwen3vl": ROOT / "tests" / "fixtures" / "starvla" / "qwenfast",
            "qwen25vl": ROOT / "tests" / "fixtures" / "starvla" / "qwenfast_qwen25"}
GRAPHS = {"qwen3vl": ROOT / "graphvla" / "graphs" / "starvla" / "qwen3vl-fast.yaml",
          "qwen25vl": ROOT / "graphvla" / "graphs" / "starvla" / "qwen25vl-fast.yaml"}
TOL = 1e-5
VLM_PREFIX = ("qwen_vl_interface.model.", "vlm.model.")  # starVLA's VLM wrapper -> backbone.hf_vlm's model


def case(fixture):
    return json.loads((fixture / "case.json").read_text()), load_file(str(fixture / "case.safetensors"))


def fixture_spec(name: str, **vlm_with) -> dict:
    """The packaged graph at the fixture's sizes: the tiny VLM (config and processor from the
    fixture, float32, weights to be loaded), its action-token range, the fixture's FAST tokenizer."""
    fixture = FIXTURES[name]
    meta, _ = case(fixture)
    spec = copy.deepcopy(load_spec(str(GRAPHS[name])).data)
    vlm = spec["blocks"]["vlm"]["with"]
    for key in ("model", "dtype", "gradient_checkpointing"):
        vlm.pop(key, None)
    vlm.update(config=json.loads((fixture / "vlm" / "config.json").read_text()), processor=str(fixture / "vlm"),
               action_vocab=meta["fast"]["vocab_size"], action_token_base=meta["action_token_min"], **vlm_with)
    for block in ("action_tokens", "head"):
        spec["blocks"][block]["with"]["tokenizer"] = str(fixture / "fast")
    spec["inputs"]["images"].update(views=meta["views"], size=[meta["image_size"]] * 2)
    spec["inputs"]["actions"].update(dim=meta["action_dim"], horizon=meta["horizon"])
    return spec


def fixture_graph(name: str, **vlm_with):
    cg = compile_graph(fixture_spec(name, **vlm_with), device="cpu")
    state = load_state(FIXTURES[name])
    assert all(k.startswith(VLM_PREFIX[0]) for k in state)  # QwenFast's only weights are its VLM's
    mapped = {VLM_PREFIX[1] + k[len(VLM_PREFIX[0]):]: v for k, v in state.items()}
    assert set(mapped) == set(cg.model.state_dict())  # every tensor accounted for, both ways
    cg.model.load_state_dict(mapped, strict=True)
    cg.model.eval()
    return cg


@pytest.fixture(scope="module", params=list(FIXTURES))
def parity(request):
    return request.param, fixture_graph(request.param)


def batch(data, meta, targets=True):
    out = {"images": data["images"].permute(0, 1, 4, 2, 3).float() / 255, "instruction": list(meta["instructions"])}
    if targets:
        out["actions"] = data["actions"]  # already in [-1, 1], as starVLA was given them (feed does not normalize)
    return out


def real(ids, mask):
    return [row[m.bool()].tolist() for row, m in zip(ids, mask)]


@pytest.mark.parametrize("name", list(FIXTURES))
def test_the_fixture_is_starvla_qwenfast_at_the_pinned_commit(name):
    meta, data = case(FIXTURES[name])
    assert meta["framework"] == "QwenFast" and meta["starvla_commit"].startswith("0ed0aad") and meta["dtype"] == "float32"
    assert state_metadata(FIXTURES[name])["starvla_commit"] == meta["starvla_commit"]
    # the fixture exercises decoding: starVLA's model wrote a full chunk for every sample
    assert all(meta["decoded"]) and data["predicted_actions"].abs().sum(dim=(1, 2)).min() > 0
    assert meta["action_token_max"] - meta["action_token_min"] + 1 == meta["fast"]["vocab_size"]


@pytest.mark.parametrize("name", list(FIXTURES))
def test_the_fast_tokenizer_reads_physical_intelligence_format_as_starvla_uses_it(name):
    """processors/fast_hub.py on the fixture's tokenizer folder (fitted by FAST's own code): the
    training chunks give the FAST ids starVLA put in its answer, and starVLA's generated ids decode
    to starVLA's actions; a wrong count of coefficients gives zeros and ok False, as FAST's decoder."""
    fixture = FIXTURES[name]
    meta, data = case(fixture)
    tok = load_fast_tokenizer(fixture / "fast")
    assert isinstance(tok, HubFASTTokenizer) and tok.horizon is None
    tok = tok.with_shape(meta["horizon"], meta["action_dim"])
    base = meta["action_token_min"]
    labels = data["labels"]
    their_answers = [[t - base for t in row.tolist() if base <= t <= meta["action_token_max"]] for row in labels]
    assert tok.encode(data["actions"].numpy()) == their_answers
    rows = [[i for i in row if i >= 0] for row in data["fast_ids"].tolist()]
    actions, ok = tok.decode(rows)
    assert ok.all()
    np.testing.assert_allclose(actions, data["predicted_actions"].numpy(), rtol=0, atol=1e-6)
    # the model learnt the fitted chunks: decoding gives them back within FAST's rounding
    assert np.abs(actions - data["fitted_actions"].numpy()).max() < 0.5 / meta["fast"]["scale"] * np.sqrt(meta["horizon"])
    bad, ok = tok.decode([rows[0][:-1]])
    assert not ok[0] and not bad.any()
    with pytest.raises(ValueError, match="time_horizon"):
        HubFASTTokenizer.load(fixture / "fast").with_shape(meta["horizon"], meta["action_dim"]).with_shape(3, 7)


def test_the_fast_folder_survives_saving(tmp_path):
    meta, data = case(FIXTURES["qwen3vl"])
    tok = load_fast_tokenizer(FIXTURES["qwen3vl"] / "fast").with_shape(meta["horizon"], meta["action_dim"])
    again = load_fast_tokenizer(tok.save(tmp_path / "fast"))
    assert again.config() == tok.config() and (again.horizon, again.action_dim) == (meta["horizon"], meta["action_dim"])
    assert again.encode(data["actions"].numpy()) == tok.encode(data["actions"].numpy())
    (tmp_path / "fast" / "processor_config.json").write_text(json.dumps({"scale": 10}))
    with pytest.raises(ValueError, match="processor_config.json.*min_token"):
        load_fast_tokenizer(tmp_path / "fast")


def test_token_sequence_labels_and_loss_match_starvla(parity):
    """The prompt is starVLA's (the images and the instruction as the user turn, then the
    generation prompt), the labelled part is starVLA's (the action tokens then what the chat
    template writes after an assistant turn plus the generation prompt), and the LM loss equals
    starVLA's training loss. starVLA pads on the left, the graph on the right: real tokens compare."""
    name, cg = parity
    meta, data = case(FIXTURES[name])
    with torch.no_grad():
        fed = cg.feed(batch(data, meta), "action")
        ours_prompt = real(fed["vlm_input_ids"], fed["vlm_attention_mask"])
        assert ours_prompt == real(data["prompt_ids"], data["prompt_mask"])
        vlm = cg.model["vlm"]
        encoding = {k[len("vlm_"):]: v for k, v in fed.items() if k.startswith("vlm_")}
        out = vlm(target_tokens=fed["action_tokens_tokens"], **encoding)
        loss = cg.train["action"](**fed)["loss"]
    ours_labels = [row[row != -100].tolist() for row in out["labels"]]
    theirs_labels = [row[row != -100].tolist() for row in data["labels"]]
    assert ours_labels == theirs_labels
    for i, (prompt, labelled) in enumerate(zip(ours_prompt, ours_labels)):  # starVLA's sequence is the two, in order
        assert real(data["input_ids"], data["attention_mask"])[i] == prompt + labelled
    diff = abs(loss.item() - data["loss"].item())
    print(f"{name}: loss {loss.item():.7f} vs starVLA {data['loss'].item():.7f} (|diff| {diff:.2e})")
    assert diff <= TOL
    assert data["loss"].item() > 1.0  # unseen chunks: a loss far from 0, so the comparison means something


def test_decoding_and_actions_match_starvla(parity):
    """Free greedy decoding writes starVLA's action tokens and fast.decode gives its actions."""
    name, cg = parity
    meta, data = case(FIXTURES[name])
    with torch.no_grad():
        fed = cg.feed(batch(data, meta, targets=False))
        encoding = {k[len("vlm_"):]: v for k, v in fed.items() if k.startswith("vlm_")}
        generated = cg.model["vlm"].predict(**encoding)["generated"]
        actions = cg.infer(**fed)["actions"]
    ours = [[i for i in row if i >= 0] for row in generated.tolist()]
    assert ours == [[i for i in row if i >= 0] for row in data["fast_ids"].tolist()]
    diff = (actions - data["predicted_actions"]).abs().max().item()
    print(f"{name}: predicted actions max |diff| {diff:.2e}")
    assert actions.shape == data["predicted_actions"].shape and diff <= TOL


def test_a_changed_weight_or_the_graphvla_defaults_break_parity():
    """The comparison can fail: one changed embedding row of an action token changes the loss, and
    the block's defaults (end token only, constrained decoding) are not starVLA's QwenFast."""
    meta, data = case(FIXTURES["qwen3vl"])
    cg = fixture_graph("qwen3vl")
    with torch.no_grad():
        fed = cg.feed(batch(data, meta), "action")
        first = int(fed["action_tokens_tokens"][0, 0]) + meta["action_token_min"]
        cg.model["vlm"].model.get_input_embeddings().weight[first] += 0.5
        moved = cg.train["action"](**fed)["loss"]
    assert abs(moved.item() - data["loss"].item()) > 100 * TOL
    plain = fixture_graph("qwen3vl", answer_end="eos")
    with torch.no_grad():
        loss = plain.train["action"](**plain.feed(batch(data, meta), "action"))["loss"]
    assert abs(loss.item() - data["loss"].item()) > 100 * TOL


def test_chat_answer_tail_is_what_starvla_labels_after_the_actions():
    meta, data = case(FIXTURES["qwen3vl"])
    processor = load_processor(FIXTURES["qwen3vl"] / "vlm")
    tail = chat_answer_tail(processor)
    labels = data["labels"][0][data["labels"][0] != -100].tolist()
    assert labels[-len(tail):] == tail and processor.tokenizer.decode(tail) == "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("name", list(GRAPHS))
def test_the_packaged_graph_compiles_at_full_size_and_errors_name_the_field(name):
    from graphvla.compiler.compile import compile_graph as compile_

    cg = compile_(load_spec(str(GRAPHS[name])), device="meta")
    vlm = cg.model["vlm"]
    base = {"qwen3vl": 151669, "qwen25vl": 151665}[name]
    assert vlm.action_base == base
    # starVLA's tool grows the rows by the action tokens: 151936 + 2048
    assert vlm.model.get_input_embeddings().weight.shape[0] == 151936 + 2048
    spec = fixture_spec(name)  # the action-token options on a VLM without action tokens (QwenOFT's placeholders)
    meta, _ = case(FIXTURES[name])
    del spec["blocks"]["vlm"]["with"]["action_vocab"], spec["blocks"]["vlm"]["in"]["target_tokens"], spec["blocks"]["action_tokens"]
    spec["blocks"]["vlm"]["with"]["action_placeholders"] = meta["horizon"]
    spec["blocks"]["head"] = {"type": "head.mlp_resnet", "in": {"tokens": "vlm.action_hidden", "target": "inputs.actions"}}
    spec["losses"] = {"action": {"from": "head.loss", "weight": 1.0}}
    with pytest.raises(SpecError, match="action_token_base"):
        compile_graph(spec, device="cpu")
    spec = fixture_spec(name)
    spec["blocks"]["action_tokens"]["with"]["tokenizer"] = str(FIXTURES[name] / "vlm")
    with pytest.raises(SpecError, match="tokenizer"):
        compile_graph(spec, device="cpu")


def test_trains_saves_and_loads_as_a_policy(tmp_path):
    """End to end: two training steps from starVLA's weights; the run folder (its preprocess
    pipeline carries the FAST tokenizer in physical-intelligence/fast's format) loaded back by
    load_policy infers what the trained in-memory graph infers."""
    import yaml

    from graphvla.data.api import DataBundle, collate
    from graphvla.data.normalize import Normalizer
    from graphvla.policy.loading import load_policy
    from graphvla.policy.policy import Policy
    from graphvla.runners.train import Trainer
    from train_doubles import port_stats

    meta, data = case(FIXTURES["qwen3vl"])
    spec_data = fixture_spec("qwen3vl")
    spec_data["trainer"].update(max_steps=2, batch_size=2, num_workers=0, warmup_steps=1, save_every=100)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec_data, allow_unicode=True))
    spec = load_spec(str(tmp_path / "spec.yaml"))
    ds = FixtureSamples(*case(FIXTURES["qwen3vl"]), mask=False)
    stats = port_stats(ds, ["actions"])
    trainer = Trainer.from_spec(spec, DataBundle({"action": ds}, stats), tmp_path / "run", collate=collate, progress=False,
                                normalizer=Normalizer(stats, spec.section("trainer")["normalization"]))
    state = load_state(FIXTURES["qwen3vl"])
    trainer.cg.model.load_state_dict({VLM_PREFIX[1] + k[len(VLM_PREFIX[0]):]: v for k, v in state.items()}, strict=True)
    trainer.run()
    saved = sorted(p.parent.name for p in (tmp_path / "run").rglob("processor_config.json") if (p.parent / "tokenizer.json").is_file()
                   and json.loads(p.read_text()).get("min_token") is not None)
    assert saved, "the run holds no FAST tokenizer in physical-intelligence/fast's format"
    obs = [{"images": data["images"][i].numpy(), "instruction": meta["instructions"][i]} for i in range(2)]
    loaded = load_policy(tmp_path / "run").infer_batch(obs)
    in_memory = Policy.from_compiled(trainer.cg, trainer.normalizer).infer_batch(obs)
    for x, y in zip(loaded, in_memory):
        assert x["actions"].shape == (meta["horizon"], meta["action_dim"])
        np.testing.assert_allclose(x["actions"], y["actions"], rtol=0, atol=1e-6)


# `graphvla import starvla` on a QwenFast checkpoint as starVLA's trainer writes it
# (tests/fixtures/starvla/qwenfast_ckpt, scripts/parity/starvla_fast_ckpt.py): the imported run
# serves starVLA's from_pretrained + predict_action + unnormalize_actions. The fixture keeps no
# weights file: tests/starvla_ckpt.py rebuilds it from qwenfast/state.json (sha256 checked).
CKPT = ROOT / "tests" / "fixtures" / "starvla" / "qwenfast_ckpt"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The trainer's folder, its weights file rebuilt byte for byte (sha256 checked)."""
    from starvla_ckpt import starvla_run

    return starvla_run(CKPT, tmp_path_factory.mktemp("qwenfast-ckpt") / "ckpt")


def do_import(ckpt, out, **kw):
    from graphvla.runners.importers.starvla import import_starvla

    kw.setdefault("base_vlm", FIXTURES["qwen3vl"] / "vlm")  # config.yaml names the scratch folder it was built in
    kw.setdefault("fast_tokenizer", FIXTURES["qwen3vl"] / "fast")  # QwenFast reads it from outside the checkpoint
    return import_starvla(ckpt, out, image_size=case(FIXTURES["qwen3vl"])[0]["image_size"], **kw)


def test_imported_checkpoint_serves_starvlas_actions(ckpt, tmp_path):
    from graphvla.policy.loading import load_policy

    from starvla_ckpt import expected as of

    expected_meta, expected = of(CKPT)
    assert expected_meta["framework"] == "QwenFast" and expected_meta["starvla_commit"].startswith("0ed0aad")
    run = do_import(ckpt, tmp_path / "run")
    info = json.loads((run / "imported.json").read_text())
    weights = load_file(str(ckpt / "checkpoints" / "steps_2_model.safetensors"))
    policy = load_policy(run)
    assert info["framework"] == "QwenFast" and info["graph"] == "starvla/qwen3vl-fast"
    assert info["tensors"] == len(weights) == len(policy.cg.model.state_dict())  # every tensor accounted for
    obs = [{"images": expected["images"][i].numpy(), "instruction": expected_meta["instructions"][i]}
           for i in range(len(expected_meta["instructions"]))]
    actions = np.stack([o["actions"] for o in policy.infer_batch(obs)])
    diff = np.abs(actions - expected["actions"].numpy()).max()
    print(f"imported QwenFast run vs starVLA served actions: max |diff| {diff:.2e}")
    assert actions.shape == tuple(expected["actions"].shape) and diff <= 1e-4
    assert (expected["actions"] - expected["normalized_actions"]).abs().max() > 0.1  # un-normalization is exercised


def test_import_refuses_what_qwenfast_cannot_use_naming_it(ckpt, tmp_path, monkeypatch):
    from graphvla import hub
    from graphvla.runners.importers.starvla import StarVLAImportError

    monkeypatch.setattr(hub, "cached_snapshot", lambda *a, **k: None)  # no physical-intelligence/fast in the cache
    with pytest.raises(StarVLAImportError, match="--fast-tokenizer"):
        do_import(ckpt, tmp_path / "a", fast_tokenizer=None)
    graphvla_fast = ROOT / "graphvla" / "graphs" / "tiny" / "fast_tokenizer"  # GraphVLA's own format: not starVLA's
    with pytest.raises(StarVLAImportError, match="physical-intelligence/fast's format"):
        do_import(ckpt, tmp_path / "b", fast_tokenizer=graphvla_fast)
    oft_vlm = FIXTURES["qwen3vl"].with_name("qwenoft") / "vlm"  # a tokenizer without <robot_action_i>
    with pytest.raises(StarVLAImportError, match=r"tokenizer.json.*robot_action_0"):
        do_import(ckpt, tmp_path / "c", base_vlm=oft_vlm)
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_import_serve_sessions_rtc_and_export_refusal(ckpt, tmp_path):
    """After import the run is served like a trained one (sessions, real-time chunking by blending)
    and `graphvla export` refuses it naming why (autoregressive decoding), writing nothing."""
    from click.testing import CliRunner

    from graphvla.cli import main
    from graphvla.client import PolicyClient
    from graphvla.policy.loading import load_policy
    from graphvla.protocol import RTC_KEY
    from graphvla.runners.serve import ServeOptions, ServerThread

    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["import", "starvla", str(ckpt), "-o", str(out), "--base-vlm",
                                       str(FIXTURES["qwen3vl"] / "vlm"), "--fast-tokenizer", str(FIXTURES["qwen3vl"] / "fast"),
                                       "--image-size", str(case(FIXTURES["qwen3vl"])[0]["image_size"])])
    assert result.exit_code == 0 and "QwenFast (64 tensors" in result.output, result.output
    from starvla_ckpt import expected as of

    meta, data = of(CKPT)
    obs = [{"images": data["images"][i].numpy(), "instruction": meta["instructions"][i]} for i in range(2)]
    with ServerThread(load_policy(out), ServeOptions(port=0, max_batch=2, seed=0)) as srv:
        with PolicyClient("127.0.0.1", srv.port) as client:
            client.reset(3)
            served = [client.infer(o)["actions"] for o in obs]
            old = np.asarray(data["actions"][1].numpy()[::-1].copy())
            reply = client.infer({**obs[0], RTC_KEY: {"delay": 1, "remaining_actions": old}})
    for i, a in enumerate(served):
        assert np.abs(a - data["actions"][i].numpy()).max() <= 1e-4
    assert reply["rtc"]["applied"] and reply["rtc"]["method"] == "blend" and np.allclose(reply["actions"][0], old[0], atol=1e-6)
    result = CliRunner().invoke(main, ["export", str(out), "-o", str(tmp_path / "exported")])
    assert result.exit_code != 0 and "action_vocab" in result.output, result.output
    assert not (tmp_path / "exported").exists()


def test_head_fast_takes_a_physical_intelligence_fast_folder_too():
    """GraphVLA's own head.fast (tiny/fast) builds, trains and predicts with the reference-format
    tokenizer folder: its teacher-forcing ids are that tokenizer's."""
    meta, data = case(FIXTURES["qwen3vl"])
    spec = copy.deepcopy(load_spec("tiny/fast").data)
    spec["blocks"]["head"]["with"]["tokenizer"] = str(FIXTURES["qwen3vl"] / "fast")
    spec["inputs"]["actions"].update(horizon=meta["horizon"], dim=meta["action_dim"])
    spec["inputs"]["actions_mask"]["shape"] = [meta["horizon"]]
    cg = compile_graph(spec, device="cpu")
    b = {"images": torch.rand(2, 1, 3, 128, 128), "instruction": ["a", "b"], "state": torch.zeros(2, 4),
         "actions": data["actions"], "actions_mask": torch.ones(2, meta["horizon"], dtype=torch.bool)}
    fed = cg.feed(b, "action")
    labels = fed["head_labels"]
    tok = load_fast_tokenizer(FIXTURES["qwen3vl"] / "fast").with_shape(meta["horizon"], meta["action_dim"])
    assert [row[row >= 0].tolist()[:-1] for row in labels] == tok.encode(data["actions"].numpy())  # then the end token
    assert torch.isfinite(cg.train["action"](**fed)["loss"])
    with torch.no_grad():
        out = cg.infer(**cg.feed({k: v for k, v in b.items() if k not in ("actions", "actions_mask")}))
    assert out["actions"].shape == (2, meta["horizon"], meta["action_dim"])
