"""The trainer on tiny graphs and synthetic data (fed through the real graphvla.data bundle, sampler,
normalizer and collate): losses fall per stream, per-block lr/freeze, exact resume, NaN stop,
atomic checkpoints."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from conftest import vqa_cotraining

from graphvla.data.api import DataBundle, collate
from graphvla.data.normalize import Normalizer
from graphvla.data.sampler import StreamSampler
from graphvla.runners.train import NonFiniteLossError, Trainer, train
from graphvla.policy import checkpoint as C
from graphvla.runners.train.streams import StreamSchedule
from graphvla.spec.loader import load_spec
from train_doubles import TINY_SPEC, SyntheticActions, port_stats, tiny_spec

torch.set_num_threads(1)

COTRAIN = tiny_spec(
    "inputs.aux_actions={kind: action, dim: 2, horizon: 2, train_only: true, optional: true}",
    "blocks.aux_head={type: head.mlp, in: {context: fuse.hidden, state: inputs.state, target: inputs.aux_actions}, "
    "with: {hidden: 32}, train: {lr: 1.0e-2}}",
    "losses.aux={from: aux_head.loss, weight: 0.5, stream: aux}")


def setup(tmp_path, text=TINY_SPEC, overrides=(), nan_at=None, aux=False):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    spec = load_spec(str(path), overrides)
    ds = SyntheticActions(48, nan_at=nan_at)
    streams = {"action": ds}
    stats = port_stats(ds, ["state", "actions"])
    if aux:
        streams["aux"] = SyntheticActions(48, horizon=2, action_dim=2, action_port="aux_actions", seed=1)
        stats.update(port_stats(streams["aux"], ["aux_actions"]))
    norm = Normalizer(stats, spec.section("trainer")["normalization"])
    return spec, DataBundle(streams, stats), dict(normalizer=norm, collate=collate, progress=False)


def mean(xs):
    return sum(xs) / len(xs)


def test_cotraining_reduces_every_loss_and_logs_each(tmp_path):
    torch.manual_seed(0)
    spec, bundle, kw = setup(tmp_path, COTRAIN, ["trainer.max_steps=60", "trainer.streams={action: {ratio: 2}, aux: {ratio: 1}}",
                                                 "trainer.save_every=100",
                                                 "trainer.normalization.aux_actions=mean_std"], aux=True)
    result = train(spec, bundle, tmp_path / "run", **kw)
    streams = [r["stream"] for r in result.history]
    assert streams[:6] == ["action", "aux", "action"] * 2  # 2:1, interleaved
    assert streams.count("action") == 40 and streams.count("aux") == 20
    for stream, term in (("action", "action"), ("aux", "aux")):
        curve = [r["losses"][term] for r in result.history if r["stream"] == stream]
        assert mean(curve[-5:]) < 0.75 * mean(curve[:5]), (term, curve)
    # the stream total carries the spec's loss weight
    aux = next(r for r in result.history if r["stream"] == "aux")
    assert aux["loss"] == pytest.approx(0.5 * aux["losses"]["aux"], rel=1e-5)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(tmp_path / "run" / "logs"))
    ev.Reload()
    tags = set(ev.Tags()["scalars"])
    assert {"loss/action", "loss/aux", "throughput/samples_per_s", "lr/head"} <= tags
    assert list((tmp_path / "run" / "logs").glob("events.out.tfevents.*"))  # right in RUN_DIR/logs
    assert [e.step for e in ev.Scalars("loss/action")] == list(range(5, 61, 5))  # every log_every steps
    window = [r["losses"]["action"] for r in result.history[:5] if r["stream"] == "action"]
    assert ev.Scalars("loss/action")[0].value == pytest.approx(mean(window), rel=1e-5)  # the window's mean
    assert ev.Scalars("lr/aux_head")[-1].value == pytest.approx(0.1 * 1e-2)  # its own lr's floor at max_steps


def test_param_groups_follow_block_train_and_freeze_is_bitwise(tmp_path):
    torch.manual_seed(0)
    text = tiny_spec("blocks.vision.train={freeze: true}")
    spec, bundle, kw = setup(tmp_path, text, ["trainer.max_steps=5", "blocks.language.train={lr: 2.0e-4, weight_decay: 0.3}"])
    t = Trainer.from_spec(spec, bundle, tmp_path / "run", **kw)
    groups = {g["name"]: g for g in t.optimizer.param_groups}
    assert not any(n.startswith("vision") for n in groups)
    assert groups["head"]["initial_lr"] == 3e-3 and groups["fuse"]["initial_lr"] == 3e-3
    assert groups["language"]["initial_lr"] == 2e-4 and groups["language"]["weight_decay"] == 0.3
    assert groups["language.no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] == 0.01
    assert all(p.dim() < 2 for p in groups["head.no_decay"]["params"])
    frozen = {k: v.clone() for k, v in t.cg.model["vision"].state_dict().items()}
    head = {k: v.clone() for k, v in t.cg.model["head"].state_dict().items()}
    t.run()
    for k, v in t.cg.model["vision"].state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert any(not torch.equal(v, head[k]) for k, v in t.cg.model["head"].state_dict().items())


def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path):
    overrides = ["trainer.max_steps=16", "trainer.save_every=100", "trainer.warmup_steps=3"]
    spec, bundle, kw = setup(tmp_path, TINY_SPEC, overrides)
    full = train(spec, bundle, tmp_path / "full", **kw)
    spec, bundle, kw = setup(tmp_path, TINY_SPEC, overrides)
    first = train(spec, bundle, tmp_path / "split", stop_after=7, **kw)  # "killed" after 7 steps
    assert first.step == 7 and first.checkpoint.name == "step_0000007"
    spec, bundle, kw = setup(tmp_path, TINY_SPEC, overrides)
    second = train(spec, bundle, tmp_path / "split", resume=True, **kw)
    assert [r["step"] for r in second.history] == list(range(8, 17))
    a = [r["loss"] for r in full.history]
    b = [r["loss"] for r in first.history + second.history]
    assert len(a) == len(b) == 16
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-6), f"step {i + 1}: {x} vs {y}"
    wa = load_file(str(tmp_path / "full/checkpoints/step_0000016/model.safetensors"))
    wb = load_file(str(tmp_path / "split/checkpoints/step_0000016/model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    state = json.loads((tmp_path / "split/checkpoints/step_0000016/trainer_state.json").read_text())
    assert [r["step"] for r in state["history_tail"]] == list(range(1, 17))


def test_a_resumed_run_trains_every_step_at_the_uninterrupted_lr(tmp_path):
    """The lr is a function of the step: a run resumed at step 5 trains steps 6-12 at the lrs the
    uninterrupted run used, per param group, also from a checkpoint written before that (it holds
    a scheduler.pt, and its optimizer state the next step's lr), and the first of them by hand."""
    overrides = ["trainer.max_steps=12", "trainer.save_every=100", "trainer.warmup_steps=4",
                 "blocks.language.train={lr: 2.0e-4}"]
    spec, bundle, kw = setup(tmp_path, TINY_SPEC, overrides)
    whole = Trainer.from_spec(spec, bundle, tmp_path / "full", **kw)
    full = [whole.train_step()["lrs"] for _ in range(12)]
    assert full[3]["head"] == 3e-3 and full[3]["language.no_decay"] == 2e-4  # step 4 ends the warmup at the peak
    assert full[0]["head"] == 3e-3 / 4  # the first step trains at 1/warmup of it, not 0
    spec, bundle, kw = setup(tmp_path, TINY_SPEC, overrides)
    train(spec, bundle, tmp_path / "split", stop_after=5, **kw)
    ckpt = C.latest_checkpoint(tmp_path / "split")
    assert not (ckpt / "scheduler.pt").exists()

    def resumed_lrs(run):
        spec, bundle, kw = setup(tmp_path, TINY_SPEC, overrides)
        t = Trainer.from_spec(spec, bundle, run, resume=True, **kw)
        return [t.train_step()["lrs"] for _ in range(7)]

    assert resumed_lrs(tmp_path / "split") == full[5:]
    # as written before: LambdaLR's state beside the optimizer's, whose lr is the one it set for the next step
    import shutil

    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    shutil.copytree(tmp_path / "split", tmp_path / "old")
    ckpt = C.latest_checkpoint(tmp_path / "old")
    optim = torch.load(ckpt / "optimizer.pt", weights_only=True)
    for group in optim["param_groups"]:
        group["lr"] = 123.0  # whatever it holds, the step decides
    torch.save(optim, ckpt / "optimizer.pt")
    old = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    old.param_groups[0]["initial_lr"] = 3e-3
    sched = get_cosine_with_min_lr_schedule_with_warmup(old, num_warmup_steps=4, num_training_steps=12,
                                                        min_lr_rate=0.1, last_epoch=0)
    torch.save(sched.state_dict(), ckpt / "scheduler.pt")
    assert resumed_lrs(tmp_path / "old") == full[5:]


def first_step_drawing(index, dataset, batch_size, seed=0):
    """1-based step whose batch contains dataset index `index` (replaying the data layer's sampler)."""
    it = iter(StreamSampler(dataset, seed=seed))
    step = 0
    while True:
        step += 1
        if index in [next(it) for _ in range(batch_size)]:
            return step


def test_nan_in_data_stops_naming_step_and_loss(tmp_path):
    torch.manual_seed(0)
    spec, bundle, kw = setup(tmp_path, TINY_SPEC, ["trainer.max_steps=40", "trainer.save_every=1"], nan_at=5)
    expected = first_step_drawing(5, bundle.streams["action"], 8)
    with pytest.raises(NonFiniteLossError) as err:
        train(spec, bundle, tmp_path / "run", **kw)
    msg = str(err.value)
    assert f"step {expected}:" in msg and "loss 'action'" in msg and "nan" in msg, msg
    assert err.value.step == expected
    latest = C.latest_checkpoint(tmp_path / "run")
    if expected > 1:
        assert latest.name == C.step_dir_name(expected - 1)
        weights = load_file(str(latest / "model.safetensors"))
        assert all(torch.isfinite(v).all() for v in weights.values())
    assert not (tmp_path / "run/checkpoints" / C.step_dir_name(expected)).exists()


def test_crash_during_save_leaves_previous_checkpoint_latest(tmp_path, monkeypatch):
    spec, bundle, kw = setup(tmp_path, TINY_SPEC, ["trainer.max_steps=10", "trainer.save_every=5"])
    real_write_json = C.write_json

    def crashing(path, data):
        if path.name == "graph.json" and "0000010" in str(path.parent):
            raise OSError("disk full (simulated)")
        real_write_json(path, data)

    monkeypatch.setattr(C, "write_json", crashing)
    with pytest.raises(OSError, match="simulated"):
        train(spec, bundle, tmp_path / "run", **kw)
    root = tmp_path / "run/checkpoints"
    assert (root / "latest").read_text().strip() == "step_0000005"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000005"]  # no partial dir left
    monkeypatch.setattr(C, "write_json", real_write_json)
    spec, bundle, kw = setup(tmp_path, TINY_SPEC, ["trainer.max_steps=10", "trainer.save_every=5"])
    resumed = train(spec, bundle, tmp_path / "run", resume=True, **kw)
    assert resumed.history[0]["step"] == 6 and resumed.step == 10


def test_keep_last_prunes_and_checkpoint_has_every_file(tmp_path):
    spec, bundle, kw = setup(tmp_path, TINY_SPEC, ["trainer.max_steps=12", "trainer.save_every=3", "trainer.keep_last=2"])
    result = train(spec, bundle, tmp_path / "run", **kw)
    root = tmp_path / "run/checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000009", "step_0000012"]
    assert result.checkpoint == root / "step_0000012"
    assert sorted(p.name for p in result.checkpoint.iterdir()) == sorted(C.FILES)
    graph = json.loads((result.checkpoint / "graph.json").read_text())
    assert graph["fingerprint"] == spec.fingerprint and graph["name"] == "tiny-train"
    norm = json.loads((result.checkpoint / "normalization.json").read_text())
    assert json.dumps(norm)  # plain JSON
    assert load_spec((result.checkpoint / "spec.yaml").read_text()).fingerprint == spec.fingerprint


