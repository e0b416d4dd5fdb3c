"""The inference runtime: what serving, evaluation, export and sweeps need from a trained run.

- `policy.py`: `Policy` (observation checks, the compiled inference graph, normalization, real-time
  chunking) and `session.py` (one client's episode state); `rtc.py` (real-time chunking requests);
  `observation.py` (the one observation validator);
- the run format, written by training and read by everyone else: `checkpoint.py` (run and
  checkpoint folders, atomic writes, `latest`), `assets.py` (the files blocks read, copied or
  referenced by sha256), `loading.py` (`load_policy(RUN)`).

Nothing here trains: the trainer (runners/train) writes runs through this package."""

from .loading import load_policy
from .policy import Policy
from .session import Session

__all__ = ["Policy", "Session", "load_policy"]
