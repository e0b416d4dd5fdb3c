"""The base of a block's processor step (blocks/base.py `processor_step`): the block makes it
for one node of the graph, reading that node's wiring.

A bound step reads the batch keys its ports are wired to (`sources`: port -> a graph input's
name, or `NODE.PORT` made by an earlier step: glue.state_text's prompt feeding a VLM's step) and
writes the ports it makes as `NODE.PORT`, which the compiled graphs take as inputs named
`NODE_PORT`. Ports in `optional` may be absent (a mask, an answer); a step whose other ports are
absent writes nothing: training targets (actions, answers) are absent at inference, so their
steps make nothing there and the inference graph never takes what they make.

A step that fails inside a Pipeline is named with its block, the ports it reads and the first
sample it fails on (processors/base.py locate_failure)."""
from __future__ import annotations

from .base import ProcessorStep


class BlockStep(ProcessorStep):
    optional: tuple = ()  # ports that may be absent from the batch

    def __init__(self, block: str, sources: dict, makes):
        self.block = block
        self.sources = dict(sources)  # port -> batch key
        self.makes = tuple(makes)
        self.reads = tuple(self.sources.values())
        self.writes = tuple(f"{block}.{p}" for p in self.makes)

    # subclasses ---------------------------------------------------------------------------------
    def run(self, **ports) -> dict:
        """{port: value} of the ports it makes, from the batch's values of its ports."""
        raise NotImplementedError

    def settings(self) -> dict:
        """JSON-able settings beside the binding (config() adds block, sources, makes)."""
        return {}

    @classmethod
    def from_settings(cls, config: dict, folder, block: str, sources: dict, makes) -> "BlockStep":
        raise NotImplementedError

    # the contract -------------------------------------------------------------------------------
    def __call__(self, batch: dict) -> dict:
        inputs = {p: batch[k] for p, k in self.sources.items() if k in batch and batch[k] is not None}
        if any(p not in inputs for p in self.sources if p not in self.optional):
            return batch  # e.g. a training target at inference: nothing to make
        made = self.run(**inputs)
        out = dict(batch)
        out.update({f"{self.block}.{p}": v for p, v in made.items() if p in self.makes})
        return out

    def config(self) -> dict:
        return {"block": self.block, "sources": dict(self.sources), "makes": list(self.makes), **self.settings()}

    @classmethod
    def load(cls, config: dict, folder) -> "BlockStep":
        return cls.from_settings(config, folder, config["block"], config["sources"], config["makes"])

    def describe(self) -> str:
        reads = ", ".join(f"{k}" if k == p else f"{k} as {p}" for p, k in self.sources.items())
        return f"{self.block}: {self.kind}  {reads} -> {', '.join(self.writes)}"

    def __eq__(self, other):
        return type(other) is type(self) and other.config() == self.config()

    __hash__ = None


def bind(step_cls, block, node, sources, ports, makes, *args, **kwargs):
    """`step_cls(node, {port: key}, makes, ...)` for a block's node: `sources` (port -> batch key)
    as given, or the block's own wiring (its PortInfos: 'inputs.X' is the batch key X, 'B.P' the
    port P made by block B's step); only the wired ones among `ports` are read."""
    if sources is None:
        sources = {p: _key(info.source) for p, info in block.port_info.items()}
    return step_cls(node or block.block_id, {p: k for p, k in sources.items() if p in ports}, makes, *args, **kwargs)


def _key(source: str) -> str:
    return source[len("inputs."):] if source.startswith("inputs.") else source
