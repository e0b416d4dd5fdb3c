"""load_policy round trip and the Policy API the server uses: metadata, observation checks,
image layouts, un-normalized outputs, refusal of inconsistent checkpoints."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import graphvla
from graphvla.compiler.compile import compile_graph
from graphvla.compiler.lower import graph_argument
from graphvla.data.api import DataBundle, collate
from graphvla.data.normalize import Normalizer
from graphvla.policy.loading import load_policy
from graphvla.policy.policy import Policy
from graphvla.runners.train import Trainer
from graphvla.spec.loader import load_spec
from train_doubles import TINY_SPEC, SyntheticActions, port_stats

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    (tmp / "spec.yaml").write_text(TINY_SPEC)
    spec = load_spec(str(tmp / "spec.yaml"), ["trainer.max_steps=4", "trainer.save_every=2"])
    ds = SyntheticActions(32)
    stats = port_stats(ds, ["state", "actions"])
    t = Trainer.from_spec(spec, DataBundle({"action": ds}, stats), tmp / "run",
                          normalizer=Normalizer(stats, spec.section("trainer")["normalization"]), collate=collate, progress=False)
    t.run()
    return t, tmp / "run", ds, Normalizer


def observation(ds, i):
    img = (ds.images[i].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # [V, H, W, C]
    return {"images": img[0], "instruction": ds[i]["instruction"], "state": ds.state[i].numpy()}


def test_round_trip_predicts_like_the_in_memory_model(trained):
    t, run, ds, _ = trained
    obs = [observation(ds, i) for i in range(3)]
    loaded = graphvla.load_policy(run)
    in_memory = Policy.from_compiled(t.cg, t.normalizer)
    a = loaded.infer_batch(obs)
    b = in_memory.infer_batch(obs)
    for x, y in zip(a, b):
        assert x["actions"].dtype == np.float32 and x["actions"].shape == (4, 3)
        np.testing.assert_allclose(x["actions"], y["actions"], rtol=0, atol=1e-6)
    # independent of Policy: normalize by hand, run the inference graph, un-normalize by hand
    stats = port_stats(ds, ["state", "actions"])
    s = torch.as_tensor(ds.state[:3])
    mean, std = torch.tensor(stats["state"]["mean"]), torch.tensor(stats["state"]["std"])
    images = torch.stack([torch.from_numpy(o["images"]).permute(2, 0, 1).float() / 255 for o in obs])[:, None]
    # the text encoder's processor step (no statistics: no normalization) makes its token input
    made = t.cg.preprocess.with_statistics(None)({"instruction": [o["instruction"] for o in obs]})
    takes = {n.target for n in t.cg.infer.graph.nodes if n.op == "placeholder"}
    text = {graph_argument(k): v for k, v in made.items() if graph_argument(k) in takes}
    t.cg.model.eval()
    with torch.no_grad():
        out = t.cg.infer(images=images, state=(s - mean) / std, **text)["actions"]
    am, asd = torch.tensor(stats["actions"]["mean"]), torch.tensor(stats["actions"]["std"])
    expected = (out * asd + am).numpy()
    for i in range(3):
        np.testing.assert_allclose(a[i]["actions"], expected[i], rtol=1e-5, atol=1e-5)
    single = loaded.infer(obs[1])
    np.testing.assert_allclose(single["actions"], a[1]["actions"], atol=1e-5)


def test_checkpoint_dir_and_metadata(trained):
    t, run, ds, _ = trained
    policy = load_policy(run / "checkpoints" / "step_0000002")
    meta = policy.metadata
    assert meta["name"] == "tiny-train" and meta["fingerprint"] == t.cg.fingerprint
    assert (meta["action_horizon"], meta["action_dim"]) == (4, 3)
    assert set(meta["inputs"]) == {"images", "instruction", "state"}  # no train-only targets
    assert meta["inputs"]["state"]["dim"] == 4 and meta["outputs"] == ["actions"]
    assert meta["normalization"] == {"state": "mean_std", "actions": "mean_std"}
    assert not policy.cg.model.training
    json.dumps(meta)
    # weights differ from the final step's, so this is really the step-2 checkpoint
    final = load_policy(run)
    obs = observation(ds, 0)
    assert not np.allclose(policy.infer(obs)["actions"], final.infer(obs)["actions"])


def test_image_layouts_agree(trained):
    _, run, ds, _ = trained
    policy = load_policy(run)
    obs = observation(ds, 2)
    as_float_chw = dict(obs, images=obs["images"].transpose(2, 0, 1).astype(np.float32) / 255)
    as_views = dict(obs, images=obs["images"][None])
    base = policy.infer(obs)["actions"]
    np.testing.assert_allclose(policy.infer(as_float_chw)["actions"], base, atol=1e-6)
    np.testing.assert_allclose(policy.infer(as_views)["actions"], base, atol=1e-6)


@pytest.mark.parametrize("change, words", [
    (lambda o: o.pop("state"), ["'state'", "[4]"]),
    (lambda o: o.__setitem__("state", np.zeros(5, np.float32)), ["'state'", "expected shape [4]", "[5]"]),
    (lambda o: o.__setitem__("images", np.zeros((16, 16), np.uint8)), ["'images'", "[1, 16, 16, 3]"]),
    (lambda o: o.__setitem__("images", np.zeros((1, 3, 16, 16), np.int32)), ["'images'", "int32"]),
    (lambda o: o.__setitem__("instruction", 3), ["'instruction'", "string"]),
    (lambda o: o.__setitem__("state", np.array(["a"] * 4)), ["'state'", "dtype"]),
])
def test_bad_observations_name_key_and_expectation(trained, change, words):
    _, run, ds, _ = trained
    policy = load_policy(run)
    obs = observation(ds, 0)
    change(obs)
    with pytest.raises(ValueError) as err:
        policy.infer(obs)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_refuses_inconsistent_checkpoints(trained, tmp_path):
    import shutil

    _, run, _, _ = trained
    src = run / "checkpoints" / "step_0000004"
    edited = tmp_path / "edited"
    shutil.copytree(src, edited)
    (edited / "spec.yaml").write_text((edited / "spec.yaml").read_text().replace("hidden: 32", "hidden: 64"))
    with pytest.raises(ValueError, match="fingerprint"):
        load_policy(edited)
    bad_norm = tmp_path / "bad_norm"
    shutil.copytree(src, bad_norm)
    stats_file = bad_norm / "preprocess" / "0-normalize" / "statistics.json"  # the saved pipeline's statistics
    stats = json.loads(stats_file.read_text())
    stats["gripper"] = stats["state"]
    stats_file.write_text(json.dumps(stats))
    with pytest.raises(ValueError, match="normalization does not match.*gripper"):
        load_policy(bad_norm)
    # a run from before pipelines were saved (normalization.json only) is checked the same way
    for name in ("preprocess.json", "postprocess.json"):
        (bad_norm / name).unlink()
    norm = json.loads((bad_norm / "normalization.json").read_text())
    norm["modes"]["gripper"] = "mean_std"
    norm["stats"]["gripper"] = norm["stats"]["state"]
    (bad_norm / "normalization.json").write_text(json.dumps(norm))
    with pytest.raises(ValueError, match="normalization does not match.*gripper"):
        load_policy(bad_norm)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_policy(tmp_path)


def test_reset_clears_inference_caches(trained):
    """With the vision encoder cached (`infer: {every: 4}`), a second observation reuses the first
    one's image features until reset() starts a new episode."""
    _, _, ds, _ = trained
    cached = Policy.from_compiled(compile_graph(TINY_SPEC, ["blocks.vision.infer={every: 4}"], device="cpu"))
    fresh = Policy.from_compiled(compile_graph(TINY_SPEC, device="cpu"))
    fresh.cg.model.load_state_dict(cached.cg.model.state_dict())
    first, second = observation(ds, 1), observation(ds, 2)
    cached.infer(first)
    stale = cached.infer(second)["actions"]  # the image features are still those of `first`
    expected = fresh.infer(second)["actions"]
    assert not np.allclose(stale, expected, atol=1e-6)
    cached.reset()
    np.testing.assert_allclose(cached.infer(second)["actions"], expected, rtol=0, atol=1e-6)
    # the cache is the policy's: the compiled graph only marks the block, and a second policy over
    # the same compiled graph (same blocks, no weight copied) starts with caches of its own
    assert cached.cg.every_k == {"vision": ("vision", 4, "forward")} and cached.has_caches and not fresh.has_caches
    cached.infer(first)
    other = Policy.from_compiled(cached.cg)
    np.testing.assert_allclose(other.infer(second)["actions"], expected, rtol=0, atol=1e-6)
    assert other.cg.model["vision"] is cached.cg.model["vision"]


