"""The inference runtime: what serving, evaluation, export and sweeps need from a trained run.

- `policy.py`: `Policy` (observation checks, the compiled inference graph, normalization, real-time
  chunking) and `session.py` (one client's episode state); `rtc.py` (real-time chunking requests);
  `observation.py` (the one observation validator); `caches.py` (the `infer: {every: k}` caches:
  the compiler only marks those blocks, the Policy runs them behind caches it owns, per session);
- the run format, written by training and read by everyone else: `checkpoint.py` (run and
  checkpoint folders, atomic writes, `latest`, `write_policy_files`: the files load_policy reads),
  `assets.py` (the files blocks read, copied or referenced by sha256), `loading.py`
  (`load_policy(RUN)`: the blocks built with their parameters on meta, the checkpoint's tensors
  assigned once, so a run that holds every weight needs no base model files).

Nothing here trains: the trainer (runners/train) writes runs through this package."""

from .loading import load_policy
from .policy import Policy
from .session import Session

__all__ = ["Policy", "Session", "load_policy"]
