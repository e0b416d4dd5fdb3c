"""Image-text co-training data made from robot demonstrations (`graphvla data vqa`).

Co-training a VLM backbone on image-text data is meant to keep its visual grounding; a simulated
benchmark has no VQA corpus of its own, but its demonstrations can supply one. From every k-th
frame of each robot dataset of a data YAML this writes LLaVA-JSON exchanges (data/vlm.py) about
what the frame shows:

- task:   "Which task is the robot doing?" -> the episode's instruction. The question does not
          contain it, so the answer has to be read from the pixels.
- motion: "Where does the gripper move next?" -> the hand's displacement over the next
          `horizon` frames in words ("right, forward and up; the gripper closes"), from the
          recorded proprioceptive state.

Answers use only what a VLA policy may read (frames, instruction, proprioception), never the
simulator's privileged state. Next to llava.json a data YAML is written that feeds the robot
datasets to the 'action' stream, exactly as the input YAML does, and llava.json to the 'vlm'
stream under the input ports of a co-training graph (e.g. graphs/fullsize/qwen3vl-querytf-cotrain.yaml).
Frames stored as files are referenced in place; others are written once under images/."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..fileio import write_bytes_atomic, write_text_atomic
from .api import open_source
from .config import read_data_config
from .lerobot import DatasetError

TASK_QUESTION = "<image>\nWhich task is the robot doing?"
MOTION_QUESTION = "<image>\nWhere does the gripper move next?"
AXES = (("right", "left"), ("forward", "back"), ("up", "down"))  # +/- of the hand's x, y, z


@dataclass(frozen=True)
class MotionWords:
    """How the recorded state names the hand: which dims are x, y, z and the gripper, and the
    displacement below which an axis (metres) or the gripper (its own units) counts as still."""

    hand_dims: tuple = (0, 1, 2)
    gripper_dim: int | None = 3
    still: float = 0.01
    gripper_still: float = 0.1

    def describe(self, now: np.ndarray, later: np.ndarray) -> str:
        delta = later - now
        words = [pos if delta[d] > 0 else neg
                 for d, (pos, neg) in zip(self.hand_dims, AXES) if abs(delta[d]) > self.still]
        move = "stays where it is" if not words else (
            words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1])
        if self.gripper_dim is None:
            return move
        g = delta[self.gripper_dim]
        grip = "the gripper holds" if abs(g) <= self.gripper_still else (
            "the gripper opens" if g > 0 else "the gripper closes")
        return f"{move}; {grip}"


@dataclass(frozen=True)
class VQAPorts:
    """The co-training graph's input ports the 'vlm' stream feeds."""

    image: str = "vqa_images"
    question: str = "vqa_question"
    answer: str = "vqa_answer"


def write_demo_vqa(data_yaml, out, every: int = 4, horizon: int = 8, motion: MotionWords | None = MotionWords(),
                   ports: VQAPorts = VQAPorts(), log=lambda m: None) -> dict:
    """Write OUT/llava.json and OUT/data.yaml from the robot datasets of `data_yaml`.
    Returns a summary {records, frames, datasets, data_yaml}."""
    if every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    if horizon < 1:
        raise ValueError(f"--horizon must be at least 1, got {horizon}")
    entries = [e for e in read_data_config(data_yaml) if e.kind == "robot"]
    if not entries:
        raise DatasetError(f"{data_yaml}: no robot datasets (datasets:) to make image-text data from")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records, frames = [], 0
    for n, entry in enumerate(entries):
        src = open_source(entry.path)
        camera = _camera(entry, src)
        state_key = entry.keys.get("state", "observation.state")
        state = src.columns.get(state_key) if motion is not None else None
        if motion is not None:
            _check_motion_dims(entry, state_key, state, motion)
        for ep, (start, end) in sorted(src.episodes.items()):
            for row in range(start, end, every):
                image = _image_path(src, camera, row, out, n)
                rid = f"{n}-{ep}-{row - start}"
                turns = [{"from": "human", "value": TASK_QUESTION}, {"from": "gpt", "value": src.task(row)}]
                if state is not None:
                    later = state[min(row + horizon, end - 1)]
                    turns += [{"from": "human", "value": MOTION_QUESTION},
                              {"from": "gpt", "value": motion.describe(state[row], later)}]
                records.append({"id": rid, "image": image, "conversations": turns})
                frames += 1
        log(f"{entry.where}: {frames} frames so far")
    write_text_atomic(out / "llava.json", json.dumps(records, indent=0))
    data = {"datasets": [_robot_entry(e) for e in entries],
            "vlm": [{"json": "llava.json", "image_root": "/",
                     "keys": {ports.image: "image", ports.question: "prompt", ports.answer: "answer"}}]}
    header = (f"# written by `graphvla data vqa {data_yaml}`: the robot datasets (action stream) and image-text\n"
              f"# exchanges made from their frames every {every} (vlm stream)\n")
    write_text_atomic(out / "data.yaml", header + yaml.safe_dump(data, sort_keys=False))
    return {"records": len(records), "frames": frames, "datasets": len(entries), "data_yaml": str(out / "data.yaml")}


def _camera(entry, src) -> str:
    cams = entry.keys.get("images") or src.image_keys
    cams = [cams] if isinstance(cams, str) else list(cams)
    if not cams:
        raise DatasetError(f"{entry.where}: {entry.path} has no camera to make image-text data from")
    return cams[0]


def _check_motion_dims(entry, key, state, motion: MotionWords) -> None:
    dims = list(motion.hand_dims) + ([motion.gripper_dim] if motion.gripper_dim is not None else [])
    if state is None:
        raise DatasetError(f"{entry.where}: no state column '{key}' to describe the gripper's motion from "
                           "(map keys.state, or make the data without motion questions: --no-motion)")
    if max(dims) >= state.shape[1]:
        raise DatasetError(f"{entry.where}: state '{key}' has {state.shape[1]} dims but the motion words read "
                           f"dims {dims} (--hand-dims/--gripper-dim)")


def _image_path(src, camera: str, row: int, out: Path, n: int) -> str:
    """An absolute path to the frame: the dataset's own file when it stores one, else a PNG under OUT."""
    refs = src.image_refs.get(camera)  # None for a camera stored as video
    ref = refs[row] if refs is not None else None
    if isinstance(ref, str) and (src.root / ref).exists():
        return str((src.root / ref).resolve())
    data, ext = src.image_bytes(camera, row)
    path = out / "images" / f"{n}" / f"{row:08d}.{ext}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)  # a crash leaves no half image that a rerun would reuse
    return str(path.resolve())


def _robot_entry(e) -> dict:
    d = {"path": str(Path(e.path).resolve()), "weight": e.weight}
    if e.embodiment:
        d["embodiment"] = e.embodiment
    if e.keys:
        d["keys"] = e.keys
    if e.pad is not None:
        d["pad"] = e.pad
    if e.stream != "action":
        d["stream"] = e.stream
    return d

