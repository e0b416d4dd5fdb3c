"""Client side of the policy server: sync / async clients and per-benchmark adapters."""
from .adapters import Adapter, ChunkExecutor, TemporalEnsembler, load_adapter
from .client import AsyncPolicyClient, PolicyClient, ServerError
from .realtime import ActionQueue, AsyncRealtimeClient, RealtimeClient

__all__ = ["PolicyClient", "AsyncPolicyClient", "ServerError", "Adapter", "ChunkExecutor",
           "TemporalEnsembler", "load_adapter", "ActionQueue", "RealtimeClient", "AsyncRealtimeClient"]
