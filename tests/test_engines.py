"""The distributed engines, each launched as a user would: `accelerate launch --config_file
configs/accelerate/<engine>.yaml --num_processes 2` on CPU processes (gloo; DeepSpeed's CPU
accelerator). Each engine must train the tiny graph along DDP's loss curve (tolerance: 1e-5
relative; in fp32 with two processes they agree to the last printed digit), and a run stopped
after 3 steps and resumed must reproduce its uninterrupted curve (1e-6 relative). A ZeRO-3 run of
`-m graphvla train` exports consolidated safetensors that load_policy serves; two machines on
loopback end with identical weights."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).parent.parent
CONFIGS = REPO / "configs" / "accelerate"
WORKER = Path(__file__).parent / "train_engine_worker.py"
ENGINES = ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]
# the DeepSpeed launches are the heaviest (~40-60 s each on 2 busy cores): marked slow, CI still runs them
SLOW = {"deepspeed_zero2", "deepspeed_zero3"}
_runs = {}


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(Path(__file__).parent))


def _launch(config, args, timeout=300, extra=()):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
           "--num_processes", "2", *extra, *map(str, args)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def engine_run(engine, tmp_path_factory):
    """Both ranks' results of the worker under `engine` (one launch per engine per session)."""
    if engine not in _runs:
        out = tmp_path_factory.mktemp(engine)
        proc = _launch(engine, [WORKER, out])
        assert proc.returncode == 0, proc.stderr[-4000:]
        _runs[engine] = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return _runs[engine]


@pytest.mark.parametrize("engine", [pytest.param(e, marks=pytest.mark.slow) if e in SLOW else e for e in ENGINES])
def test_engine_follows_the_ddp_curve_and_resumes_exactly(engine, tmp_path_factory):
    r0, r1 = engine_run(engine, tmp_path_factory)
    # the engine the launcher asked for, over 2 processes (not Accelerate's 0-of-1 under DeepSpeed)
    assert (r0["engine"], r0["rank"], r1["rank"], r0["world"]) == (engine, 0, 1, 2)
    assert r0["per_device"] == {"action": 4} and r0["grad_accum"] == 1  # global batch 8 = 2 x 4
    assert "global batch" in r0["layout"] and "8 = 2 x 4" in r0["layout"]
    assert len(r0["full"]) == 6 and r0["full"] == pytest.approx(r1["full"], rel=1e-6)
    # stopped after 3 steps, checkpointed, resumed in a fresh Trainer: the same curve
    assert r0["resumed_from"].endswith("step_0000003")
    assert r0["interrupted"] == pytest.approx(r0["full"], rel=1e-6)
    reference = engine_run("ddp", tmp_path_factory)[0]["full"]
    assert r0["full"] == pytest.approx(reference, rel=1e-5)


@pytest.mark.slow
def test_zero3_cli_trains_resumes_and_exports_what_load_policy_serves(tmp_path, metaworld_data):
    """`accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml -m graphvla train`,
    stopped and resumed in new processes, on the quickstart graph; the checkpoint's model.safetensors
    is gathered from the ZeRO-3 shards (real weights, not the empty placeholders) and load_policy serves it."""
    import numpy as np
    from safetensors.torch import load_file

    import graphvla

    spec = REPO / "graphvla" / "graphs" / "metaworld" / "mt10.yaml"  # the earlier quickstart graph (keypoint CNN)
    run = tmp_path / "run"
    args = ["-m", "graphvla", "train", spec, "--data", metaworld_data, "-o", run, "--no-progress",
            "--set", "trainer.batch_size=4", "--set", "trainer.max_steps=4", "--set", "trainer.warmup_steps=1",
            "--set", "blocks.head.train.lora.r=2"]  # LoRA under ZeRO-3 too
    first = _launch("deepspeed_zero3", args + ["--stop-after", "2"])
    assert first.returncode == 0, first.stderr[-4000:]
    assert first.stderr.count("engine DeepSpeed ZeRO-3, 2 process(es)") == 1  # printed once, at start
    # the real counts, not those of ZeRO-3's empty per-process placeholders
    assert re.search(r"parameters: [1-9][\d,]* trainable of [1-9][\d,]*", first.stderr), first.stderr[-2000:]
    assert re.search(r"LoRA adapters on head: r=2, .*, [1-9][\d,]* parameters", first.stderr), first.stderr[-2000:]
    second = _launch("deepspeed_zero3", args + ["--resume"])
    assert second.returncode == 0, second.stderr[-4000:]
    assert "to step 4" in second.stdout
    ckpt = run / "checkpoints" / "step_0000004"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["engine"] == "deepspeed_zero3" and state["world_size"] == 2
    assert [r["step"] for r in state["history_tail"]] == [1, 2, 3, 4]
    assert (ckpt / "engine").is_dir()  # the shards, for --resume
    weights = load_file(ckpt / "model.safetensors")
    before = load_file(run / "checkpoints" / "step_0000002" / "model.safetensors")
    assert weights and all(v.numel() > 0 for v in weights.values())
    assert any(not torch.equal(weights[k], before[k]) for k in weights)  # steps 3-4 trained
    policy = graphvla.load_policy(run)
    obs = {"images": np.zeros((64, 64, 3), np.uint8), "instruction": "reach the goal", "state": np.zeros(4, np.float32)}
    actions = policy.infer(obs)["actions"]
    assert actions.shape == (policy.metadata["action_horizon"], policy.metadata["action_dim"])
    assert np.isfinite(actions).all()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_on_loopback_end_with_identical_weights(tmp_path):
    """Two `accelerate launch` calls, machine ranks 0 and 1, one process each, joined over
    127.0.0.1 as two nodes would be."""
    worker = Path(__file__).parent / "train_ddp_worker.py"
    port = _free_port()
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp.yaml"),
               "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), str(worker), str(tmp_path)]
        procs.append(subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["world"], r1["world"]) == (2, 2) and (r0["shard"], r1["shard"]) == ((0, 2), (1, 2))
    assert set(r0["loaded"][:24]).isdisjoint(r1["loaded"][:24])  # each machine trained on its own shard of the epoch
    for k, v in r0["final"].items():
        assert torch.equal(v, r1["final"][k]), k
    assert any(not torch.equal(v, r0["initial"][k]) for k, v in r0["final"].items())


