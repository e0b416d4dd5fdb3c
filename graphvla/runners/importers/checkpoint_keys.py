"""What the importers do alike with a checkpoint: its keys renamed by prefix rules and its tensors' shapes
read without loading them (lerobot_pi0.py, lerobot_smolvla.py); each tensor checked against the graph's
and the names a refusal lists (lerobot.py's and starvla.py's map_weights)."""
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


def fitted(key: str, tensor, name: str, want, weights_path, error: type[Exception]):
    """`tensor` (the checkpoint's `key`) as the graph's `name` needs it: `want`'s dtype, contiguous;
    `error` naming both and their shapes when the shapes differ."""
    if tuple(tensor.shape) != tuple(want.shape):
        raise error(f"{weights_path}: '{key}' has shape {list(tensor.shape)}, the graph's {name} "
                    f"needs {list(want.shape)}")
    return tensor.to(want.dtype).contiguous()


def listed(names, most: int = 8) -> str:
    """The first `most` names, comma separated, with ' ...' when there are more."""
    names = list(names)
    return ", ".join(names[:most]) + (" ..." if len(names) > most else "")
