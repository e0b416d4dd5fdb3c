"""Closed-loop evaluation: simulators driven through the policy server with benchmark adapters.
`evaluate.py` is `graphvla eval RUN` (the run served from a thread, results written); `protocol.py`
a published protocol's episodes; `runner.py` GraphVLA's own Meta-World suite; `stats.py` the
intervals and tests."""
from .stats import wilson_interval

__all__ = ["wilson_interval"]
