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


# data work in the DataLoader workers ------------------------------------------------------------
PREPARED = "__prepared__/"  # batch keys of encodings made in the workers, one per block node


def worker_encoders(cg, stream: str) -> list:
    """(node, block id, {block port: batch key}, encoder) for each block of the stream's train
    graph that can encode its inputs in a DataLoader worker (a `batch_encoder()`, e.g.
    backbone.hf_vlm's processor and chat template) and whose inputs are all graph inputs."""
    from ...compiler import dag as D

    out = []
    for node in D.train_blocks(cg.dag, stream):
        owner = cg.dag.nodes[node]["owner"]
        make = getattr(cg.model[owner], "batch_encoder", None)
        if make is None:
            continue
        refs = {e["dst_port"]: e["ref"] for _, _, e in cg.dag.in_edges(node, data=True)}
        if not all(r.startswith(D.INPUT_PREFIX) for r in refs.values()):
            continue  # an input made by another block (e.g. FAST tokens) exists only in the step
        encoder = make()
        if encoder is not None:
            out.append((node, owner, {p: r[len(D.INPUT_PREFIX):] for p, r in refs.items()}, encoder))
    return out


class EncodingCollate:
    """collate, then the workers' encodings (tensors) of each encoder's block under PREPARED + node."""

    def __init__(self, collate, encoders: list):
        self.collate, self.encoders = collate, [(n, ports, enc) for n, _, ports, enc in encoders]

    def __call__(self, samples):
        batch = self.collate(samples)
        for node, ports, encoder in self.encoders:
            batch[PREPARED + node] = encoder(**{p: batch[k] for p, k in ports.items() if k in batch})
        return batch


def hand_over_encodings(batch: dict, model, encoders: list) -> dict:
    """Give each block the encoding its worker made, tied to the very text object its forward will
    receive (a block that gets other text encodes in the step, as without workers)."""
    for node, owner, ports, _ in encoders:
        encoding = batch.pop(PREPARED + node, None)
        if encoding is not None and ports.get("text") in batch:
            model[owner].use_prepared(batch[ports["text"]], encoding)
    return batch
