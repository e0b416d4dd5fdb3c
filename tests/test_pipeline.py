"""The processing pipelines (graphvla/processors): normalization as steps whose numerics are the
statistics' arithmetic (checked against values computed here by hand), which pickle, save and
reload bit-identically, which the compiler emits in graph order and `graphvla compile` prints,
which every checkpoint saves (a run from before that is migrated on read), and whose failures
name the block, the port and the sample."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from graphvla.cli import main
from graphvla.compiler.compile import compile_graph
from graphvla.data.normalize import Normalizer
from graphvla.policy.checkpoint import read_pipelines, write_json, write_pipelines
from graphvla.policy.loading import load_policy
from graphvla.policy.policy import Policy
from graphvla.processors.base import Pipeline, ProcessorStep, StepError
from graphvla.processors.normalize import Normalize, Unnormalize

torch.set_num_threads(1)

# two ports; the state's second dimension is constant (std 0, min == max): only shifted, never divided
STATS = {
    "state": {"mean": [1.0, 2.0, -3.0], "std": [2.0, 0.0, 0.5], "min": [-3.0, 2.0, -4.0], "max": [5.0, 2.0, -1.0],
              "q01": [-2.0, 2.0, -3.5], "q99": [4.0, 2.0, -2.0]},
    "actions": {"mean": [0.5, -0.5], "std": [0.25, 4.0], "min": [-1.0, -9.0], "max": [2.0, 7.0],
                "q01": [-0.5, -8.0], "q99": [1.5, 6.0]},
}


def by_hand(port, mode):
    """(shift, scale) as float64 from the statistics above, written out per mode."""
    s = {k: np.array(v) for k, v in STATS[port].items()}
    if mode == "mean_std":
        shift, spread = s["mean"], s["std"]
    elif mode == "min_max":
        shift, spread = (s["min"] + s["max"]) / 2, (s["max"] - s["min"]) / 2
    elif mode == "q01_q99":
        shift, spread = (s["q01"] + s["q99"]) / 2, (s["q99"] - s["q01"]) / 2
    else:
        shift, spread = np.zeros(len(s["mean"])), np.ones(len(s["mean"]))
    return shift, np.where(spread == 0, 1.0, spread)


@pytest.mark.parametrize("mode", ["mean_std", "min_max", "q01_q99", "identity"])
def test_normalize_is_the_statistics_arithmetic(mode):
    step = Normalize(modes={"state": mode}, stats=STATS)
    g = torch.Generator().manual_seed(0)
    state = torch.randn(5, 3, generator=g) * 3
    out = step({"state": state, "instruction": ["a"] * 5})
    shift, scale = by_hand("state", mode)
    expected = (state - torch.tensor(shift, dtype=torch.float32)) / torch.tensor(scale, dtype=torch.float32)
    assert torch.equal(out["state"], expected)
    assert out["instruction"] == ["a"] * 5 and "actions" not in out  # other keys pass; absent ports stay absent
    assert mode != "mean_std" or torch.equal(out["state"][:, 1], state[:, 1] - 2.0)  # constant dim: only shifted
    # numpy (remaining actions, a hold value): float64 arithmetic, float32 result
    raw = state.numpy()
    np.testing.assert_array_equal(step.normalize_value("state", raw), ((raw - shift) / scale).astype(np.float32))
    np.testing.assert_array_equal(step.unnormalize_value("state", raw.astype(np.float64)), raw * scale + shift)


def test_masks_zero_padded_steps_and_dimensions():
    step = Normalize(stats=STATS)
    actions = torch.full((2, 3, 2), 7.0)
    step_mask = torch.tensor([[True, True, False], [True, False, False]])
    dim_mask = torch.tensor([[True, False], [True, True]])
    out = step({"actions": actions, "actions_mask": step_mask, "actions_dim_mask": dim_mask})["actions"]
    normalized = torch.tensor([(7.0 - 0.5) / 0.25, (7.0 + 0.5) / 4.0])
    keep = step_mask[:, :, None] & dim_mask[:, None, :]
    assert torch.equal(out, torch.where(keep, normalized.expand(2, 3, 2), torch.zeros(())))


def test_unnormalize_takes_the_predicted_inputs_statistics():
    unbound = Unnormalize({"actions": {"kind": "action", "input": True}, "chunk": {"kind": "action", "input": False},
                           "score": {"kind": "hidden", "input": False}}, {"state": "state", "actions": "action"},
                          {"actions": "min_max"})
    step = unbound.with_statistics(STATS)
    assert step.port_of("actions") == step.port_of("chunk") == "actions" and step.port_of("score") is None
    x = torch.tensor([[[0.5, -1.0]]], dtype=torch.float64)
    shift, scale = by_hand("actions", "min_max")
    out = step({"actions": x, "chunk": x.float(), "score": x})
    f32 = x.float()
    assert torch.equal(out["chunk"], f32 * torch.tensor(scale, dtype=torch.float32) + torch.tensor(shift, dtype=torch.float32))
    assert out["actions"].dtype == torch.float32 and out["score"] is x  # outputs without statistics pass as they are
    # real-time chunking's remaining actions go the other way
    remaining = np.array([[1.0, 3.0]], dtype=np.float32)
    np.testing.assert_array_equal(step.normalize_array("actions", remaining),
                                  ((remaining - shift) / scale).astype(np.float32))
    assert unbound.with_statistics(None) is None
    again = step.with_statistics(STATS, {"actions": "mean_std"})  # bound again: same ports, new mode
    assert again.port_of("chunk") == "actions" and again.modes == {"actions": "mean_std"}


def test_the_normalizer_is_the_steps_math():
    norm = Normalizer(STATS, {"actions": "q01_q99"})
    step = Normalize(modes={"actions": "q01_q99"}, stats=STATS)
    batch = {"state": torch.randn(4, 3), "actions": torch.randn(4, 5, 2)}
    for port, x in norm.normalize(batch).items():
        assert torch.equal(x, step(batch)[port])
    assert norm.to_dict() == {"stats": STATS, "modes": {"state": "mean_std", "actions": "q01_q99"}}
    with pytest.raises(ValueError, match="trainer.normalization names 'gripper'"):
        Normalizer(STATS, {"gripper": "min_max"})
    with pytest.raises(ValueError, match="'minmax' for 'state' is not one of"):
        Normalizer(STATS, {"state": "minmax"})


def test_steps_pickle_save_and_reload_bit_identically(tmp_path):
    pre = Pipeline("preprocess", [Normalize(modes={"state": "min_max"}, stats=STATS)])
    post = Pipeline("postprocess", [Unnormalize({"actions": {"kind": "action", "input": True}},
                                                {"state": "state", "actions": "action"}).with_statistics(STATS)])
    for step in (*pre, *post):
        assert pickle.loads(pickle.dumps(step)) == step
    pre.save(tmp_path)
    post.save(tmp_path)
    assert json.loads((tmp_path / "preprocess/0-normalize/statistics.json").read_text()) == STATS
    pre2, post2 = Pipeline.load(tmp_path, "preprocess"), Pipeline.load(tmp_path, "postprocess")
    assert pre2 == pre and post2 == post and pre2.describe() == pre.describe()
    g = torch.Generator().manual_seed(1)
    batch = {"state": torch.randn(3, 3, generator=g) * 1e3, "actions": torch.randn(3, 4, 2, generator=g)}
    for a, b in ((pre(batch), pre2(batch)), (post(batch), post2(batch))):
        assert all(torch.equal(a[k], b[k]) for k in batch)
    assert pre != Pipeline("preprocess", [Normalize(stats=STATS)])  # the mode is part of the step


def test_an_unbound_step_and_a_failing_step_say_where(tmp_path):
    cg = compile_graph("tiny/mlp")
    with pytest.raises(StepError, match=r"port 'state'.*no statistics bound"):
        cg.preprocess({"state": torch.zeros(2, 8)})
    bound = Normalize(stats=STATS)
    with pytest.raises(StepError, match=r"normalize.*port 'state', sample 0: width 4, but its statistics have width 3"):
        bound({"state": torch.zeros(2, 4)})

    class Fails(ProcessorStep):
        kind, block, reads, writes = "fails-on-negatives", "vision", ("state",), ("state",)

        def __call__(self, batch):
            if (batch["state"] < 0).any():
                raise RuntimeError("negative value")
            return batch

    pipeline = Pipeline("preprocess", [bound, Fails()])
    state = torch.ones(4, 3) * 10
    state[2, 0] = -100.0
    with pytest.raises(StepError, match=r"vision \(fails-on-negatives step\): port state, sample 2: RuntimeError: negative value"):
        pipeline({"state": state})


def test_the_compiler_emits_pipelines_in_graph_order_and_compile_prints_them():
    cg = compile_graph("tiny/fast")
    assert isinstance(cg.preprocess.steps[0], Normalize)
    assert cg.preprocess.steps[0].ports == ("state", "actions")
    assert cg.preprocess.steps[0].modes == {"actions": "q01_q99"}  # trainer.normalization of tiny/fast
    order = cg.block_ids()
    blocks = [s.block for s in cg.preprocess.steps[1:]]
    assert blocks == sorted(blocks, key=order.index)
    bound = cg.postprocess.with_statistics({p: {k: v[:1] * d for k, v in STATS["state"].items()}
                                            for p, d in (("state", 8), ("actions", 4))})
    assert bound.steps[0].port_of("actions") == "actions" and bound.steps[0].modes == {"actions": "q01_q99"}
    out = CliRunner().invoke(main, ["compile", "tiny/mlp"])
    assert out.exit_code == 0, out.output
    text = out.output[out.output.index("\npreprocess\n"):]
    assert "0. normalize  state (mean_std), actions (mean_std)" in text
    assert "postprocess\n  0. unnormalize  actions (action)" in text


def _run_folder(tmp_path, name, cg, stats, pipelines: bool):
    """A checkpoint folder as training writes it (with or without the pipelines)."""
    from safetensors.torch import save_model

    d = tmp_path / name
    d.mkdir()
    save_model(cg.model, str(d / "model.safetensors"))
    (d / "spec.yaml").write_text(cg.spec.to_yaml())
    write_json(d / "graph.json", {"name": cg.name, "fingerprint": cg.fingerprint, "spec_file": None})
    norm = Normalizer.from_spec(stats, cg.spec)
    write_json(d / "normalization.json", norm.to_dict())
    if pipelines:
        write_pipelines(d, cg.preprocess.with_statistics(norm.stats, norm.modes),
                        cg.postprocess.with_statistics(norm.stats, norm.modes))
    return d, norm


def test_a_run_without_saved_pipelines_is_migrated_with_equal_actions(tmp_path):
    torch.manual_seed(0)
    cg = compile_graph("tiny/mlp", device="cpu")
    stats = {"state": {k: [v[0] + i for i in range(8)] for k, v in STATS["state"].items()},
             "actions": {k: [v[0] * (i + 1) for i in range(4)] for k, v in STATS["actions"].items()}}
    new, norm = _run_folder(tmp_path, "new", cg, stats, pipelines=True)
    old, _ = _run_folder(tmp_path, "old", cg, stats, pipelines=False)
    assert (new / "preprocess.json").is_file() and not (old / "preprocess.json").exists()
    pre_new, post_new = read_pipelines(new, cg)
    pre_old, post_old = read_pipelines(old, cg)
    assert pre_new == pre_old and post_new == post_old
    g = np.random.default_rng(0)
    obs = [{"images": g.integers(0, 255, (64, 64, 3), dtype=np.uint8), "instruction": "pick",
            "state": g.normal(size=8).astype(np.float32)} for _ in range(3)]
    a, b = load_policy(new).infer_batch(obs), load_policy(old).infer_batch(obs)
    c = Policy.from_compiled(cg, norm).infer_batch(obs)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x["actions"], y["actions"])
        np.testing.assert_array_equal(x["actions"], z["actions"])
    # and by hand: a policy without normalization, given the state normalized here, predicts the
    # normalized chunk, which the statistics scale back to the loaded policy's actions
    policy = load_policy(new)
    assert policy.metadata["normalization"] == {"state": "mean_std", "actions": "mean_std"}
    plain = Policy.from_compiled(cg)
    assert plain.metadata["normalization"] == {} and not any(isinstance(s, Normalize) for s in plain.preprocess)
    s_shift, s_scale = (np.array(stats["state"][k], dtype=np.float32) for k in ("mean", "std"))
    a_shift, a_scale = (np.array(stats["actions"][k]) for k in ("mean", "std"))
    normalized = plain.infer_batch([{**o, "state": (o["state"] - s_shift) / s_scale} for o in obs])
    for x, y in zip(a, normalized):
        np.testing.assert_allclose(x["actions"], y["actions"] * a_scale + a_shift, rtol=1e-6, atol=1e-6)


def test_the_training_collate_runs_the_bound_preprocess_and_pickles_for_workers():
    from graphvla.data.api import collate
    from graphvla.runners.train import dataio

    cg = compile_graph("tiny/mlp")
    stats = {"state": {k: v[:1] * 8 for k, v in STATS["state"].items()},
             "actions": {k: v[:1] * 4 for k, v in STATS["actions"].items()}}
    norm = Normalizer.from_spec(stats, cg.spec)
    pre, post = dataio.pipelines(cg, norm)
    assert pre.find(Normalize) == Normalize(stats=stats) and post.find(Unnormalize).port_of("actions") == "actions"
    worker = pickle.loads(pickle.dumps(dataio.WorkerCollate(collate, pre)))  # as a DataLoader worker gets it
    g = torch.Generator().manual_seed(2)
    samples = [{"images": torch.rand(1, 3, 64, 64, generator=g), "instruction": "open", "state": torch.randn(8, generator=g),
                "actions": torch.randn(8, 4, generator=g)} for _ in range(3)]
    batch = worker(samples)
    expected = (torch.stack([s["state"] for s in samples]) - 1.0) / 2.0  # every dim: mean 1, std 2
    assert torch.equal(batch["state"], expected)
    assert torch.equal(batch["state"], dataio.WorkerCollate(collate, norm)(samples)["state"])  # a Normalizer: its step


def test_a_checkpoints_pipelines_load_without_the_training_code(tmp_path):
    import subprocess
    import sys

    torch.manual_seed(0)
    cg = compile_graph("tiny/mlp", device="cpu")
    stats = {"state": {k: v[:1] * 8 for k, v in STATS["state"].items()},
             "actions": {k: v[:1] * 4 for k, v in STATS["actions"].items()}}
    run, _ = _run_folder(tmp_path, "run", cg, stats, pipelines=True)
    code = ("import sys, numpy as np\n"
            "from graphvla.policy.loading import load_policy\n"
            f"p = load_policy({str(run)!r})\n"
            "out = p.infer({'images': np.zeros((64, 64, 3), np.uint8), 'instruction': 'go', 'state': np.zeros(8, np.float32)})\n"
            "assert out['actions'].shape == (8, 4)\n"
            "print(sorted(m for m in sys.modules if m.startswith('graphvla.runners')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_policy_given_only_the_preprocess_derives_its_postprocess():
    cg = compile_graph("tiny/mlp")
    stats = {"state": {k: v[:1] * 8 for k, v in STATS["state"].items()},
             "actions": {k: v[:1] * 4 for k, v in STATS["actions"].items()}}
    pre = cg.preprocess.with_statistics(stats)
    policy = Policy(cg, preprocess=pre)
    assert policy.postprocess == cg.postprocess.with_statistics(stats) and policy.postprocess.find(Unnormalize)
    assert policy.metadata["normalization"] == {"state": "mean_std", "actions": "mean_std"}


def test_an_export_folds_the_tensor_steps_that_commute_with_the_python_ones():
    class Tokens(ProcessorStep):
        kind, block = "tokens", "lm"

        def __init__(self, reads):
            self.reads, self.writes = tuple(reads), ("lm.ids",)

        def __call__(self, batch):
            return {**batch, "lm.ids": [str(v) for v in batch[self.reads[0]]]}

    norm = Normalize(stats=STATS)
    before, folded = Pipeline("preprocess", [norm, Tokens(["instruction"])]).split_for_export()
    assert before.steps[0].kind == "tokens" and folded.steps == [norm]
    batch = {"state": torch.randn(2, 3), "instruction": ["a", "b"]}
    whole = Pipeline("preprocess", [norm, Tokens(["instruction"])])(batch)
    split = folded(before(batch))
    assert torch.equal(whole["state"], split["state"]) and whole["lm.ids"] == split["lm.ids"]
    # a prompt made from the normalized state: normalization must run before it, in Python
    before, folded = Pipeline("preprocess", [norm, Tokens(["state"])]).split_for_export()
    assert [s.kind for s in before] == ["normalize", "tokens"] and not len(folded)