def test_read_only_observation_arrays_are_accepted_without_warnings(trained):
    import warnings

    _, run, ds, _ = trained
    policy = load_policy(run)
    obs = observation(ds, 1)
    expected = policy.infer(obs)["actions"]
    frozen = dict(obs)
    for k in ("images", "state"):  # like frames decoded from msgpack: read-only views
        frozen[k] = obs[k].copy()
        frozen[k].setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(policy.infer(frozen)["actions"], expected, atol=1e-6)
        as_float = (frozen["images"].transpose(2, 0, 1).astype(np.float32) / 255)
        as_float.setflags(write=False)
        np.testing.assert_allclose(policy.infer(dict(frozen, images=as_float))["actions"], expected, atol=1e-6)


STATS = {"state": {"mean": [0.1, -0.2, 0.3, 0.5], "std": [0.5, 2.0, 1.5, 0.25]},
         "actions": {"mean": [0.2, -0.1, 0.0, 0.4], "std": [1.5, 0.5, 2.0, 1.0]}}
SMALL_MT10 = ["blocks.vision.with={channels: [8, 8], keypoints: 8}", "blocks.fuse.with={width: 32}"]


@pytest.mark.parametrize("graph, overrides", [
    ("tiny/querytf", []),  # tied LM head, rotary tables (non-persistent buffers)
    ("tiny/querytf", ["blocks.vlm.with.dtype=bfloat16"]),
    ("tiny/fast-lm", []),  # action tokens added to the VLM's vocabulary
    ("tiny/flowdit", []),  # a flow head: the session's noise
    ("metaworld/mt10", SMALL_MT10),  # the keypoint encoder's grid (a non-persistent buffer)
], ids=["tiny-querytf", "tiny-querytf-bf16", "tiny-fast-lm", "tiny-flowdit", "mt10"])
def test_a_run_in_the_earlier_format_loads_on_meta_with_the_in_memory_actions(tmp_path, graph, overrides):
    """A checkpoint as runs were written before pipelines and assets were saved (model.safetensors,
    spec.yaml, graph.json, normalization.json) loads: the blocks built with parameters on meta get
    every tensor from the checkpoint and their buffers from their constructors, bit-identical to
    the model built for real in memory."""
    from safetensors.torch import save_model

    from graphvla.policy import checkpoint as C

    torch.manual_seed(0)
    cg = compile_graph(load_spec(graph, overrides), device="cpu")
    modes = {"state": "mean_std", "actions": "mean_std"}

    def write(d):
        save_model(cg.model, str(d / "model.safetensors"))
        (d / "spec.yaml").write_text(cg.spec.to_yaml())
        C.write_json(d / "graph.json", {"name": cg.name, "fingerprint": cg.fingerprint, "spec_file": str(cg.spec.file)})
        C.write_json(d / "normalization.json", {"stats": STATS, "modes": modes})

    C.write_checkpoint(tmp_path / "run", 1, write)
    loaded = load_policy(tmp_path / "run")
    in_memory = Policy.from_compiled(cg, Normalizer(STATS, modes))
    state = loaded.cg.model.state_dict()
    assert not [k for k, t in state.items() if t.is_meta]
    for name, t in cg.model.state_dict().items():
        assert state[name].dtype == t.dtype and torch.equal(state[name], t), name
    buffers = dict(loaded.cg.model.named_buffers(remove_duplicate=False))
    for name, b in cg.model.named_buffers(remove_duplicate=False):  # non-persistent ones too
        assert torch.equal(buffers[name], b), name
    rng = np.random.default_rng(0)
    size = loaded.inputs["images"]["size"]
    obs = {"images": rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8), "instruction": "reach the goal",
           "state": rng.standard_normal(4).astype(np.float32)}
    np.testing.assert_array_equal(loaded.infer(obs, loaded.new_session(3))["actions"],
                                  in_memory.infer(obs, in_memory.new_session(3))["actions"])


def test_parameters_on_meta_moves_only_this_threads_parameters_and_keeps_buffers():
    """load_policy builds under parameters_on_meta: parameters land on meta, buffers are computed for
    real, and a module another thread builds meanwhile (a trainer, a server) is untouched."""
    import threading

    from graphvla.blocks.base import parameters_are_placeholders, parameters_on_meta

    class WithTable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.register_buffer("table", torch.arange(4.0) * 2, persistent=False)

    inside, done, seen = threading.Event(), threading.Event(), {}

    def other_thread():
        inside.wait(10)
        seen["other"] = WithTable().lin.weight.is_meta
        done.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    original = torch.nn.Module.register_parameter
    with parameters_on_meta():
        built = WithTable()
        assert parameters_are_placeholders()
        inside.set()
        assert done.wait(10)
    thread.join()
    assert built.lin.weight.is_meta and built.lin.bias.is_meta and not built.lin.weight.requires_grad is False
    torch.testing.assert_close(built.table, torch.tensor([0.0, 2.0, 4.0, 6.0]))
    assert seen["other"] is False and not parameters_are_placeholders()
    assert torch.nn.Module.register_parameter is original and not WithTable().lin.weight.is_meta
