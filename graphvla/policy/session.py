"""One client's episode state: what `Policy.infer_batch(..., sessions=...)` reads and advances.

A Session holds, for one client (one connection of the policy server):
- its `infer: {every: k}` caches: for each cached block, (calls, outputs computed for this
  session's own observation), so a block runs on this session's first call and every k-th call
  after, whoever else shares the batch;
- its noise generator (a CPU torch.Generator seeded with `seed`): the sampling heads draw this
  session's rows from it alone;
- `steps`: how many observations it has been answered;
- `previous_actions`: the last action chunk it returned ([H, A], None before the first), which a
  real-time chunking request may continue from (runners/rtc.py: `executed`);
- `ensemble`: its temporal ensemble (policy/ensemble.py) when the graph asks for one, else None.
- `window`: its last observations when the graph has an observation window (policy/window.py).

`reset()` starts a new episode: empty caches, steps 0, the generator re-seeded with `seed` (or a
new one). A session after reset() is exactly a fresh session with that seed, so an episode
replays from its seed and its observations alone, not from what the session did before."""
from __future__ import annotations

import numpy as np
import torch

SEED_LIMIT = 1 << 64  # seeds are integers in [0, 2**64)


def check_seed(seed, name: str = "seed") -> int:
    """An integer seed in [0, 2**64) (numpy integers accepted; bools, floats and the rest are not)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer in [0, 2**64), got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name}: expected an integer in [0, 2**64), got {seed}")
    return seed


def session_seed(server_seed: int, client_seed: int | None = None) -> int:
    """The seed of a session's generator: the server's seed when the client sends none, else a
    64-bit mix of both (numpy SeedSequence), so different clients' seeds give unrelated streams
    and the same pair always gives the same stream."""
    if client_seed is None:
        return int(server_seed)
    mixed = np.random.SeedSequence([int(server_seed), int(client_seed)]).generate_state(1, np.uint64)[0]
    return int(mixed)


class Session:
    def __init__(self, seed: int = 0):
        self.generator = torch.Generator()
        self.seed = check_seed(seed)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """New episode: forget the cached outputs, re-seed the generator (with `seed` if given)."""
        if seed is not None:
            self.seed = check_seed(seed)
        self.generator.manual_seed(self.seed)
        self.caches: dict = {}
        self.steps = 0
        self.previous_actions = None
        self.ensemble = None
        self.window = {}  # infer.observation_window: port -> this episode's last frames (policy/window.py)

    def __repr__(self):
        return f"Session(seed={self.seed}, steps={self.steps})"
