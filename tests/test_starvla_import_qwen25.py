"""`graphvla import starvla` on Qwen2.5-VL checkpoints of QwenGR00T and QwenFast, as starVLA's trainer
writes them (tests/fixtures/starvla/qwengr00t_qwen25_ckpt, written by
scripts/parity/starvla_gr00t.py --vlm qwen25 --ckpt; qwenfast_qwen25_ckpt, by
scripts/parity/starvla_fast_ckpt.py --vlm qwen25; starVLA's own code at 0ed0aad through its Qwen2.5-VL
interface, float32 on the CPU). Neither fixture stores its weights file: it is the Qwen2.5-VL parity
fixture's state (state.json, in the weights store) saved again, rebuilt here and checked against the recorded sha256. The
imported runs (graphs starvla/qwen25vl-gr00t and starvla/qwen25vl-fast, picked from the base VLM's
model_type) serve what starVLA's from_pretrained + predict_action + FrameworkTools.unnormalize_actions
served for the same observations (and, for GR00T, the same seed) within 1e-4, and every tensor of the
checkpoint is in the run, unchanged. A Qwen2.5-VL checkpoint differs from a Qwen3-VL one of the same
framework only in the VLM's tensors and config.yaml's base_vlm: that is asserted too."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from graphvla.cli import main
from graphvla.policy.loading import load_policy
from graphvla.policy.session import Session
from graphvla.runners.importers.starvla import graph_key, import_starvla
from starvla_ckpt import starvla_run
from starvla_weights import load_state  # bench/ (on the path since starvla_ckpt): the fixtures' weights store

warnings.filterwarnings("ignore")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "starvla"
GR00T, GR00T_CKPT = FIXTURES / "qwengr00t_qwen25", FIXTURES / "qwengr00t_qwen25_ckpt"
FAST, FAST_CKPT = FIXTURES / "qwenfast_qwen25", FIXTURES / "qwenfast_qwen25_ckpt"
WEIGHTS = "steps_2_model.safetensors"
VLM_PREFIX = "qwen_vl_interface."  # starVLA's VLM wrapper; every other tensor is the action model's
TOL = 1e-4


def expected(fixture: Path):
    from starvla_ckpt import expected as of

    return of(fixture)


def image_size(parity_fixture: Path) -> int:
    return json.loads((parity_fixture / "case.json").read_text())["image_size"]


def gr00t_folder(dst: Path) -> Path:
    """The QwenGR00T trainer's folder, its weights file rebuilt from qwengr00t_qwen25/state.json
    (the file starVLA loaded, byte for byte: sha256 checked by starvla_run)."""
    return starvla_run(GR00T_CKPT, dst)


@pytest.fixture(scope="module")
def gr00t(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gr00t-qwen25")
    d = gr00t_folder(tmp / "ckpt")
    return d, import_starvla(d, tmp / "run", base_vlm=GR00T / "vlm", image_size=image_size(GR00T))


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fast-qwen25")
    d = starvla_run(FAST_CKPT, tmp / "ckpt")
    return d, import_starvla(d, tmp / "run", base_vlm=FAST / "vlm", fast_tokenizer=FAST / "fast",
                             image_size=image_size(FAST))


def test_the_fixtures_are_starvlas_qwen25_checkpoints_at_the_pinned_commit():
    for ckpt, parity, framework in ((GR00T_CKPT, GR00T, "QwenGR00T"), (FAST_CKPT, FAST, "QwenFast")):
        meta, _ = expected(ckpt)
        assert meta["framework"] == framework and meta["starvla_commit"].startswith("0ed0aad")
        cfg = yaml.safe_load((ckpt / "ckpt" / "config.yaml").read_text())
        assert cfg["framework"]["name"] == framework and cfg["trainer"]["save_format"] == "safetensors"
        # starVLA picks its Qwen2.5-VL interface by the base VLM's folder name
        assert "Qwen2.5-VL" in cfg["framework"]["qwenvl"]["base_vlm"]
        case = json.loads((parity / "case.json").read_text())
        assert case["vlm_interface"].startswith("starVLA.model.modules.vlm.QWen2_5")  # the module, or module.class
        assert json.loads((parity / "vlm" / "config.json").read_text())["model_type"] == "qwen2_5_vl"


@pytest.mark.parametrize("framework", ["QwenGR00T", "QwenFast"])
def test_a_qwen25_checkpoint_is_the_qwen3_one_apart_from_the_vlm(framework):
    """Same action-model tensors (names and shapes), same config.yaml apart from the base VLM (and the
    folder it was written to), same statistics: only the VLM's tensors differ."""
    q3, q25 = {"QwenGR00T": ("qwengr00t", "qwengr00t_qwen25"), "QwenFast": ("qwenfast", "qwenfast_qwen25")}[framework]
    states = [load_state(FIXTURES / name) for name in (q3, q25)]
    heads = [{k: tuple(v.shape) for k, v in s.items() if not k.startswith(VLM_PREFIX)} for s in states]
    assert heads[0] == heads[1]
    assert {k for s in states for k in s if not k.startswith(VLM_PREFIX)} == set(heads[0])
    assert {k for k in states[0] if k.startswith(VLM_PREFIX)} != {k for k in states[1] if k.startswith(VLM_PREFIX)}
    configs = [yaml.safe_load((FIXTURES / f"{name}_ckpt" / "ckpt" / "config.yaml").read_text()) for name in (q3, q25)]
    for cfg in configs:
        cfg.pop("output_dir")
        cfg["framework"]["qwenvl"].pop("base_vlm")
    assert configs[0] == configs[1]
    stats = [(FIXTURES / f"{name}_ckpt" / "ckpt" / "dataset_statistics.json").read_text() for name in (q3, q25)]
    assert stats[0] == stats[1]


