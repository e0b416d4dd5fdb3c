"""RUN/data.json: which datasets a run was trained on. Training writes it (`graphvla train`, the
sweep's cells, the quickstart) and evaluation reads it, to count evaluation episodes that start from
a training scene without being told the data again. One home for both sides of the file:

    {"data": "/abs/path/given/to/--data", "datasets": ["/abs/dataset/folder", ...]}

`datasets` lists a data YAML's dataset paths (resolved against the YAML's folder), or the one
dataset folder given directly; a Hugging Face dataset id (`org/name[@revision]`) is noted as given
in `data` and as its snapshot folder in the Hub cache in `datasets`."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from .. import hub
from ..fileio import write_text_atomic

RUN_DATA = "data.json"


def write_run_data(run_dir, data) -> Path:
    """Note in RUN_DIR/data.json what DATA (a data YAML or a dataset folder) trains on."""
    given = data
    data = hub.resolve(data, repo_type="dataset").resolve()  # a Hub dataset id: its snapshot folder
    roots = [str(data)]
    if data.is_file():
        doc = yaml.safe_load(data.read_text()) or {}
        roots = [str(hub.resolve(str(d["path"]), base=data.parent, repo_type="dataset").resolve())
                 for d in doc.get("datasets") or [] if isinstance(d, dict) and d.get("path")]
    if hub.is_hub_value(str(given)):
        data = given
    path = Path(run_dir) / RUN_DATA
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"data": str(data), "datasets": roots}, indent=2) + "\n")
    return path


def run_datasets(run) -> list[str]:
    """The dataset folders RUN was trained on ([] when it has no data.json: a checkpoint folder, an
    export, a run written by other code)."""
    path = Path(run) / RUN_DATA
    return list(json.loads(path.read_text()).get("datasets") or []) if path.is_file() else []
