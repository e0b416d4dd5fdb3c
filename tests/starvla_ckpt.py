"""starVLA checkpoint fixtures without a second copy of their weights.

A `tests/fixtures/starvla/<name>_ckpt/` fixture keeps the trainer's folder (`ckpt/`: config.yaml,
dataset_statistics.json, summary.jsonl) and what starVLA served from it (expected.json,
expected.safetensors), but not its weights file when that file is a parity fixture's state dict
saved again (`save_file(state)`, as the parity script wrote it before starVLA loaded it; the state
is `<fixture>/state.json` in the weights store, bench/starvla_weights.py). expected.json names that
file (`checkpoint`), where it came from (`checkpoint_from`: `<fixture>/state.json` under
tests/fixtures/starvla, then a note) and its sha256
(`checkpoint_sha256`); `starvla_run` rebuilds the folder and checks the digest, so the tests read
byte for byte the file starVLA loaded."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from graphvla.fileio import sha256_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from starvla_weights import load_state  # noqa: E402  (bench/: the fixtures' weights store)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "starvla"


def starvla_run(fixture: Path, dst: Path, weights: dict | None = None) -> Path:
    """The trainer's folder of `fixture` (a *_ckpt fixture) at `dst`, its weights file rebuilt from
    `weights` (the state dict the parity script saved; by default the state `checkpoint_from` names:
    `<fixture>/state.json`, or `<fixture>/state.safetensors` as fixtures written before the weights
    store name it, read from the store all the same)."""
    meta = json.loads((fixture / "expected.json").read_text())
    shutil.copytree(fixture / "ckpt", dst)
    (dst / "checkpoints" / ".keep").unlink(missing_ok=True)  # only there so git keeps the folder
    path = dst / Path(meta["checkpoint"]).relative_to("ckpt")
    path.parent.mkdir(parents=True, exist_ok=True)
    source = FIXTURES / meta["checkpoint_from"].split()[0]
    save_file(load_state(source.parent, source.stem) if weights is None else weights, str(path))
    digest = sha256_of(path)
    assert digest == meta["checkpoint_sha256"], (
        f"{fixture.name}/expected.json: checkpoint_sha256 {meta['checkpoint_sha256']}, but {path.name} "
        f"rebuilt from {meta['checkpoint_from']} hashes to {digest} (regenerate both with the parity script)")
    return dst


def expected(fixture: Path) -> tuple[dict, dict]:
    """expected.json and expected.safetensors of a *_ckpt fixture; the observations' images are not
    stored there again but read from the parity case expected.json's `images_from` names (its first
    rows, one per instruction)."""
    meta = json.loads((fixture / "expected.json").read_text())
    data = load_file(str(fixture / "expected.safetensors"))
    if "images_from" in meta:
        data["images"] = load_file(str(FIXTURES / meta["images_from"]))["images"][: len(meta["instructions"])].contiguous()
    return meta, data
