"""Two CPU processes (gloo) under `accelerate launch --multi_gpu --num_processes 2` (on a machine
without GPUs the trainer joins them as MULTI_CPU): each rank trains on its own shard of
the data, and DDP keeps the weights identical across ranks."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def test_two_processes_keep_weights_in_sync(tmp_path):
    worker = Path(__file__).parent / "train_ddp_worker.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (r0["world"], r1["world"]) == (2, 2)
    # each rank drew its own shard of the data: within an epoch (24 samples a rank) the ranks
    # load disjoint samples that together cover the dataset once
    assert (r0["shard"], r1["shard"]) == ((0, 2), (1, 2))
    assert len(r0["loaded"]) == len(r1["loaded"]) == 6 * 8
    for epoch in range(2):
        a, b = (set(r["loaded"][24 * epoch: 24 * (epoch + 1)]) for r in (r0, r1))
        assert len(a) == len(b) == 24 and not a & b and a | b == set(range(48)), epoch
    changed = 0
    for k, v in r0["final"].items():
        assert torch.equal(r0["initial"][k], r1["initial"][k]), k  # same start
        assert torch.allclose(v, r1["final"][k], rtol=0, atol=1e-6), k  # still the same after 6 steps
        changed += not torch.equal(v, r0["initial"][k])
    assert changed > len(r0["final"]) // 2
    # logged losses are averaged over ranks, so both report the same curve
    assert r0["losses"] == pytest.approx(r1["losses"], rel=1e-6)
    assert len(r0["losses"]) == 6
    assert (tmp_path / "run/checkpoints/step_0000006/model.safetensors").is_file()


@pytest.mark.slow
def test_cli_module_under_accelerate_launch_trains_and_resumes(tmp_path, metaworld_data):
    """`accelerate launch --multi_gpu --num_processes 2 -m graphvla train ...` on
    recorded Meta-World data, then --resume with the same launch."""
    import json

    spec = Path(__file__).parent.parent / "graphvla" / "graphs" / "tiny" / "mlp.yaml"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "graphvla", "train", str(spec),
           "--data", str(metaworld_data), "-o", str(tmp_path / "run"), "--no-progress", "--set", "inputs.state.dim=4",
           "--set", "trainer.batch_size=4", "--set", "trainer.max_steps=6"]
    first = subprocess.run(cmd + ["--stop-after", "3"], env=env, capture_output=True, text=True, timeout=170)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("trained tiny-mlp to step 3") == 1  # printed by the main process only
    second = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=170)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "to step 6" in second.stdout
    state = json.loads((tmp_path / "run/checkpoints/step_0000006/trainer_state.json").read_text())
    assert state["world_size"] == 2 and [s["action"]["rank"] for s in state["samplers"]] == [0, 1]
    assert [r["step"] for r in state["history_tail"]] == list(range(1, 7))