def test_stream_cycle():  # the learning-rate schedule is tested in test_schedule.py
    assert StreamSchedule({"a": 3, "b": 1}).cycle == ["a", "a", "b", "a"]
    assert StreamSchedule({"a": 1, "b": 1}).cycle == ["a", "b"]
    assert [StreamSchedule({"a": 1, "b": 2}).stream_at(i) for i in range(6)] == ["b", "a", "b"] * 2


def test_unknown_stream_and_missing_stream_data_are_named(tmp_path):
    spec, bundle, kw = setup(tmp_path, TINY_SPEC, ["trainer.streams={vlm: {ratio: 1}}"])
    with pytest.raises(ValueError, match=r"trainer.streams names \['vlm'\]"):
        Trainer.from_spec(spec, bundle, tmp_path / "run", **kw)
    spec, bundle, kw = setup(tmp_path, COTRAIN)
    with pytest.raises(KeyError, match="stream 'aux'"):
        Trainer.from_spec(spec, bundle, tmp_path / "run", **kw)


def test_cli_trains_tiny_graph_on_metaworld_resumes_and_serves(tmp_path, metaworld_data):
    """graphvla train on graphvla/graphs/tiny/mlp.yaml with real recorded data, stopped and resumed,
    then load_policy on the run."""
    from pathlib import Path

    import numpy as np
    from click.testing import CliRunner

    import graphvla
    from graphvla.cli import main

    spec = Path(__file__).parent.parent / "graphvla" / "graphs" / "tiny" / "mlp.yaml"
    run = tmp_path / "run"
    sets = ["inputs.state.dim=4", "trainer.max_steps=40", "trainer.batch_size=8", "trainer.warmup_steps=3",
            "trainer.save_every=100", "trainer.lr=1.0e-3"]
    args = ["train", str(spec), "--data", str(metaworld_data), "-o", str(run), "--no-progress"]
    for kv in sets:
        args += ["--set", kv]
    res = CliRunner().invoke(main, args + ["--stop-after", "20"])
    assert res.exit_code == 0, res.output
    assert "to step 20" in res.output and (run / "checkpoints/step_0000020").is_dir()
    res = CliRunner().invoke(main, args + ["--resume"])
    assert res.exit_code == 0, res.output
    assert "resumed from" in res.output and "to step 40" in res.output
    state = json.loads((run / "checkpoints/step_0000040/trainer_state.json").read_text())
    losses = [r["losses"]["action"] for r in state["history_tail"]]
    assert [r["step"] for r in state["history_tail"]] == list(range(1, 41))
    assert mean(losses[-8:]) < 0.8 * mean(losses[:8]), losses
    policy = graphvla.load_policy(run)
    assert policy.metadata["action_horizon"] == 8 and policy.metadata["action_dim"] == 4
    out = policy.infer({"images": np.zeros((64, 64, 3), np.uint8), "instruction": "reach the goal",
                        "state": np.zeros(4, np.float32)})
    assert out["actions"].shape == (8, 4) and np.isfinite(out["actions"]).all()


