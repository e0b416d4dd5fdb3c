"""The trainer's side of the data contract (graphvla.data): loading a DataBundle, the
Normalizer class, the graph's pipelines bound to the data's statistics (`pipelines`), fitting a
collated batch to a train graph's inputs, and the data work that runs where batches are collated
(DataLoader workers): the `preprocess` pipeline (normalization, the blocks' processor steps) and
the blocks' batch encoders (blocks/prepared.py), handed back to the blocks in the step."""
from __future__ import annotations

from collections import Counter
from typing import NamedTuple

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
    stats = None if normalizer is None else normalizer.stats
    modes = None if normalizer is None else normalizer.modes
    return cg.preprocess.with_statistics(stats, modes), cg.postprocess.with_statistics(stats, modes)


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
    """Run a preprocess pipeline (or a Normalizer's step) on a collated batch."""
    return _preprocess_of(normalizer)(batch)


def _preprocess_of(preprocess):
    """A callable batch -> batch: a Pipeline as it is, a Normalizer's Normalize step, or no-op."""
    if preprocess is None:
        return _unchanged
    return getattr(preprocess, "step", preprocess)


def _unchanged(batch):
    return batch


# data work in the DataLoader workers ------------------------------------------------------------
PREPARED = "__prepared__/"  # batch keys of encodings made in the workers, one per block node


class WorkerEncoding(NamedTuple):
    """One block node whose data work runs in the workers. sources: block port -> the batch key of
    a graph input, or (node, port) of an output that an earlier encoder in the same worker makes."""
    node: str
    owner: str
    sources: dict
    encoder: object  # a blocks.prepared.BatchEncoder


def worker_encoders(cg, stream: str) -> list[WorkerEncoding]:
    """The blocks of the stream's train graph, in graph order, that encode in a DataLoader worker
    (a `batch_encoder()`: backbone.hf_vlm's processor and chat template, fast.encode's and
    head.fast's BPE, glue.state_text's prompt): those whose encoder reads only graph inputs or
    outputs that an earlier encoder makes (fast.encode's tokens feeding the VLM's answers)."""
    from ...compiler import dag as D

    blocks = cg.train_block_ids(stream)
    calls = Counter(cg.block(n).owner for n in blocks)
    made, out = {}, []  # node -> output ports its encoding holds
    for node in blocks:
        owner = cg.block(node).owner
        make = getattr(cg.model[owner], "batch_encoder", None)
        if make is None or calls[owner] > 1:
            continue  # a module called twice in a step would mix the encodings of its calls
        encoder = make()
        if encoder is None:
            continue
        edges = {port: (src, src_port) for port, src, src_port, _ in cg.in_edges(node)}
        sources = {}
        for port in encoder.reads:
            if port not in edges:
                continue
            src, src_port = edges[port]
            if src.startswith(D.INPUT_PREFIX):
                sources[port] = src[len(D.INPUT_PREFIX):]
            elif src_port in made.get(src, ()):
                sources[port] = (src, src_port)
            else:
                break  # made by a block that runs only in the step (e.g. a backbone's features)
        else:
            if encoder.tie in sources:
                out.append(WorkerEncoding(node, owner, sources, encoder))
                made[node] = encoder.outputs
    return out


_ABSENT = object()


def _source(batch: dict, encodings: dict, source):
    if isinstance(source, tuple):
        encoding = encodings.get(source[0])
        return _ABSENT if encoding is None else encoding[source[1]]
    return batch.get(source, _ABSENT)


class WorkerCollate:
    """collate, the preprocess pipeline (normalization, blocks' processor steps: plain data that
    pickles, the same steps `Policy` runs), then each encoder in graph order; its encoding goes
    under PREPARED + node. An encoder whose inputs the batch lacks is skipped: its block encodes in
    the step (or fit_batch names the missing port)."""

    def __init__(self, collate, preprocess, encoders: list[WorkerEncoding]):
        self.collate, self.preprocess, self.encoders = collate, _preprocess_of(preprocess), encoders

    def __call__(self, samples):
        batch = self.preprocess(self.collate(samples))
        encodings = {}
        for w in self.encoders:
            inputs = {port: _source(batch, encodings, s) for port, s in w.sources.items()}
            if all(v is not _ABSENT for v in inputs.values()):
                encodings[w.node] = batch[PREPARED + w.node] = w.encoder(**inputs)
        return batch


def take_encodings(batch: dict, encoders: list[WorkerEncoding]) -> dict:
    """Remove the workers' encodings from the batch: node -> encoding."""
    return {w.node: batch.pop(PREPARED + w.node) for w in encoders if PREPARED + w.node in batch}


def hand_over_encodings(batch: dict, encodings: dict, model, encoders: list[WorkerEncoding]) -> None:
    """Give each block its worker's encoding, tied to the very object its forward will receive on
    the encoder's tie port: the batch's value as the graph gets it (called in the wrapped module's
    forward, after any input move), or the value an upstream block returns from its own encoding.
    A block that gets anything else encodes in the step, as without workers."""
    for w in encoders:
        if w.node in encodings:
            tie = _source(batch, encodings, w.sources[w.encoder.tie])
            if tie is not _ABSENT:
                model[w.owner].use_prepared(tie, encodings[w.node])
