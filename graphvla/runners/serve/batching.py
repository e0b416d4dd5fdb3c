"""Dynamic batching: concurrent requests are grouped into one Policy.infer_batch call.

A batch is dispatched when it holds `max_batch` requests, when `max_wait_ms` has passed since
its first request, or as soon as every connected client already has a request in it (an
openpi client waits for its reply before it sends again, so nobody else can join; a single
client therefore never pays the wait; clients whose request is in a batch still computing do
not count). Inference runs in `workers` threads (default 1) so the event loop keeps reading,
decoding and answering other connections meanwhile; with 2, the next batch is collected and
computed while one computes (a client is in at most one batch: it waits for its reply).

Each request carries its client's session (policy/session.py): a batch is run as
`policy.infer_batch(observations, sessions=[...])`, and every row reads and advances only its own
session, so batching changes no client's answers."""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger("graphvla.serve")


@dataclass
class Outcome:
    """What one request gets back: the policy's output or the exception it raised."""

    output: dict | None
    error: Exception | None
    infer_ms: float
    queue_ms: float
    batch_size: int


@dataclass
class _Request:
    obs: dict
    future: asyncio.Future
    session: object
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    def __init__(self, policy, max_batch: int = 8, max_wait_ms: float = 2.0, active_clients=lambda: 1 << 30,
                 workers: int = 1):
        if max_batch < 1:
            raise ValueError(f"max batch must be >= 1, got {max_batch}")
        if workers < 1:
            raise ValueError(f"inference workers must be >= 1, got {workers}")
        self.policy = policy
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.active_clients = active_clients
        self.workers = workers
        self.batches = 0
        self.requests = 0
        self.batch_sizes: Counter = Counter()  # batch size -> how many batches had it
        self._queue: asyncio.Queue[_Request] | None = None
        self._task: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None  # one per inference worker
        self._running: set = set()  # batches being computed
        self._in_batches = 0  # requests in those batches
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="graphvla-infer")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._slots = asyncio.Semaphore(self.workers)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="graphvla-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, obs: dict, session) -> Outcome:
        req = _Request(obs, asyncio.get_running_loop().create_future(), session)
        self._queue.put_nowait(req)
        return await asyncio.shield(req.future)

    async def _collect(self) -> list[_Request]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            # clients whose request is in a running batch cannot join this one
            if remaining <= 0 or len(batch) >= self.active_clients() - self._in_batches:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                break
        return batch

    async def _run(self) -> None:
        """Collect a batch while a worker is free; with several workers the next batch is
        collected, and runs, while the previous ones compute."""
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            self._in_batches += len(batch)
            task = asyncio.get_running_loop().create_task(self._dispatch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _dispatch(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            outputs, infer_ms = await loop.run_in_executor(self._executor, self._infer, [r.obs for r in batch],
                                                           [r.session for r in batch])
        except Exception as e:  # noqa: BLE001 - never let the batcher die: fail this batch only
            log.exception("batch failed")
            outputs, infer_ms = [e] * len(batch), 0.0
        finally:
            self._in_batches -= len(batch)
            self._slots.release()
        self.batches += 1
        self.requests += len(batch)
        self.batch_sizes[len(batch)] += 1
        for req, out in zip(batch, outputs):
            if req.future.done():
                continue
            err = out if isinstance(out, Exception) else None
            req.future.set_result(Outcome(None if err else out, err, infer_ms,
                                          (started - req.queued_at) * 1000.0, len(batch)))

    def _infer(self, obs_list: list[dict], sessions: list) -> tuple[list, float]:
        """Runs in the worker thread. A failing batch is retried one by one so that one bad
        observation only fails its own request (a failed batched forward moves no session)."""
        t0 = time.perf_counter()
        if len(obs_list) == 1:
            outs = [self._one(obs_list[0], sessions[0])]
        else:
            try:
                outs = list(self.policy.infer_batch(obs_list, sessions=sessions))
                if len(outs) != len(obs_list):
                    raise RuntimeError(f"infer_batch returned {len(outs)} results for {len(obs_list)} observations")
            except Exception:  # noqa: BLE001 - isolate the culprit below
                log.info("batched inference failed; retrying the %d requests one by one", len(obs_list))
                outs = [self._one(o, s) for o, s in zip(obs_list, sessions)]
        return outs, (time.perf_counter() - t0) * 1000.0

    def _one(self, obs: dict, session):
        try:
            return self.policy.infer(obs, session=session)
        except Exception as e:  # noqa: BLE001 - reported to the client that sent it
            if not isinstance(e, ValueError):
                log.exception("inference failed")
            return e
