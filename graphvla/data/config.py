"""The data YAML: which datasets feed which training stream.

    datasets:                      # robot data -> the 'action' stream (LeRobot folders or shard folders)
      - path: ../runs/data/mt10    # relative to this file, or a Hub dataset id: lerobot/pusht@v2.1
        weight: 1.0                # mixture weight (sampling probability ~ weight)
        embodiment: sawyer         # tag; fills a text input named 'embodiment' if the graph has one
        keys: {images: [observation.images.corner], state: observation.state,
               actions: action, instruction: task}     # input port -> dataset key
        pad: false                 # zero-pad narrower state/action to the port width (on for mixtures)
    vlm:                           # LLaVA-JSON image-text data -> the 'vlm' stream
      - json: ../runs/data/vqa.json
        image_root: ../runs/data/vqa-images             # default: the JSON file's folder
        keys: {vlm_images: image, vlm_prompt: prompt, vlm_answer: answer}

Any entry may name another stream with `stream:`."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import hub

ROBOT_KEYS = {"path", "weight", "embodiment", "keys", "pad", "stream", "description"}
VLM_KEYS = {"json", "image_root", "weight", "keys", "stream", "description"}
TOP_KEYS = {"datasets", "vlm", "description", "name"}


@dataclass
class Entry:
    kind: str  # 'robot' | 'vlm'
    path: Path
    stream: str
    weight: float = 1.0
    embodiment: str = ""
    keys: dict = field(default_factory=dict)
    pad: bool | None = None
    image_root: Path | None = None
    where: str = ""  # 'file.yaml: datasets[0]' for messages


def read_data_config(data) -> list[Entry]:
    """Entries from a data YAML, or one robot entry for a dataset/shard folder (a local one, or a
    Hugging Face dataset id `org/name[@revision]` read through the Hub cache: graphvla/hub.py)."""
    p = hub.resolve(data, repo_type="dataset")
    if p.is_dir():
        return [Entry("robot", p, "action", where=str(Path(data)) if p == Path(data) else f"{data} ({p})")]
    if not p.exists():
        raise FileNotFoundError(f"data '{data}' not found (give a data YAML, a LeRobot folder, a shard folder or a "
                                "Hugging Face dataset id org/name[@revision])")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{p}: a data YAML must be a mapping with 'datasets:' and/or 'vlm:'")
    _unknown(doc, TOP_KEYS, str(p))
    entries = []
    for section, kind, allowed, default_stream in (("datasets", "robot", ROBOT_KEYS, "action"), ("vlm", "vlm", VLM_KEYS, "vlm")):
        items = doc.get(section) or []
        if not isinstance(items, list):
            raise ValueError(f"{p}: '{section}' must be a list of entries")
        for i, e in enumerate(items):
            where = f"{p}: {section}[{i}]"
            if not isinstance(e, dict):
                raise ValueError(f"{where}: an entry must be a mapping")
            _unknown(e, allowed, where)
            key = "path" if kind == "robot" else "json"
            if key not in e:
                raise ValueError(f"{where}: missing '{key}'")
            weight = e.get("weight", 1.0)
            if not isinstance(weight, (int, float)) or weight <= 0:
                raise ValueError(f"{where}: weight must be a positive number, got {weight!r}")
            keys = e.get("keys") or {}
            if not isinstance(keys, dict):
                raise ValueError(f"{where}: keys must map input ports to dataset keys")
            path = _dataset_path(p, e[key], where) if kind == "robot" else (p.parent / str(e[key])).resolve()
            entries.append(Entry(kind, path, str(e.get("stream", default_stream)),
                                 float(weight), str(e.get("embodiment", "")), dict(keys), e.get("pad"),
                                 (p.parent / str(e["image_root"])).resolve() if e.get("image_root") else None, where))
    if not entries:
        raise ValueError(f"{p}: no datasets (add 'datasets:' or 'vlm:' entries)")
    return entries


def _dataset_path(yaml_file: Path, value, where: str) -> Path:
    """A dataset entry's path: relative to the YAML's folder, or a Hugging Face dataset id."""
    try:
        return hub.resolve(str(value), base=yaml_file.parent, repo_type="dataset").resolve()
    except hub.HubError as e:
        raise hub.HubError(f"{where}: path '{value}': {e}") from None


def _unknown(d: dict, allowed: set, where: str) -> None:
    for k in d:
        if k not in allowed:
            hint = difflib.get_close_matches(str(k), sorted(allowed), n=1)
            raise ValueError(f"{where}: unknown key '{k}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                             + f"; allowed: {', '.join(sorted(allowed))}")
