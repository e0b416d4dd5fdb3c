"""The policy server: openpi-compatible WebSocket + msgpack wire, key mapping, dynamic batching."""
from .server import PolicyServer, ServerThread, ServeOptions

__all__ = ["PolicyServer", "ServerThread", "ServeOptions"]
