"""`graphvla import starvla`: a checkpoint folder written the way starVLA's trainer writes one
(tests/fixtures/starvla/qwenoft_ckpt/ckpt: config.yaml, dataset_statistics.json,
checkpoints/steps_2_model.safetensors; made by scripts/parity/starvla_ckpt.py with starVLA's own code
at 0ed0aad; the weights file is rebuilt from qwenoft/state.json and checked against its
recorded sha256 by tests/starvla_ckpt.py) becomes a GraphVLA run whose actions - through load_policy and through the server -
equal what starVLA serves for the same observations (its from_pretrained + predict_action +
FrameworkTools.unnormalize_actions, recorded in expected.safetensors) within 1e-4. Sessions and
real-time chunking (blend: a regression head) work on the run; export refuses it as it refuses the
graph. Bad inputs are errors naming the file and the key, and leave no output folder."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from graphvla.cli import main
from graphvla.policy.loading import load_policy
from graphvla.policy.policy import Policy
from graphvla.processors.action_bounds import ActionBounds
from graphvla.processors.base import Pipeline
from graphvla.runners.importers.starvla import StarVLAImportError, import_starvla, starvla_key
from starvla_ckpt import starvla_run
from starvla_weights import load_state  # bench/ (on the path since starvla_ckpt): the fixtures' weights store

warnings.filterwarnings("ignore")
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "starvla"
CKPT_FIXTURE = FIXTURES / "qwenoft_ckpt"
VLM = FIXTURES / "qwenoft" / "vlm"  # the tiny base VLM's config, tokenizer and processor (config.yaml names a scratch folder)
WEIGHTS = "steps_2_model.safetensors"  # under checkpoints/
TOL = 1e-4


def expected():
    from starvla_ckpt import expected as of

    return of(CKPT_FIXTURE)


def observations():
    meta, data = expected()
    return [{"images": data["images"][i].numpy(), "instruction": meta["instructions"][i]}
            for i in range(len(meta["instructions"]))]


def do_import(ckpt, out, **kw):
    kw.setdefault("base_vlm", VLM)
    return import_starvla(ckpt, out, image_size=64, **kw)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The trainer's folder, its weights file rebuilt byte for byte (sha256 checked)."""
    return starvla_run(CKPT_FIXTURE, tmp_path_factory.mktemp("qwenoft-ckpt") / "ckpt")


@pytest.fixture(scope="module")
def run(ckpt, tmp_path_factory):
    return do_import(ckpt, tmp_path_factory.mktemp("import") / "run")


@pytest.fixture(scope="module")
def policy(run):
    return load_policy(run)


def test_the_fixture_is_starvlas_trainer_layout_at_the_pinned_commit(ckpt):
    meta, data = expected()
    assert meta["framework"] == "QwenOFT" and meta["starvla_commit"].startswith("0ed0aad")
    cfg = yaml.safe_load((ckpt / "config.yaml").read_text())
    assert cfg["framework"]["name"] == "QwenOFT" and cfg["trainer"]["save_format"] == "safetensors"
    assert (ckpt / "dataset_statistics.json").is_file() and (ckpt / "checkpoints" / WEIGHTS).is_file()
    # the served actions are not the normalized ones: clamped, gripper binarised, rescaled
    assert (data["actions"] - data["normalized_actions"]).abs().max() > 0.1


def test_every_tensor_is_accounted_for(ckpt, run, policy):
    info = json.loads((run / "imported.json").read_text())
    state = load_file(str(ckpt / "checkpoints" / WEIGHTS))
    assert info["tensors"] == len(state) == len(policy.cg.model.state_dict())
    assert info["framework"] == "QwenOFT" and info["graph"] == "starvla/qwen3vl-oft" and info["step"] == 2


def test_policy_actions_equal_starvlas_served_actions(policy):
    meta, data = expected()
    out = policy.infer_batch(observations())
    actions = np.stack([o["actions"] for o in out])
    diff = np.abs(actions - data["actions"].numpy()).max()
    print(f"imported run vs starVLA served actions: max |diff| {diff:.2e}")
    assert actions.shape == tuple(data["actions"].shape)
    assert diff <= TOL
    # the comparison can fail: without the action_bounds step (starVLA's clamp and gripper
    # threshold) the gripper channel is far off
    steps = list(policy.postprocess)
    assert isinstance(steps[0], ActionBounds)
    plain = Policy.from_compiled(policy.cg, preprocess=policy.preprocess, postprocess=Pipeline("postprocess", steps[1:]))
    moved = np.stack([o["actions"] for o in plain.infer_batch(observations())])
    assert np.abs(moved - data["actions"].numpy())[..., 6].max() > 100 * TOL