def assert_every_tensor_in_the_run(ckpt: Path, run: Path, policy, framework: str):
    """Every checkpoint tensor has one place in the graph, holds the same values there, and the graph
    has nothing else (a tied LM head counted once in the run, as training saves it)."""
    info = json.loads((run / "imported.json").read_text())
    weights = load_file(str(ckpt / "checkpoints" / WEIGHTS))
    graph_state = policy.cg.model.state_dict()
    assert info["tensors"] == len(weights) == len(graph_state)
    mapped = {graph_key(k, framework): v for k, v in weights.items()}
    assert None not in mapped and set(mapped) == set(graph_state)
    assert all(torch.equal(graph_state[k], v) for k, v in mapped.items())


def gr00t_observation(i, meta, data):
    obs = {"images": data["images"][i].numpy(), "instruction": meta["instructions"][i]}
    if i in meta["state_on"]:
        obs["state"] = data["state"][0].numpy()
    return obs


def test_gr00t_qwen25_import_serves_starvlas_actions(gr00t):
    ckpt, run = gr00t
    meta, data = expected(GR00T_CKPT)
    info = json.loads((run / "imported.json").read_text())
    assert info["framework"] == "QwenGR00T" and info["graph"] == "starvla/qwen25vl-gr00t" and info["step"] == 2
    policy = load_policy(run)
    assert_every_tensor_in_the_run(ckpt, run, policy, "QwenGR00T")
    for i, seed in enumerate(meta["seeds"]):  # the second observation carries a state
        assert torch.equal(policy.draw_noise(1, [Session(seed).generator]), data["noise"][i:i + 1])
        actions = policy.infer_batch([gr00t_observation(i, meta, data)], sessions=[Session(seed)])[0]["actions"]
        diff = np.abs(actions - data["actions"][i].numpy()).max()
        print(f"QwenGR00T on Qwen2.5-VL, observation {i}: imported run vs starVLA served actions max |diff| {diff:.2e}")
        assert actions.shape == tuple(data["actions"][i].shape) and diff <= TOL
    # the comparison can fail: another seed's noise gives other actions
    other = policy.infer_batch([gr00t_observation(0, meta, data)], sessions=[Session(meta["seeds"][0] + 1)])[0]["actions"]
    assert np.abs(other - data["actions"][0].numpy()).max() > 1e-2
    assert (data["actions"] - data["normalized_actions"]).abs().max() > 0.1  # un-normalization is exercised


def test_fast_qwen25_import_serves_starvlas_actions(fast):
    ckpt, run = fast
    meta, data = expected(FAST_CKPT)
    info = json.loads((run / "imported.json").read_text())
    assert info["framework"] == "QwenFast" and info["graph"] == "starvla/qwen25vl-fast" and info["step"] == 2
    policy = load_policy(run)
    assert_every_tensor_in_the_run(ckpt, run, policy, "QwenFast")
    obs = [{"images": data["images"][i].numpy(), "instruction": meta["instructions"][i]}
           for i in range(len(meta["instructions"]))]
    actions = np.stack([o["actions"] for o in policy.infer_batch(obs)])
    diff = np.abs(actions - data["actions"].numpy()).max()
    print(f"QwenFast on Qwen2.5-VL: imported run vs starVLA served actions max |diff| {diff:.2e}")
    assert actions.shape == tuple(data["actions"].shape) and diff <= TOL
    assert (data["actions"] - data["normalized_actions"]).abs().max() > 0.1  # un-normalization is exercised
    # the comparison can fail: the two observations' served chunks differ from each other
    assert np.abs(data["actions"][0] - data["actions"][1]).max() > 0.1


def test_fast_qwen25_cli_import_and_server(tmp_path):
    """The command line picks the Qwen2.5-VL graph from the base VLM and the served actions are starVLA's."""
    from graphvla.client import PolicyClient
    from graphvla.runners.serve import ServeOptions, ServerThread

    ckpt = starvla_run(FAST_CKPT, tmp_path / "ckpt")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["import", "starvla", str(ckpt), "-o", str(out), "--base-vlm", str(FAST / "vlm"),
                                       "--fast-tokenizer", str(FAST / "fast"), "--image-size", str(image_size(FAST))])
    assert result.exit_code == 0, result.output
    assert "QwenFast" in result.output and "starvla/qwen25vl-fast" in result.output
    meta, data = expected(FAST_CKPT)
    with ServerThread(load_policy(out), ServeOptions(port=0, max_batch=1, seed=0)) as srv:
        with PolicyClient("127.0.0.1", srv.port) as client:
            client.reset(3)
            served = [client.infer({"images": data["images"][i].numpy(), "instruction": meta["instructions"][i]})["actions"]
                      for i in range(len(meta["instructions"]))]
    for i, a in enumerate(served):
        assert np.abs(a - data["actions"][i].numpy()).max() <= TOL