def test_cli_errors_are_one_line(tmp_path, metaworld_data):
    from click.testing import CliRunner

    from graphvla.cli import main

    (tmp_path / "spec.yaml").write_text(TINY_SPEC)
    base = ["train", str(tmp_path / "spec.yaml"), "--data", str(metaworld_data), "--no-progress"]
    fit = ["--set", "inputs.state.dim=4", "--set", "inputs.actions.dim=4"]
    res = CliRunner().invoke(main, base + fit + ["-o", str(tmp_path / "new"), "--resume"])
    assert res.exit_code == 1 and "no checkpoint under" in res.output
    res = CliRunner().invoke(main, base + fit + ["-o", str(tmp_path / "x"), "--set", "trainer.lr=-1"])
    assert res.exit_code == 1 and "trainer.lr" in res.output
    used = tmp_path / "used"
    (used / "checkpoints" / "step_0000005").mkdir(parents=True)
    res = CliRunner().invoke(main, base + fit + ["-o", str(used)])
    assert res.exit_code == 1 and "already holds checkpoints (step_0000005)" in res.output and "--resume" in res.output
    # the Meta-World actions are 4 wide, TINY_SPEC's 3
    res = CliRunner().invoke(main, base + ["--set", "inputs.state.dim=4", "-o", str(tmp_path / "y")])
    assert res.exit_code == 1 and "'actions' declares dim: 3" in res.output and "Traceback" not in res.output