def test_postprocess_is_starvlas_unnormalize_actions_on_every_branch(policy):
    """The run's postprocess on chunks beyond [-1, 1], with the gripper above and below 0.5 and an
    unmasked dimension (5), equals starVLA's FrameworkTools.unnormalize_actions on them."""
    _, data = expected()
    probe = data["probe_normalized"]
    assert probe.abs().max() > 1.2 and (probe[..., 6] >= 0.5).any() and (probe[..., 6] < 0.5).any()
    ours = policy.postprocess({"actions": probe.clone()})["actions"]
    diff = (ours - data["probe_served"]).abs().max().item()
    print(f"postprocess vs starVLA unnormalize_actions: max |diff| {diff:.2e}")
    assert diff <= 1e-6


def test_cli_import_serve_sessions_and_rtc(ckpt, run, tmp_path):
    from graphvla.client import PolicyClient
    from graphvla.protocol import RTC_KEY
    from graphvla.runners.serve import ServeOptions, ServerThread

    out = tmp_path / "cli-run"
    result = CliRunner().invoke(main, ["import", "starvla", str(ckpt), "-o", str(out), "--base-vlm", str(VLM),
                                       "--image-size", "64"])
    assert result.exit_code == 0, result.output
    assert "QwenOFT" in result.output and "80 tensors" in result.output
    # the same files as the library call (the model weights byte for byte)
    step = out / "checkpoints" / "step_0000002"
    assert (step / "model.safetensors").read_bytes() == (run / "checkpoints" / "step_0000002" / "model.safetensors").read_bytes()
    _, data = expected()
    policy = load_policy(out)
    obs = observations()
    with ServerThread(policy, ServeOptions(port=0, max_batch=1, seed=0)) as srv:
        with PolicyClient("127.0.0.1", srv.port) as client:
            client.reset(3)  # a session with a seed
            served = [client.infer(o)["actions"] for o in obs]
            # real-time chunking: a regression head gets the committed prefix and a linear blend
            old = np.asarray(data["actions"][1].numpy()[::-1].copy())
            reply = client.infer({**obs[0], RTC_KEY: {"delay": 1, "remaining_actions": old}})
    for i, a in enumerate(served):
        assert np.abs(a - data["actions"][i].numpy()).max() <= TOL
    assert reply["rtc"]["applied"] and reply["rtc"]["method"] == "blend"
    assert np.allclose(reply["actions"][0], old[0], atol=1e-6)
    assert not np.allclose(reply["actions"][1], served[0][1], atol=1e-6)


def test_export_refuses_the_run_as_it_refuses_the_graph(run, tmp_path):
    result = CliRunner().invoke(main, ["export", str(run), "-o", str(tmp_path / "exported")])
    assert result.exit_code != 0 and "with.action_placeholders" in result.output, result.output
    assert not (tmp_path / "exported").exists()


# --- bad inputs: named errors, nothing written ------------------------------------------------------

def copy_ckpt(tmp_path) -> Path:
    return starvla_run(CKPT_FIXTURE, tmp_path / "starvla-run")


def edit_config(d: Path, fn):
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    fn(cfg)
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))


def edit_weights(d: Path, fn):
    path = d / "checkpoints" / WEIGHTS
    state = load_file(str(path))
    fn(state)
    save_file(state, str(path))


def edit_stats(d: Path, fn):
    path = d / "dataset_statistics.json"
    stats = json.loads(path.read_text())
    fn(stats["tiny_libero"]["action"])
    path.write_text(json.dumps(stats))


def framework(name):
    return lambda d: edit_config(d, lambda c: c["framework"].update(name=name))


