"""Closed-loop evaluation: simulators driven through the policy server with benchmark adapters."""
from .stats import wilson_interval

__all__ = ["wilson_interval"]