def test_shipped_accelerate_configs_load():
    """The launcher configs (configs/accelerate/, packaged as graphvla/configs/accelerate/) build
    the plugins Accelerate makes from them; tests/test_engines.py runs each."""
    from pathlib import Path

    import yaml
    from accelerate.utils import DeepSpeedPlugin

    root = Path(__file__).parent.parent / "graphvla" / "configs" / "accelerate"
    for stage in (2, 3):
        ds = yaml.safe_load((root / f"deepspeed_zero{stage}.yaml").read_text())
        assert ds["distributed_type"] == "DEEPSPEED"
        assert DeepSpeedPlugin(zero_stage=ds["deepspeed_config"]["zero_stage"]).zero_stage == stage
    assert yaml.safe_load((root / "ddp.yaml").read_text())["distributed_type"] == "MULTI_GPU"
    assert yaml.safe_load((root / "fsdp.yaml").read_text())["distributed_type"] == "FSDP"


def test_data_position_is_exact_with_prefetching_workers():
    """DataLoader workers draw indices ahead; the saved position is the first unconsumed batch."""
    from graphvla.runners.train.streams import StreamBatches

    ds = SyntheticActions(20)
    reference = StreamBatches(ds, StreamSampler(ds, seed=3), 6, collate, num_workers=0)
    expected = [reference.next()["state"] for _ in range(8)]
    feed = StreamBatches(ds, StreamSampler(ds, seed=3), 6, collate, num_workers=2)
    for i in range(3):
        assert torch.equal(feed.next()["state"], expected[i])
    state = json.loads(json.dumps(feed.state_dict()))  # as stored in trainer_state.json
    resumed = StreamBatches(ds, StreamSampler(ds, seed=3), 6, collate, num_workers=2)
    resumed.load_state_dict(state)
    for i in range(3, 8):  # crosses an epoch boundary (20 samples, batches of 6)
        assert torch.equal(resumed.next()["state"], expected[i])