BAD = {
    "not representable yet": (framework("QwenAdapter"), r"config\.yaml: framework\.name 'QwenAdapter' is a starVLA framework GraphVLA cannot represent yet"),
    "unknown framework": (framework("NoSuchVLA"), r"config\.yaml: framework\.name 'NoSuchVLA' is not a starVLA framework"),
    "missing tensor": (lambda d: edit_weights(d, lambda s: s.pop("action_model.model.fc2.bias")),
                       r"steps_2_model\.safetensors: 1 tensor\(s\) missing: action_model\.model\.fc2\.bias"),
    "extra tensor": (lambda d: edit_weights(d, lambda s: s.update({"action_model.extra.weight": torch.zeros(2)})),
                     r"steps_2_model\.safetensors: 1 tensor\(s\) the graph has no place for: action_model\.extra\.weight"),
    "wrong shape": (lambda d: edit_weights(d, lambda s: s.update({"action_model.model.fc2.bias": torch.zeros(5)})),
                    r"steps_2_model\.safetensors: 'action_model\.model\.fc2\.bias' has shape \[5\]"),
    "statistics of another action dim": (lambda d: edit_stats(d, lambda a: a.update(q01=a["q01"][:6])),
                                         r"dataset_statistics\.json: 'tiny_libero\.action\.q01' has 6 values, but "
                                         r"config\.yaml's framework\.action_model\.action_dim is 7"),
    "action dim in the config": (lambda d: edit_config(d, lambda c: c["framework"]["action_model"].update(action_dim=6)),
                                 r"'tiny_libero\.action\.\w+' has 7 values, but config\.yaml's framework\.action_model\.action_dim is 6"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_are_named_and_leave_nothing(case, tmp_path):
    change, message = BAD[case]
    d = copy_ckpt(tmp_path)
    change(d)
    out = tmp_path / "out" / "run"
    with pytest.raises(StarVLAImportError, match=message):
        do_import(d, out)
    assert not out.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # no temporary left either


def test_a_tokenizer_without_the_action_token_is_named(ckpt, tmp_path):
    vlm = tmp_path / "vlm"
    shutil.copytree(VLM, vlm)
    token = "\U0001F50D"
    tok = json.loads((vlm / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != token]
    (vlm / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((vlm / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg.get("added_tokens_decoder", {}).items() if v["content"] != token}
    (vlm / "tokenizer_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "run"
    with pytest.raises(StarVLAImportError, match=r"vlm/tokenizer\.json: starVLA QwenOFT's action token .* is not one token"):
        do_import(ckpt, out, base_vlm=vlm)
    assert not out.exists()


def test_unknown_source_and_existing_output_are_refused(ckpt, tmp_path):
    result = CliRunner().invoke(main, ["import", "openvla", str(ckpt), "-o", str(tmp_path / "x")])
    assert result.exit_code == 1 and "import source 'openvla' is not one GraphVLA imports from (starvla, lerobot)" in result.output
    (tmp_path / "taken").mkdir()
    with pytest.raises(StarVLAImportError, match="already exists"):
        do_import(ckpt, tmp_path / "taken")
    d = copy_ckpt(tmp_path)  # config.yaml's base_vlm: a folder this machine does not have
    edit_config(d, lambda c: c["framework"]["qwenvl"].update(base_vlm=str(tmp_path / "elsewhere" / "Qwen3-VL")))
    result = CliRunner().invoke(main, ["import", "starvla", str(d), "-o", str(tmp_path / "y")])
    assert result.exit_code == 1 and "framework.qwenvl.base_vlm" in result.output and "--base-vlm" in result.output
    assert not (tmp_path / "y").exists()


def test_the_default_pt_format_and_several_datasets(tmp_path):
    """starVLA's default save_format `pt` (checkpoints/steps_N_pytorch_model.pt) imports to the same
    weights; statistics of several datasets need --dataset-key, and an unknown one is named."""
    d = copy_ckpt(tmp_path)
    path = d / "checkpoints" / WEIGHTS
    torch.save(load_file(str(path)), d / "checkpoints" / "steps_2_pytorch_model.pt")
    path.unlink()
    stats_file = d / "dataset_statistics.json"
    stats = json.loads(stats_file.read_text())
    stats["other_robot"] = stats["tiny_libero"]
    stats_file.write_text(json.dumps(stats))
    with pytest.raises(StarVLAImportError, match=r"dataset_statistics\.json: statistics of 2 datasets .*--dataset-key"):
        do_import(d, tmp_path / "a")
    with pytest.raises(StarVLAImportError, match=r"dataset_statistics\.json: no dataset 'nope'"):
        do_import(d, tmp_path / "b", dataset_key="nope")
    run = do_import(d, tmp_path / "c", dataset_key="tiny_libero")
    assert json.loads((run / "imported.json").read_text())["weights"].endswith("steps_2_pytorch_model.pt")
    ours = load_file(str(run / "checkpoints" / "step_0000002" / "model.safetensors"))
    theirs = load_state(FIXTURES / "qwenoft")  # the weights file's tensors
    # the run stores a tied tensor (the LM head sharing the token embeddings) once, as training does
    assert len(theirs) - len(ours) == 1 and all(torch.equal(ours[k], theirs[starvla_key(k)]) for k in ours)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_graphvla_eval_runs_an_imported_run(tmp_path):
    """`graphvla eval` (GraphVLA's Meta-World suite, one short episode) on an imported run: the
    fixture's checkpoint cut to Meta-World's 4-d actions (the head's last layer and the statistics,
    action_dim 4 in config.yaml: a valid starVLA checkpoint; no gripper channel 6) and one view."""
    from conftest import require_metaworld

    require_metaworld()
    d = copy_ckpt(tmp_path)
    edit_config(d, lambda c: c["framework"]["action_model"].update(action_dim=4))
    edit_weights(d, lambda s: s.update({k: s[k][:4].contiguous() for k in ("action_model.model.fc2.weight",
                                                                          "action_model.model.fc2.bias")}))
    edit_stats(d, lambda a: a.update({k: v[:4] for k, v in a.items()}))
    run = import_starvla(d, tmp_path / "run", base_vlm=VLM, views=1, image_size=64)
    assert not any(isinstance(s, ActionBounds) and s.binary for s in load_policy(run).postprocess)
    result = CliRunner().invoke(main, ["eval", str(run), "--suite", "metaworld", "--tasks", "reach-v3", "--episodes", "1",
                                       "--max-steps", "8", "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["tasks"]["reach-v3"]["episodes"] == 1
    episode = results["episodes"]["reach-v3"][0]
    assert episode["steps"] == 8 and episode["queries"] == 2  # chunks of 4 executed 4 at a time, served by the run
