"""The trainer's side of the data contract (graphvla.data): loading a DataBundle, the
Normalizer class, the graph's pipelines bound to the data's statistics (`pipelines`), fitting a
collated batch to a train graph's inputs, and the data work that runs where batches are collated
(DataLoader workers): the `preprocess` pipeline (normalization, the blocks' processor steps)."""
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


def pipelines(cg, normalizer):
    """(preprocess, postprocess) of the compiled graph with the normalizer's statistics and modes
    bound: what the training collate runs and what every checkpoint saves (policy/checkpoint.py
    write_pipelines). Without a normalizer the normalization steps are left out."""
    if normalizer is None:
        return cg.bound_pipelines(None)
    return cg.bound_pipelines(normalizer.stats, normalizer.modes)


def graph_inputs(gm) -> tuple[list[str], list[str]]:
    """(required, optional) batch keys of an fx graph's inputs: its placeholders' names, or for the
    ports a block's processor step makes, NODE.PORT (the placeholder is NODE_PORT)."""
    required, optional = [], []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            (optional if node.args else required).append(node.meta.get("batch_key", node.target))
    return required, optional


def fit_batch(batch: dict, required: list, optional: list, stream: str) -> dict:
    """Keep the keys the graph takes, as its argument names; a missing required port is an error naming it."""
    missing = [k for k in required if k not in batch]
    if missing:
        raise KeyError(f"stream '{stream}': batches lack the input port(s) {missing} the graph needs "
                       f"(batch keys: {sorted(batch)})")
    from ...compiler.lower import graph_argument

    return {graph_argument(k): batch[k] for k in required + optional if k in batch}


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _preprocess_of(preprocess):
    """A callable batch -> batch: a Pipeline as it is, a Normalizer's Normalize step, or no-op."""
    if preprocess is None:
        return _unchanged
    return getattr(preprocess, "step", preprocess)


def _unchanged(batch):
    return batch


# data work in the DataLoader workers ------------------------------------------------------------
class WorkerCollate:
    """collate, then the preprocess pipeline (normalization, the blocks' processor steps: plain data
    that pickles, the same steps `Policy` runs), so the step receives the graph's tensors."""

    def __init__(self, collate, preprocess):
        self.collate, self.preprocess = collate, _preprocess_of(preprocess)

    def __call__(self, samples):
        return self.preprocess(self.collate(samples))