@pytest.mark.slow
def test_cotraining_vlm_and_action_streams_on_real_data(tmp_path, metaworld_data):
    """graphvla/graphs/tiny/querytf.yaml plus a node sharing its tiny Qwen3-VL on a LLaVA-JSON stream: steps
    alternate 2:1, each loss is logged under its own name and both fall."""
    from PIL import Image

    import numpy as np

    (tmp_path / "imgs").mkdir()
    records = []
    for i, (name, rgb) in enumerate([("red", (220, 30, 30)), ("green", (30, 200, 40)), ("blue", (30, 40, 220))] * 3):
        Image.fromarray(np.full((32, 32, 3), rgb, np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
        records.append({"image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the block?"}, {"from": "gpt", "value": f"The block is {name}."}]})
    (tmp_path / "llava.json").write_text(json.dumps(records))
    (tmp_path / "data.yaml").write_text(f"datasets:\n  - path: {metaworld_data}\n"
                                        f"vlm:\n  - json: {tmp_path / 'llava.json'}\n    image_root: {tmp_path / 'imgs'}\n")
    from graphvla.runners.train.dataio import load_bundle

    spec = load_spec("tiny/querytf", [*vqa_cotraining(128, 0.5), "name=tiny-querytf-cotrain",
                                  "trainer.streams={action: {ratio: 2}, vlm: {ratio: 1}}", "trainer.max_steps=24",
                                  "trainer.batch_size=4", "trainer.warmup_steps=2", "trainer.save_every=100"])
    result = train(spec, load_bundle(str(tmp_path / "data.yaml"), spec), tmp_path / "run", progress=False)
    assert [r["stream"] for r in result.history[:3]] == ["action", "vlm", "action"]
    action = [r["losses"]["action"] for r in result.history if r["stream"] == "action"]
    vlm = [r["losses"]["vlm"] for r in result.history if r["stream"] == "vlm"]
    assert len(action) == 16 and len(vlm) == 8
    assert mean(vlm[-3:]) < 0.97 * mean(vlm[:3]), vlm
    assert mean(action[-6:]) < mean(action[:6]), action
    vlm_step = next(r for r in result.history if r["stream"] == "vlm")
    assert vlm_step["loss"] == pytest.approx(0.5 * vlm_step["losses"]["vlm"], rel=1e-5)


