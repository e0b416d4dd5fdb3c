"""The starVLA fixtures' weights, each tensor stored once across all fixtures.

Most of tests/fixtures/starvla is weights, and most weights repeat: every framework on the same tiny
VLM carries that VLM, the Qwen3-VL and Qwen2.5-VL fixtures of a framework carry the same head (same
seed), and Qwen's tied `lm_head` is `embed_tokens` again. So a fixture folder does not hold its
state dict as one file. `<fixture>/state.json` names its parts, files under
`tests/fixtures/starvla/weights/` named by the sha256 of what they hold (the VLM's embedding
matrices, each language-model layer, the vision tower, the rest of the VLM, everything outside
the VLM), the sha256 of the whole state dict
and the metadata the parity script gave it. Inside a part a tensor equal byte for byte to another
is stored once (`aliases`), and a float32 tensor whose values are all bfloat16 numbers (a VLM that
starVLA loaded in bfloat16 and the script cast back to float32) is stored in bfloat16 (`bf16`) and
widened on load: no value changes. `load_state` rebuilds the float32 state dict the script saw and
checks its sha256, so a test reads exactly the numbers starVLA used.

The parity scripts (scripts/parity/starvla*.py) write fixtures with `save_state`; the tests and
bench/starvla_step.py read them with `load_state` (this module is under bench/ because the bench
imports nothing from tests/; it needs only torch and safetensors). Nothing here comes from starVLA."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "starvla"
FORMAT = "graphvla starvla fixture weights 1"
VLM = "qwen_vl_interface."


def digest(state: dict) -> str:
    """sha256 over a state dict: for each key in sorted order its name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().contiguous()
        h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def part_of(key: str) -> str:
    """The part a key is stored in: outside the VLM (the action head) one part; inside it the token
    embedding / output matrices (they differ between tokenizers), each language-model layer (a
    fixture may train only the last), the vision tower, and the rest."""
    if not key.startswith(VLM):
        return "head"
    if ".embed_tokens." in key or key.endswith("lm_head.weight"):
        return "vlm_embeddings"
    if ".language_model.layers." in key:
        return "vlm_layer" + key.split(".language_model.layers.")[1].split(".")[0]
    return "vlm_vision" if ".visual." in key else "vlm_rest"


def _bf16_exact(t: torch.Tensor) -> bool:
    return t.dtype == torch.float32 and t.numel() > 0 and torch.equal(
        t.bfloat16().float().reshape(-1).view(torch.int32), t.reshape(-1).view(torch.int32))


def save_state(folder: Path, state: dict, metadata: dict | None = None, name: str = "state",
               store: Path | None = None) -> dict:
    """Write `state` (name -> tensor) as `folder/<name>.json` plus its parts in `store` (by default
    the `weights` folder beside `folder`); returns the json written."""
    folder, store = Path(folder), Path(store) if store else Path(folder).parent / "weights"
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    store.mkdir(parents=True, exist_ok=True)
    parts = []
    for part in sorted({part_of(k) for k in state}):
        tensors = {k: v for k, v in state.items() if part_of(k) == part}
        file = f"{digest(tensors)[:16]}.safetensors"
        stored, aliases, bf16, seen = {}, {}, [], {}
        for key in sorted(tensors):
            t = tensors[key]
            fingerprint = (str(t.dtype), tuple(t.shape), hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest())
            if fingerprint in seen:
                aliases[key] = seen[fingerprint]
                continue
            seen[fingerprint] = key
            if _bf16_exact(t):
                bf16.append(key)
                t = t.bfloat16()
            stored[key] = t
        # one metadata entry: safetensors writes its metadata map in no fixed order, one key keeps
        # the file's bytes the same from run to run
        save_file(stored, str(store / file), metadata={"graphvla": json.dumps(
            {"format": FORMAT, "part": part, "aliases": aliases, "bf16": bf16}, sort_keys=True)})
        parts.append(file)
    index = {"format": FORMAT, "sha256": digest(state), "tensors": len(state),
             "parts": [f"{store.name}/{p}" for p in parts], "metadata": dict(metadata or {})}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return index


def read_part(path: Path) -> dict:
    """The float32 (or original dtype) tensors of one part file, aliases restored."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("graphvla", "{}"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a starVLA fixture weights part (format {meta.get('format')!r}, expected {FORMAT!r})")
    tensors = load_file(str(path))
    for key in meta["bf16"]:
        tensors[key] = tensors[key].float()
    for key, source in meta["aliases"].items():
        tensors[key] = tensors[source].clone()
    return tensors


def state_index(folder: Path, name: str = "state") -> dict:
    path = Path(folder) / f"{name}.json"
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def state_metadata(folder: Path, name: str = "state") -> dict:
    """The metadata the parity script stored with the state (starvla_commit, ...)."""
    return state_index(folder, name)["metadata"]


def load_state(folder: Path, name: str = "state") -> dict:
    """The state dict the parity script saved for `folder`, checked against its sha256."""
    folder = Path(folder)
    index = state_index(folder, name)
    state = {}
    for part in index["parts"]:
        tensors = read_part(folder.parent / part)
        clash = set(tensors) & set(state)
        if clash:
            raise ValueError(f"{folder / (name + '.json')}: part {part} repeats keys {sorted(clash)[:3]}")
        state.update(tensors)
    got = digest(state)
    if got != index["sha256"] or len(state) != index["tensors"]:
        raise ValueError(f"{folder / (name + '.json')}: its parts rebuild {len(state)} tensors with sha256 {got}, "
                         f"but it records {index['tensors']} with {index['sha256']} (regenerate with the parity script)")
    return dict(sorted(state.items()))


def prune(fixtures: Path = FIXTURES, store: str = "weights", dry_run: bool = False) -> list[str]:
    """Remove the part files of `fixtures/store` that no `*/*.json` state index names (a fixture
    regenerated with other weights leaves its old parts behind); returns their names (with
    `dry_run`, only returns them)."""
    fixtures = Path(fixtures)
    named = set()
    for index in fixtures.glob("*/*.json"):
        try:
            data = json.loads(index.read_text())
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("format") == FORMAT:
            named.update(data["parts"])
    gone = sorted(p.name for p in (fixtures / store).glob("*.safetensors") if f"{store}/{p.name}" not in named)
    for name in [] if dry_run else gone:
        (fixtures / store / name).unlink()
    return gone
