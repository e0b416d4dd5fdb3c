"""StreamSampler: an endless, seeded, rank-sharded sequence of dataset indices.

Epoch e is a fixed function of (seed, e): a permutation of all indices, or for a mixture
len(dataset) draws split between the parts by weight and shuffled together (each part walks its
own sequence of shuffled passes, so every frame of a part is seen before any repeats). Rank r of w takes positions
r, r+w, r+2w, ... of each epoch (the tail that does not divide evenly is dropped, so every rank
yields the same number per epoch and no index is seen twice in an epoch). The state is just
(epoch, position): resuming reproduces the rest of the sequence exactly.

With a DataLoader that prefetches (num_workers > 0) the sampler runs ahead of the batches the
trainer consumed; save `position_for(consumed)` instead of `state_dict()` in that case."""
from __future__ import annotations

import numpy as np


class StreamSampler:
    def __init__(self, dataset, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        n = len(dataset)
        if n < world_size:
            raise ValueError(f"a stream of {n} samples cannot be sharded over {world_size} ranks")
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, int(seed), rank, world_size, shuffle
        self.parts = list(getattr(dataset, "part_sizes", []) or [])
        self.weights = list(getattr(dataset, "weights", []) or [])
        self.per_rank = n // world_size
        self.epoch = 0
        self.position = 0  # indices of this rank already yielded in `epoch`

    def __iter__(self):
        cached, mine = None, None
        while True:
            if self.position >= self.per_rank:
                self.epoch, self.position = self.epoch + 1, 0
            if cached != self.epoch:  # also after load_state_dict on a running iterator
                cached = self.epoch
                mine = self.epoch_order(self.epoch)[self.rank: self.per_rank * self.world_size: self.world_size]
            idx = int(mine[self.position])
            self.position += 1
            yield idx

    def __len__(self) -> int:  # per-epoch count of this rank (the iterator itself never ends)
        return self.per_rank

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        if not self.parts or len(self.parts) == 1:
            return rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        counts = self.part_counts()
        choice = rng.permutation(np.repeat(np.arange(len(self.parts)), counts))
        offsets = np.concatenate([[0], np.cumsum(self.parts)[:-1]])
        out = np.empty(self.n, dtype=np.int64)
        for k, size in enumerate(self.parts):
            slots = np.flatnonzero(choice == k)
            out[slots] = offsets[k] + _walk(self.seed, k, size, epoch * counts[k], counts[k])
        return out

    def part_counts(self) -> np.ndarray:
        """Draws per part in every epoch: n split by weight (largest remainder), so the mixture
        proportions hold exactly per epoch and a part's position is a function of the epoch."""
        w = np.asarray(self.weights, dtype=np.float64)
        share = self.n * w / w.sum()
        counts = np.floor(share).astype(np.int64)
        counts[np.argsort(-(share - counts), kind="stable")[: self.n - counts.sum()]] += 1
        return counts

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "rank": self.rank, "world_size": self.world_size, "n": self.n}

    def position_for(self, consumed: int) -> dict:
        """The state after this rank consumed `consumed` indices from the start."""
        return {**self.state_dict(), "epoch": consumed // self.per_rank, "position": consumed % self.per_rank}

    def load_state_dict(self, d: dict) -> None:
        for k in ("seed", "world_size", "n"):
            if k in d and d[k] != getattr(self, k):
                raise ValueError(f"sampler state was saved with {k}={d[k]} but this run has {k}={getattr(self, k)}; "
                                 "resume with the same seed, data and number of processes")
        self.epoch, self.position = int(d["epoch"]), int(d["position"])


def _walk(seed: int, part: int, size: int, start: int, count: int) -> np.ndarray:
    """Items start..start+count-1 of part `part`'s endless sequence of shuffled passes over its
    `size` indices (pass c is a permutation seeded by (seed, part, c)): every index of a part is
    drawn once before any is drawn again, across epoch boundaries too."""
    first, last = start // size, (start + count) // size
    seq = np.concatenate([np.random.default_rng([seed, 7919, part, c]).permutation(size) for c in range(first, last + 1)])
    off = start - first * size
    return seq[off: off + count]