def test_precision_bf16_autocasts_and_fp32_does_not(tmp_path):
    losses = {}
    for prec in ("fp32", "bf16", "fp32"):
        spec, bundle, kw = setup(tmp_path, TINY_SPEC, ["trainer.max_steps=3", f"trainer.precision={prec}"])
        t = Trainer.from_spec(spec, bundle, tmp_path / f"run-{prec}-{len(losses)}", **kw)
        assert t.accelerator.mixed_precision == ("bf16" if prec == "bf16" else "no")
        losses.setdefault(prec, []).append([r["loss"] for r in t.run().history])
    assert losses["fp32"][0] == losses["fp32"][1]  # deterministic
    a, b = losses["fp32"][0], losses["bf16"][0]
    assert a != b and all(abs(x - y) < 0.05 for x, y in zip(a, b))  # bf16 matmuls: close, not equal


def test_trainer_fused_optimizer_runs_adamws_fused_kernel_with_the_same_steps_up_to_rounding():
    """trainer.fused_optimizer (graphs/lerobot/diffusion sets it): AdamW's fused kernel, whose weights
    follow the default per-tensor loop's to rounding; off by default."""
    from graphvla.runners.train.optim import block_param_groups, build_optimizer

    trainer = {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.01}

    def model():
        torch.manual_seed(0)
        return torch.nn.ModuleDict({"a": torch.nn.Linear(37, 19), "b": torch.nn.Conv1d(5, 7, 3)})

    fused, plain = model(), model()
    opts = [build_optimizer(block_param_groups(fused, {}, trainer), {**trainer, "fused_optimizer": True}),
            build_optimizer(block_param_groups(plain, {}, trainer), trainer)]
    assert opts[0].param_groups[0]["fused"] is True and not opts[1].param_groups[0]["fused"]
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        for pa, pb in zip(fused.parameters(), plain.parameters()):
            pa.grad = torch.randn(pa.shape, generator=g) * 10.0 ** (step % 4 - 2)
            pb.grad = pa.grad.clone()
        for o in opts:
            o.step()
    moved = max((pa - p0).abs().max().item() for pa, p0 in zip(fused.parameters(), model().parameters()))
    diff = max((pa - pb).abs().max().item() for pa, pb in zip(fused.parameters(), plain.parameters()))
    assert moved > 1e-3 and diff <= 1e-6
