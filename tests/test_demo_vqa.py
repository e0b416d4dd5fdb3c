"""`graphvla data vqa`: image-text co-training data made from recorded demonstrations, and the
co-training sweep graph trained on it (both streams step, the shared VLM learns from both)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from graphvla.cli import main
from graphvla.data.api import load_data, open_source
from graphvla.data.demo_vqa import (
    MOTION_QUESTION,
    TASK_QUESTION,
    MotionWords,
    write_demo_vqa,
)
from graphvla.data.lerobot import DatasetError
from graphvla.spec.loader import load_spec

GRAPHS = Path(__file__).parent.parent / "graphvla" / "graphs"
COTRAIN = GRAPHS / "sweeps" / "backbones" / "qwen3vl-querytf-cotrain.yaml"


def robot_yaml(tmp_path, dataset) -> Path:
    p = tmp_path / "robot.yaml"
    p.write_text(yaml.safe_dump({"datasets": [{"path": str(dataset), "embodiment": "sawyer",
                                               "keys": {"images": ["observation.images.corner"], "state": "observation.state",
                                                        "actions": "action", "instruction": "task"}}]}))
    return p


def test_motion_words():
    m = MotionWords()
    now = np.zeros(4)
    assert m.describe(now, np.array([0.05, 0.0, -0.02, 0.0])) == "right and down; the gripper holds"
    assert m.describe(now, np.array([-0.05, 0.03, 0.02, 0.5])) == "left, forward and up; the gripper opens"
    assert m.describe(now, np.array([0.005, -0.004, 0.0, -0.5])) == "stays where it is; the gripper closes"
    assert MotionWords(gripper_dim=None).describe(now, np.array([0.0, -0.2, 0.0, 0.9])) == "back"


def test_vqa_from_demonstrations(tmp_path, metaworld_data):
    out = tmp_path / "vqa"
    res = CliRunner().invoke(main, ["data", "vqa", str(robot_yaml(tmp_path, metaworld_data)), "-o", str(out),
                                    "--every", "5", "--horizon", "8"])
    assert res.exit_code == 0, res.output
    src = open_source(metaworld_data)
    records = json.loads((out / "llava.json").read_text())
    assert len(records) == sum(math.ceil((e - s) / 5) for s, e in src.episodes.values())
    state = src.columns["observation.state"]
    for r in records:
        _, ep, frame = (int(x) for x in r["id"].split("-"))
        start, end = src.episodes[ep]
        row = start + frame
        q1, a1, q2, a2 = (t["value"] for t in r["conversations"])
        assert (q1, q2) == (TASK_QUESTION, MOTION_QUESTION)
        assert a1 == src.task(row)  # the instruction, read from the recording, not from the question
        assert a2 == MotionWords().describe(state[row], state[min(row + 8, end - 1)])
        assert Path(r["image"]).is_file()
    assert len({r["conversations"][3]["value"] for r in records}) > 1  # the motion answers vary

    # the written data YAML feeds both streams of the co-training graph
    spec = load_spec(COTRAIN)
    bundle = load_data(out / "data.yaml", spec)
    assert set(bundle.streams) == {"action", "vlm"}
    item = bundle.streams["vlm"][0]
    assert item["vqa_answer"] == records[0]["conversations"][1]["value"]
    assert "Which task" in item["vqa_question"] and "<image>" not in item["vqa_question"]
    assert tuple(item["vqa_images"].shape[-2:]) == (64, 64)
    assert len(bundle.streams["action"]) == len(src)


def test_vqa_errors_name_the_value(tmp_path, metaworld_data):
    data = robot_yaml(tmp_path, metaworld_data)
    with pytest.raises(DatasetError, match=r"state 'observation.state' has 4 dims but .* \[0, 1, 7, 3\]"):
        write_demo_vqa(data, tmp_path / "o", motion=MotionWords(hand_dims=(0, 1, 7)))
    res = CliRunner().invoke(main, ["data", "vqa", str(data), "-o", str(tmp_path / "o"), "--every", "0"])
    assert res.exit_code != 0 and "--every must be at least 1, got 0" in res.output
    res = CliRunner().invoke(main, ["data", "vqa", str(data), "-o", str(tmp_path / "o"), "--hand-dims", "0,x,2"])
    assert res.exit_code != 0 and "--hand-dims" in res.output and "'0,x,2'" in res.output
    assert not (tmp_path / "o" / "llava.json").exists()


def test_cotrain_graph_trains_both_streams(tmp_path, metaworld_data):
    """The co-training sweep's graph on the made data: 3 action steps to 1 VLM step, both losses
    finite, and the VLM stream's steps change the shared backbone (the LM loss reaches it)."""
    from graphvla.runners.train import Trainer

    out = tmp_path / "vqa"
    write_demo_vqa(robot_yaml(tmp_path, metaworld_data), out, every=10)
    spec = load_spec(COTRAIN, ["trainer.max_steps=4", "trainer.batch_size=4", "trainer.warmup_steps=1",
                               "trainer.save_every=100"])
    bundle = load_data(out / "data.yaml", spec)
    trainer = Trainer.from_spec(spec, bundle, tmp_path / "run", progress=False)
    vlm = trainer.cg.model["vlm"]
    records, before = [], None
    for _ in range(4):
        if trainer.schedule.stream_at(trainer.step) == "vlm":
            before = {k: v.detach().clone() for k, v in vlm.named_parameters()}
        records.append(trainer.train_step())
        if before is not None and records[-1]["stream"] == "vlm":
            changed = [k for k, v in vlm.named_parameters() if not (v.detach() == before[k]).all()]
            assert changed, "the VLM stream's step did not reach the shared backbone"
            assert set(records[-1]["losses"]) == {"vlm"}
            before = None
    assert sorted(r["stream"] for r in records) == ["action", "action", "action", "vlm"]
    assert all(math.isfinite(r["loss"]) for r in records)
