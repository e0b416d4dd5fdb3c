"""Data work a block hands to the DataLoader workers (runners/train/dataio.py runs it there).

A block with `batch_encoder()` returns a picklable `BatchEncoder` (or None when it cannot encode
outside its forward, e.g. built on meta). A worker calls it on the collated, normalized batch;
the trainer hands the result back with `use_prepared(tie, encoding)`, and the block's forward
takes it with `take_prepared(tie)` only when it receives that very object (`is`) on the `tie`
port: any other call (inference, another batch, an input the graph rebuilt) encodes as before, so
the encoding can never be used for data it was not made from.

An encoder whose encoding holds some of the block's outputs (`outputs`, a dict port -> value)
can feed the encoders of blocks downstream in the same worker (fast.encode's tokens into
backbone.hf_vlm's answers); the block then returns those very values, so the downstream tie holds.
"""
from __future__ import annotations


class BatchEncoder:
    """What a DataLoader worker runs for one block node. Subclasses set:
    reads: the block's input ports it takes (the wired ones are passed by name);
    tie: the input port whose object the block's forward must receive to use the encoding;
    outputs: the block's output ports the encoding holds (for encoders downstream), or ()."""

    reads: tuple[str, ...] = ()
    tie: str = ""
    outputs: tuple[str, ...] = ()

    def __call__(self, **inputs) -> dict:
        raise NotImplementedError


class Prepared:
    """Block mixin: the encoding handed over for the next forward whose `tie` input is that object."""

    _prepared = None  # (tie object, encoding)

    def use_prepared(self, tie, encoding: dict) -> None:
        self._prepared = (tie, encoding)

    def take_prepared(self, tie) -> dict | None:
        prepared = self._prepared
        if prepared is None or prepared[0] is not tie:
            return None
        self._prepared = None
        return prepared[1]
