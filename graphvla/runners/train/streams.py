"""Co-training streams: which stream each optimizer step trains, and the batches of each stream.

A step trains one stream (its own train graph `cg.train[stream]` and its own data). Streams
alternate in a fixed cycle built from their integer ratios, so the stream of step i depends on i
only: resuming needs no schedule state."""
from __future__ import annotations

import copy
from collections import deque

import torch


class StreamSchedule:
    """Smooth weighted round-robin over streams: ratios {action: 3, vlm: 1} give the cycle
    action, action, vlm, action (interleaved rather than in runs)."""

    def __init__(self, ratios: dict[str, int]):
        if not ratios:
            raise ValueError("no training streams: the spec declares no losses")
        self.ratios = dict(ratios)
        total = sum(ratios.values())
        current = {s: 0 for s in ratios}
        cycle = []
        for _ in range(total):
            for s, r in ratios.items():
                current[s] += r
            pick = max(current, key=lambda s: current[s])  # first maximum: order of declaration breaks ties
            current[pick] -= total
            cycle.append(pick)
        self.cycle = cycle

    def stream_at(self, step: int) -> str:
        return self.cycle[step % len(self.cycle)]


class StreamBatches:
    """Endless collated batches of one stream, drawn in the order of the data layer's sampler.

    The sampler's position is snapshotted before each batch's indices are drawn; DataLoader
    workers may prefetch ahead, so `state_dict()` reports the position of the first batch the
    loop has not consumed yet. Resuming from it yields exactly the batches an uninterrupted run
    would have seen."""

    def __init__(self, dataset, sampler, batch_size: int, collate, num_workers: int = 0):
        self.sampler, self.batch_size = sampler, batch_size
        self._feed = _IndexFeed(sampler, batch_size)
        seed = torch.Generator().manual_seed(0)  # keeps DataLoader setup off the global RNG (exact resume)
        self._loader = torch.utils.data.DataLoader(dataset, batch_sampler=self._feed, collate_fn=collate,
                                                   num_workers=num_workers, generator=seed)
        self._batches = None

    def next(self) -> dict:
        if self._batches is None:
            self._batches = iter(self._loader)
        batch = next(self._batches)
        self._feed.pending.popleft()
        return batch

    def state_dict(self):
        return copy.deepcopy(self._feed.pending[0] if self._feed.pending else self.sampler.state_dict())

    def load_state_dict(self, state) -> None:
        if self._batches is not None:
            raise RuntimeError("load the data position before drawing the first batch")
        self.sampler.load_state_dict(state)
        self._feed.restart()

    def close(self) -> None:
        """Stop DataLoader workers now rather than at garbage collection; a later next()
        continues from the first unconsumed batch."""
        state = self.state_dict()
        self._batches = None
        self.load_state_dict(state)


class _IndexFeed:
    """batch_sampler for the DataLoader: endless lists of indices, remembering the sampler's
    state before each list (it holds no reference back to StreamBatches, so no cycle delays
    the workers' shutdown)."""

    def __init__(self, sampler, batch_size: int):
        self.sampler, self.batch_size = sampler, batch_size
        self.pending = deque()  # sampler state before each drawn-but-unconsumed batch
        self.restart()

    def restart(self):
        self.indices = iter(self.sampler)
        self.pending.clear()

    def __iter__(self):
        while True:
            self.pending.append(copy.deepcopy(self.sampler.state_dict()))
            yield [int(next(self.indices)) for _ in range(self.batch_size)]
