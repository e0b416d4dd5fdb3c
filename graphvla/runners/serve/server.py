"""`graphvla serve`: an openpi-compatible policy server (WebSocket + msgpack).

Protocol (what openpi-client's WebsocketClientPolicy expects):
- on connect the server sends one binary frame: the metadata map;
- each binary frame from the client is one observation map; the reply is one binary frame
  {"actions": float32 [H, A], ..., "server_timing": {"infer_ms": ..., ...}};
- a request that cannot be served is answered with a text frame naming the key and what was
  expected, and the connection stays open for the next request.
Each connection is one session (policy/session.py): its own `every: k` caches, call counter and
noise generator, seeded with the server's `seed` (or, after a reset request carrying
`session_seed`, a mix of both). A reset request {"__graphvla_reset__": true[, "session_seed": n]}
starts a new episode of that session only. An observation may carry a real-time chunking request
{"__graphvla_rtc__": {"delay": d, "remaining_actions": [R, A] | "executed": n}} (policy/rtc.py),
checked before it joins a batch.
Plain HTTP `GET /healthz` answers 200 with JSON. With an API key, the handshake requires
`Authorization: Api-Key KEY` and is refused with 401 otherwise."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus

import numpy as np
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from ...protocol import RESET_KEY, RTC_KEY, SESSION_SEED_KEY, WireError, packb, unpackb
from ...policy.plain_data import plain_data
from ...policy.session import check_seed, session_seed
from .batching import Batcher
from .observation import ObservationError, ObservationMapper

log = logging.getLogger("graphvla.serve")


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 8
    max_wait_ms: float = 2.0
    max_message_mb: float = 64.0
    key_map: dict = field(default_factory=dict)
    execute_steps: int | None = None  # the graph's serve.execute_steps (None: the whole chunk)
    temporal_ensemble: float | None = None  # serve.temporal_ensemble: the policy's set_temporal_ensemble
    seed: int = 0  # every session's noise generator starts from it (see session_seed)
    shutdown_timeout_s: float = 30.0
    # batches computed at once: with 2, the next batch is collected and runs while one computes
    # (serve/batching.py); the policy must then be safe to call from two threads (Policy with sessions is)
    infer_workers: int = 1


class PolicyServer:
    """Serves `policy`, an object with graphvla.policy.Policy's interface (metadata, new_session,
    infer(obs, session=), infer_batch(observations, sessions=), check_rtc_request): every
    connection gets its own session, and every request is answered through it."""

    def __init__(self, policy, options: ServeOptions | None = None):
        self.policy = policy
        self.options = options or ServeOptions()
        self.options.seed = check_seed(self.options.seed, "serve.seed")
        if self.options.temporal_ensemble is not None:
            if not hasattr(policy, "set_temporal_ensemble"):
                raise ValueError("serve.temporal_ensemble: this policy cannot ensemble its chunks")
            policy.set_temporal_ensemble(self.options.temporal_ensemble)
        meta = dict(policy.metadata)
        self.mapper = ObservationMapper(meta.get("inputs") or {}, self.options.key_map or None)
        self.metadata = plain_data({
            **meta,
            "server": "graphvla",
            "observation_keys": self.mapper.expected_keys(),
            "key_map": self.mapper.describe(),
            "normalization_keys": sorted((meta.get("normalization") or {}).keys()),
            "max_batch": self.options.max_batch,
            # how many actions of each chunk a client executes before it asks again
            # (1 under temporal ensembling: every step's query folds a chunk into the executed action)
            "execute_steps": 1 if meta.get("temporal_ensemble") else (self.options.execute_steps or meta.get("action_horizon")),
            # each connection's noise generator starts from this seed (a reset may add session_seed)
            "seed": self.options.seed,
            "sessions": True,  # every connection has its own episode state (kept for older clients)
        })
        self._metadata_frame = packb(self.metadata)
        self.connections = 0
        self.in_flight = 0
        self.served = 0
        self.errors = 0
        self.draining = False
        # notified whenever connections, in_flight or draining change: a thread that must wait for
        # one of them (a test, `graphvla eval`) waits on it instead of polling
        self.changed = threading.Condition()
        self.port: int | None = None
        self.batcher = Batcher(policy, self.options.max_batch, self.options.max_wait_ms,
                               active_clients=lambda: self.connections, workers=self.options.infer_workers)

    # --- HTTP side: health check and authentication -------------------------------------------

    def _process_request(self, connection, request):
        if request.path.split("?", 1)[0] == "/healthz":
            body = json.dumps({"status": "draining" if self.draining else "ok",
                               "graph": self.metadata.get("name"), "fingerprint": self.metadata.get("fingerprint"),
                               "connections": self.connections, "in_flight": self.in_flight,
                               "served": self.served, "batches": self.batcher.batches,
                               "batch_sizes": {str(k): v for k, v in sorted(self.batcher.batch_sizes.items())}})
            response = connection.respond(HTTPStatus.OK, body + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        key = self.options.api_key
        if key:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Api-Key {key}".encode()):
                log.info("refused a connection without a valid API key")
                return connection.respond(HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong API key: send the header 'Authorization: Api-Key KEY'\n")
        return None

    # --- WebSocket side ------------------------------------------------------------------------

    async def _handle(self, ws) -> None:
        self._count("connections", +1)
        session = self.policy.new_session(self.options.seed)
        try:
            await ws.send(self._metadata_frame)
            prev_total_ms = None
            async for message in ws:
                started = time.perf_counter()
                self._count("in_flight", +1)
                try:
                    reply = await self._answer(message, prev_total_ms, session)
                    await ws.send(reply)
                finally:
                    self._count("in_flight", -1)
                prev_total_ms = (time.perf_counter() - started) * 1000.0
        except ConnectionClosed as e:
            log.debug("connection closed: %s", e)
        finally:
            self._count("connections", -1)

    def _count(self, name: str, delta: int) -> None:
        with self.changed:
            setattr(self, name, getattr(self, name) + delta)
            self.changed.notify_all()

    async def _answer(self, message, prev_total_ms, session) -> bytes | str:
        """The reply frame for one request: bytes on success, an error text otherwise."""
        if isinstance(message, str):
            self.errors += 1
            return "error: text frames are not accepted; send one binary msgpack map of observations"
        if self.draining:
            return "error: the server is shutting down"
        started = time.perf_counter()
        try:
            raw = unpackb(message)
            if isinstance(raw, dict) and RESET_KEY in raw:
                return await self._reset(reset_seed(raw), session)
            rtc = raw.pop(RTC_KEY, None) if isinstance(raw, dict) else None
            obs = self.mapper(raw)
            if rtc is not None:  # real-time chunking: checked here so a bad one never joins a batch
                obs[RTC_KEY] = self._rtc_request(rtc)
        except (WireError, ObservationError) as e:
            self.errors += 1
            return f"error: {e}"
        decode_ms = (time.perf_counter() - started) * 1000.0
        outcome = await self.batcher.submit(obs, session)
        if outcome.error is not None:
            self.errors += 1
            e = outcome.error
            return f"error: {e}" if isinstance(e, ValueError) else f"error: inference failed: {type(e).__name__}: {e}"
        reply = {k: (np.asarray(v, dtype=np.float32) if k == "actions" else v) for k, v in outcome.output.items()}
        timing = {"infer_ms": outcome.infer_ms, "queue_ms": outcome.queue_ms, "decode_ms": decode_ms,
                  "batch_size": outcome.batch_size}
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        reply["server_timing"] = timing
        self.served += 1
        try:
            return packb(reply)
        except TypeError as e:
            self.errors += 1
            return f"error: the policy returned an output that cannot be sent: {e}"

    def _rtc_request(self, value):
        try:
            return self.policy.check_rtc_request(value)
        except ValueError as e:
            raise ObservationError(str(e)) from None

    async def _reset(self, client_seed, session) -> bytes:
        """A new episode for this connection's session alone. No request of this connection is in
        a batch now (a connection's requests are answered one at a time), so its session is
        changed here, on the event loop."""
        session.reset(None if client_seed is None else session_seed(self.options.seed, client_seed))
        return packb({"reset": True, "seed": session.seed})

    # --- lifecycle ------------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event, ready=None) -> None:
        """Serve until `stop` is set, then finish in-flight requests and close."""
        self.batcher.start()
        max_size = int(self.options.max_message_mb * 1024 * 1024) if self.options.max_message_mb else None
        try:
            async with serve(self._handle, self.options.host, self.options.port, compression=None,
                             max_size=max_size, process_request=self._process_request,
                             ping_interval=None) as server:
                self.port = server.sockets[0].getsockname()[1]
                log.info("serving %s on ws://%s:%d", self.metadata.get("name"), self.options.host, self.port)
                if ready:
                    ready(self.port)
                await stop.wait()
                with self.changed:
                    self.draining = True
                    self.changed.notify_all()
                server.close(close_connections=False)  # stop accepting; keep open connections
                deadline = time.monotonic() + self.options.shutdown_timeout_s
                while self.in_flight and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                # close() is idempotent, so the open connections are closed here ourselves
                await asyncio.gather(*(c.close(1001, "server shutting down") for c in list(server.connections)),
                                     return_exceptions=True)
                await server.wait_closed()
        finally:
            await self.batcher.stop()

    def run(self, ready=None) -> None:
        """Blocking entry point for the CLI: SIGINT / SIGTERM shut down gracefully. `ready(port)`
        is called once the server listens."""

        async def main():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.serve(stop, ready)

        asyncio.run(main())


def reset_seed(raw: dict) -> int | None:
    """Check a reset request {RESET_KEY: true[, SESSION_SEED_KEY: n]}; return n (None: absent)."""
    flag = raw[RESET_KEY]
    if not (flag is True or (isinstance(flag, np.bool_) and bool(flag))):
        raise ObservationError(f"'{RESET_KEY}': expected true (a reset request), got {_shown(flag)}")
    extra = sorted(str(k) for k in raw if k not in (RESET_KEY, SESSION_SEED_KEY))
    if extra:
        raise ObservationError(f"unexpected key '{extra[0]}' in a reset request (it holds '{RESET_KEY}': true "
                               f"and optionally '{SESSION_SEED_KEY}': an integer)")
    seed = raw.get(SESSION_SEED_KEY)
    if seed is None:
        return None
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ObservationError(f"'{SESSION_SEED_KEY}': expected an integer in [0, 2**64), got {_shown(seed)}")
    try:
        return check_seed(seed, f"'{SESSION_SEED_KEY}'")
    except ValueError as e:
        raise ObservationError(str(e)) from None


def _shown(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


class ServerThread:
    """Runs a PolicyServer in a background thread (tests, `graphvla eval`, benchmarks).

        with ServerThread(policy, ServeOptions(port=0)) as srv:
            client = WebsocketClientPolicy(srv.host, srv.port)
    """

    def __init__(self, policy, options: ServeOptions | None = None):
        self.server = PolicyServer(policy, options)
        self.host = self.server.options.host
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="graphvla-serve", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _main(self):
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.serve(self._stop, ready=lambda port: self._ready.set())

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - surfaced in start()
            self._error = e
            self._ready.set()

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self._thread.start()
        if not self._ready.wait(timeout) or self._error:
            raise RuntimeError(f"policy server did not start: {self._error!r}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop and self._stop and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
