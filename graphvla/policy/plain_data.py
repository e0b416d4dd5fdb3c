"""Plain data (dicts with text keys, lists, str, int, float, bool, None) from values that may hold
numpy or torch scalars and arrays: what the checkpoint's JSON files and the server's msgpack
metadata store."""
from __future__ import annotations

import math

import numpy as np
import torch


def plain_data(value, *, for_json: bool = False):
    """`value` with mappings as dicts (keys as text), tuples as lists, numpy scalars as Python numbers
    and numpy/torch arrays as nested lists.

    for_json: the result goes into a JSON file that is read back: a non-finite Python float becomes
    its text ("nan", "inf"), and a value of any other type is refused (TypeError). Otherwise (msgpack,
    for information only) floats stay as they are and any other value becomes its text."""
    if isinstance(value, dict):
        return {str(k): plain_data(v, for_json=for_json) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v, for_json=for_json) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if for_json and isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if for_json:
        raise TypeError(f"cannot store {type(value).__name__} in a JSON checkpoint file: {value!r}")
    return str(value)
