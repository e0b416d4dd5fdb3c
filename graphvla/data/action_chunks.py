"""Action chunks [N, H, A] to fit the FAST action tokenizer on (`graphvla fast-fit`): from a .npy or
.npz of normalized chunks, or from a LeRobot (or shard) folder: every window of H frames of the
action column inside an episode, padded past its end by repeating the last action, normalized with
the dataset's own statistics as the trainer would."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def load_chunks(path: Path) -> np.ndarray:
    """Action chunks [N, H, A] from a .npy array or a .npz archive (key 'actions', or its only array)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if path.suffix == ".npy":
        arr = np.load(path)
    elif path.suffix == ".npz":
        with np.load(path) as z:
            keys = list(z.keys())
            if "actions" in keys:
                arr = z["actions"]
            elif len(keys) == 1:
                arr = z[keys[0]]
            else:
                raise ValueError(f"{path}: holds arrays {keys}; name the action chunks 'actions'")
    else:
        raise ValueError(f"{path}: expected a .npy or .npz file of action chunks [N, horizon, action_dim]")
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected action chunks [N, horizon, action_dim], got shape {list(arr.shape)}")
    return arr


def lerobot_chunks(root: Path, key: str, horizon: int, norm: str) -> np.ndarray:
    """Normalized action chunks [N, horizon, A] from a LeRobot (or packed shard) folder."""
    from .api import open_source
    from .normalize import Normalizer
    from .stats import compute_stats

    source = open_source(root)
    if key not in source.columns:
        raise ValueError(f"{root}: no column '{key}'; numeric columns: {', '.join(sorted(source.columns))}")
    actions = np.asarray(source.columns[key], dtype=np.float32)
    actions = Normalizer({key: compute_stats(actions)}, {key: norm}).normalize_array(key, actions)
    chunks = []
    for start, end in source.episodes.values():
        rows = np.arange(start, end)
        windows = np.minimum(rows[:, None] + np.arange(horizon)[None, :], end - 1)
        chunks.append(actions[windows])
    return np.concatenate(chunks)
