"""The trainer's side of the data contract (graphvla.data): loading a DataBundle, the
Normalizer class, and fitting a collated batch to a train graph's inputs."""
from __future__ import annotations

import torch


def load_bundle(data, spec, split: str = "train"):
    """DATA (a data YAML, a LeRobot folder or shards) -> DataBundle, via graphvla.data.api."""
    from ...data.api import load_data

    return load_data(data, spec, split=split)


def collate_fn():
    from ...data.api import collate

    return collate


def normalizer_class():
    from ...data.normalize import Normalizer

    return Normalizer


def graph_inputs(gm) -> tuple[list[str], list[str]]:
    """(required, optional) placeholder names of an fx graph."""
    required, optional = [], []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            (optional if node.args else required).append(node.target)
    return required, optional


def fit_batch(batch: dict, required: list, optional: list, stream: str) -> dict:
    """Keep the keys the graph takes; a missing required port is an error naming it."""
    missing = [k for k in required if k not in batch]
    if missing:
        raise KeyError(f"stream '{stream}': batches lack the input port(s) {missing} the graph needs "
                       f"(batch keys: {sorted(batch)})")
    return {k: batch[k] for k in required + optional if k in batch}


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def normalize(normalizer, batch: dict) -> dict:
    if normalizer is None:
        return batch
    out = normalizer.normalize(batch)
    return batch if out is None else out
