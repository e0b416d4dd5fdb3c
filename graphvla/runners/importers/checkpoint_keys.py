"""What the LeRobot importers of the large policies (lerobot_pi0.py, lerobot_smolvla.py) read alike from a
checkpoint: its keys renamed by prefix rules, and its tensors' shapes without loading them."""
from __future__ import annotations


def by_rules(key: str, rules) -> str:
    """`key` renamed by the first (their prefix, our prefix) rule it starts with; '' when none fits."""
    for theirs, ours in rules:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return ""


def header_shapes(weights_path) -> dict:
    """key -> shape of a safetensors file, read from its header (no tensor is loaded)."""
    from safetensors import safe_open

    with safe_open(str(weights_path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