def test_the_global_batch_must_split_over_processes_and_accumulation():
    from graphvla.runners.train.engine import derive_layout

    layout = derive_layout({"action": 32, "vlm": 8}, {"action": "trainer.batch_size", "vlm": "trainer.streams.vlm.batch_size"},
                           "deepspeed_zero2", processes=4, grad_accum=2, machines=2)
    assert layout.per_device == {"action": 4, "vlm": 1}
    text = layout.describe()
    assert "DeepSpeed ZeRO-2, 4 process(es) on 2 machine(s), gradient accumulation 2" in text
    assert "action: 32 = 4 x 4 x 2" in text
    with pytest.raises(ValueError, match=r"trainer.streams.vlm.batch_size is 7.*3 process\(es\) x 1.*multiple of 3"):
        derive_layout({"vlm": 7}, {"vlm": "trainer.streams.vlm.batch_size"}, "ddp", processes=3, grad_accum=1)


def test_deepspeed_requested_but_missing_fails_naming_the_key(monkeypatch):
    import builtins

    from graphvla.runners.train import engine

    real_import = builtins.__import__

    def no_deepspeed(name, *args, **kwargs):
        if name == "deepspeed":
            raise ImportError("No module named 'deepspeed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_deepspeed)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert engine.requested_engine() == "deepspeed_zero3"
    with pytest.raises(RuntimeError, match="distributed_type: DEEPSPEED.*pip install deepspeed"):
        engine.check_available("deepspeed_zero3")


@pytest.mark.parametrize("engine_id, key", [("deepspeed_zero3", "distributed_type: DEEPSPEED"),
                                             ("deepspeed_zero2", "distributed_type: DEEPSPEED"),
                                             ("fsdp", "distributed_type: FSDP")])
def test_a_block_the_engine_cannot_shard_fails_at_start_naming_it(engine_id, key):
    """ZeRO and FSDP die in the first step on a 0-d parameter with a message naming no block;
    the check names the block, its type and the parameter before anything is launched."""
    from types import SimpleNamespace

    from graphvla.runners.train import engine

    block = torch.nn.Module()
    block.scale = torch.nn.Parameter(torch.zeros(()))
    block.proj = torch.nn.Linear(2, 2)
    cg = SimpleNamespace(model={"head": torch.nn.Linear(2, 2), "gate": block},
                         spec=SimpleNamespace(blocks={"head": {"type": "head.mlp"}, "gate": {"type": "my.gate"}}))
    with pytest.raises(ValueError) as err:
        engine.check_shardable(engine_id, cg)
    text = str(err.value)
    assert key in text and "blocks.gate (my.gate): parameter 'scale'" in text and "blocks.head" not in text
    engine.check_shardable("ddp", cg)  # DDP replicates: nothing to shard


def test_packaged_blocks_have_no_scalar_parameters_and_old_checkpoints_load():
    """The keypoint encoder's temperature is [1] (it was 0-d, which no sharded engine takes);
    a checkpoint from before still loads, with the same value."""
    from graphvla.compiler.compile import compile_graph
    from graphvla.runners.train import engine

    cg = compile_graph(str(REPO / "graphvla" / "graphs" / "metaworld" / "mt10.yaml"), device="cpu")
    engine.check_shardable("deepspeed_zero3", cg)
    old = {k: v.clone() for k, v in cg.model["vision"].state_dict().items()}
    old["log_temperature"] = torch.tensor(0.25)  # as written before: 0-d
    cg.model["vision"].load_state_dict(old)
    assert cg.model["vision"].log_temperature.shape == (1,) and cg.model["vision"].log_temperature.item() == 0.25


def test_configs_are_where_the_docs_say_and_need_no_working_directory():
    """configs/accelerate/*.yaml at the repo root is the packaged graphvla/configs/accelerate/; the
    DeepSpeed settings are inline (no JSON path that would resolve against the cwd)."""
    import yaml
    from accelerate.utils import DeepSpeedPlugin

    assert (REPO / "configs" / "accelerate").resolve() == (REPO / "graphvla" / "configs" / "accelerate").resolve()
    types = {}
    for name in ENGINES:
        conf = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        types[name] = conf["distributed_type"]
        assert "deepspeed_config_file" not in (conf.get("deepspeed_config") or {}), name
    assert types == {"ddp": "MULTI_GPU", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED", "fsdp": "FSDP"}
    z3 = yaml.safe_load((CONFIGS / "deepspeed_zero3.yaml").read_text())["deepspeed_config"]
    assert z3["zero_stage"] == 3 and z3["zero3_save_16bit_model"] is True
    assert DeepSpeedPlugin(zero_stage=z3["zero_stage"]).zero_stage == 3


def test_gradient_accumulation_trains_what_one_big_batch_trains(tmp_path, monkeypatch):
    """Accumulation 2 of 4 samples steps as one batch of 8 (the same samples, in the same order)."""
    from train_doubles import TINY_SPEC, SyntheticActions, port_stats

    from graphvla.data.api import DataBundle, collate
    from graphvla.data.normalize import Normalizer
    from graphvla.runners.train import Trainer
    from graphvla.spec.loader import load_spec

    def run(name, accum):
        monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", str(accum))
        spec = load_spec(TINY_SPEC, ["trainer.max_steps=4", "trainer.batch_size=8", "trainer.save_every=100"])
        ds = SyntheticActions(48)
        stats = port_stats(ds, ["state", "actions"])
        norm = Normalizer(stats, spec.section("trainer")["normalization"])
        torch.manual_seed(0)
        t = Trainer.from_spec(spec, DataBundle({"action": ds}, stats), tmp_path / name, normalizer=norm, collate=collate,
                              progress=False)
        result = t.run()
        return t, [r["loss"] for r in result.history], result.samples

    one, curve1, samples1 = run("one", 1)
    two, curve2, samples2 = run("two", 2)
    assert (one.layout.per_device, two.layout.per_device, two.layout.grad_accum) == ({"action": 8}, {"action": 4}, 2)
    assert samples1 == samples2 == 4 * 8
    assert curve2 == pytest.approx(curve1, rel=1e-5)
    diffs = {k: (v - two.cg.model.state_dict()[k]).abs().max().item() for k, v in one.cg.model.state_dict().items()}
    # weights move by ~1e-2 in 4 steps; AdamW magnifies float noise on near-zero gradients to ~3e-6
    assert max(diffs.values()) < 1e-5, diffs


def test_cpu_workarounds_keep_the_engine_the_launcher_asked_for(monkeypatch):
    """Without GPUs: DDP and FSDP need Accelerator(cpu=True) to join over gloo, DeepSpeed must not get
    it (Accelerate would train DDP instead); DeepSpeed is pointed at its CPU accelerator unless the
    user chose one."""
    from graphvla.runners.train import compat

    monkeypatch.setattr(compat, "has_cuda", lambda: False)
    assert [compat.accelerator_cpu_flag(e) for e in ENGINES] == [True, False, False, True]
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    compat.deepspeed_on_cpu()
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    monkeypatch.setenv("DS_ACCELERATOR", "xpu")
    compat.deepspeed_on_cpu()
    assert os.environ["DS_ACCELERATOR"] == "xpu"
    monkeypatch.setattr(compat, "has_cuda", lambda: True)  # with GPUs every engine takes them
    assert not any(compat.accelerator_cpu_flag(e) for e in ENGINES)
