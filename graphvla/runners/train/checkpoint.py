"""Checkpoints: RUN_DIR/checkpoints/step_XXXXXXX/ written atomically, `latest` pointer, pruning.

A checkpoint directory is filled under a temporary name and renamed into place only when every
file is written and flushed, so a crash mid-save never leaves a `step_*` directory that resume
would pick up; the `latest` text file is replaced atomically after the rename."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

from ...fileio import TMP_PREFIX, write_text_atomic

STEP_DIR = re.compile(r"^step_(\d{7,})$")
FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "rng.pt", "spec.yaml",
         "graph.json", "normalization.json", "assets.json")
ENGINE_DIR = "engine"  # DeepSpeed / FSDP: Accelerate's save_state (weight and optimizer shards), for --resume


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoints_dir(run_dir) -> Path:
    return Path(run_dir) / "checkpoints"


def begin_checkpoint(run_dir, step: int) -> Path:
    """The temporary folder a checkpoint is written into (every process may write its shards there)."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{TMP_PREFIX}{step_dir_name(step)}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def write_checkpoint(run_dir, step: int, write_files, keep_last: int | None = None, tmp: Path | None = None) -> Path:
    """Create checkpoints/step_XXXXXXX atomically. write_files(tmp_dir) writes the contents; `tmp`
    (from begin_checkpoint) may already hold files other processes wrote."""
    root = checkpoints_dir(run_dir)
    final = root / step_dir_name(step)
    tmp = tmp or begin_checkpoint(run_dir, step)
    try:
        write_files(tmp)
        _fsync_dir_files(tmp)
        if final.exists():  # saving the same step again (e.g. after a resume): replace it
            old = root / f"{TMP_PREFIX}old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / "latest", final.name + "\n")
    if keep_last:
        prune(root, keep_last)
    return final


def _fsync_dir_files(d: Path) -> None:
    for p in d.rglob("*"):
        if p.is_file() and not p.is_symlink():  # symlinks: referenced base weights, not ours to flush
            with open(p, "rb") as f:
                os.fsync(f.fileno())


# sharded engines (DeepSpeed ZeRO, FSDP) -------------------------------------------------------
def broadcast_path(path: Path | None, processes: int) -> Path:
    """The main process's temporary checkpoint folder, on every process."""
    if processes == 1:
        return path
    from accelerate.utils import broadcast_object_list

    return Path(broadcast_object_list([str(path) if path else None], from_process=0)[0])


def full_state_dict(accelerator, model) -> dict | None:
    """The whole model's weights on the main process (None elsewhere), gathered from the shards
    under ZeRO-3 / FSDP. Every process must call it. Keys are those of `cg.model` (block ids)."""
    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process or state is None:
        return None
    prefix = "blocks."  # GraphTrainModule holds the blocks under .blocks
    return {k[len(prefix):]: v.detach().cpu().contiguous() for k, v in state.items() if k.startswith(prefix)}


def save_full_state_dict(state: dict, model, path: Path) -> None:
    """Write gathered weights as safetensors, one entry per parameter: names that `model` ties to
    the same parameter (e.g. tied embeddings) keep only the first, as safetensors' save_model
    does, so `load_model(strict=True)` accepts the file."""
    from safetensors.torch import save_file

    seen, keep = set(), {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if name not in state:
            raise KeyError(f"the gathered weights lack '{name}'")
        keep[name] = state[name].clone() if any(state[name] is t for t in keep.values()) else state[name]
    save_file(keep, str(path), metadata={"format": "pt"})


def load_engine_state(accelerator, ckpt: Path) -> None:
    """Load the weight and optimizer shards a DeepSpeed / FSDP checkpoint saved (after prepare)."""
    folder = Path(ckpt) / ENGINE_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint {ckpt} has no {ENGINE_DIR}/ folder: it was not written by a sharded "
                                "engine (DeepSpeed / FSDP); resume it with the accelerate config it was trained with")
    accelerator.load_state(str(folder))


def step_dirs(root: Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last checkpoints (never the one `latest` names)."""
    latest = read_latest_name(root)
    dirs = step_dirs(root)
    for p in dirs[: max(len(dirs) - keep_last, 0)]:
        if p.name != latest:
            shutil.rmtree(p, ignore_errors=True)


def clean_temporaries(root: Path) -> None:
    """Remove leftovers of saves that crashed (never visible as checkpoints)."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def read_latest_name(root: Path) -> str | None:
    f = root / "latest"
    if f.is_file():
        name = f.read_text().strip()
        return name or None
    return None


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint `latest` names, else the newest complete step directory, else None."""
    root = checkpoints_dir(run_dir)
    name = read_latest_name(root)
    if name and (root / name).is_dir():
        return root / name
    dirs = step_dirs(root)
    return dirs[-1] if dirs else None


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory from a run directory (its latest checkpoint) or a checkpoint dir."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is not None:
            return found
        raise FileNotFoundError(f"{p} has no checkpoint (expected {p}/checkpoints/step_*/ or a model.safetensors in it)")
    raise FileNotFoundError(f"checkpoint {p} does not exist")


# RNG state -------------------------------------------------------------------------------------
def rng_state() -> dict:
    """RNG states in types `torch.load(weights_only=True)` accepts: numpy's key array travels
    as a tensor, so resuming never has to unpickle arbitrary objects."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())
