"""The trainer's side of a checkpoint that the run format (policy/checkpoint.py) does not cover:
sharded engines' weights and optimizer shards (DeepSpeed ZeRO, FSDP) and the RNG state that
--resume restores."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

ENGINE_DIR = "engine"  # DeepSpeed / FSDP: Accelerate's save_state (weight and optimizer shards), for --resume


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

    from ...policy.checkpoint import untied_names

    keep = {}
    for name in untied_names(model):
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
