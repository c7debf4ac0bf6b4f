"""Ordered, bounded, retrying write queue: nothing is dropped silently.

Every write goes through one queue and one writer task, so writes land in the order they were made
(a contribution never lands before its session). The writer commits batches in one transaction; a
transient failure (database down, connection lost) retries the same batch with exponential backoff
until it lands, while new writes wait in the queue (bounded). Each write returns a future that
resolves once its transaction has committed: callers that acknowledge something (an HTTP answer)
await it, others need not. A write that fails for good (the queue is full, a permanent error, or
shutdown with the database still down) is logged at error level and counted in
``fedattn_store_write_failures_total``. Retrying is safe because every write is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import tenacity
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fedattn.store.backend import Backend, Op

log = logging.getLogger(__name__)


class StoreMetrics:
    """The store's metrics, in the registry of the process that owns it (several may share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.write_failures = Counter(
            "fedattn_store_write_failures",
            "Store writes that were finally not stored",
            ["reason"],
            registry=r,
        )
        self.write_retries = Counter(
            "fedattn_store_write_retries", "Write batches retried after a transient error", registry=r
        )
        self.buffered = Gauge("fedattn_store_buffered_writes", "Writes waiting in memory to be committed", registry=r)
        self.batch_seconds = Histogram(
            "fedattn_store_write_batch_seconds", "Time to commit one batch of writes", registry=r
        )


class StoreUnavailable(RuntimeError):
    """A write that was not stored (queue full, permanent error, or shut down before it landed)."""


@dataclass
class _Write:
    what: str
    op: Op
    future: asyncio.Future[None] = field(repr=False)


def _consume(future: asyncio.Future[None]) -> None:
    # NB: failures are logged and counted here; do not also warn "exception never retrieved".
    if not future.cancelled():
        future.exception()


class WriteQueue:
    def __init__(
        self,
        backend: Backend,
        *,
        capacity: int = 10_000,
        batch: int = 200,
        backoff_seconds: float = 0.05,
        backoff_max_seconds: float = 2.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._backend = backend
        self.metrics = StoreMetrics(registry)
        self._capacity = capacity
        self._batch = batch
        self._wait = tenacity.wait_exponential(multiplier=backoff_seconds, max=backoff_max_seconds)
        self._queue: deque[_Write] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.retrying_since: float | None = None
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-writer")

    def submit(self, what: str, op: Op) -> asyncio.Future[None]:
        """Queue one write; the future resolves when it is committed (or fails for good)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume)
        if len(self._queue) >= self._capacity:
            self._fail([_Write(what, op, future)], reason="buffer_full", detail=f"{self._capacity} writes queued")
            return future
        self._queue.append(_Write(what, op, future))
        self.metrics.buffered.set(len(self._queue))
        self._idle.clear()
        self._wake.set()
        return future

    async def flush(self) -> None:
        """Wait until every write queued so far has landed or failed."""
        await self._idle.wait()

    def _fail(self, writes: list[_Write], *, reason: str, detail: str) -> None:
        self.failures += len(writes)
        self.metrics.write_failures.labels(reason=reason).inc(len(writes))
        for w in writes:
            log.error("store write not stored: %s (%s: %s)", w.what, reason, detail)
            if not w.future.done():
                w.future.set_exception(StoreUnavailable(f"{w.what} not stored ({reason}): {detail}"))

    async def _commit(self, writes: list[_Write]) -> None:
        """Commit ``writes`` in one transaction, retrying transient errors until it lands."""
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(self._backend.is_transient),
            wait=self._wait,
            before_sleep=self._note_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                started = time.perf_counter()
                await self._backend.execute([w.op for w in writes])
                self.metrics.batch_seconds.observe(time.perf_counter() - started)
        if self.retrying_since is not None:
            log.warning("store is back after %.1f s; buffered writes landed", time.time() - self.retrying_since)
            self.retrying_since = None

    def _note_retry(self, state: tenacity.RetryCallState) -> None:
        self.metrics.write_retries.inc()
        if self.retrying_since is None:
            self.retrying_since = time.time()
            log.warning("store write failed, buffering and retrying: %s", state.outcome.exception())

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            writes = [self._queue[i] for i in range(min(self._batch, len(self._queue)))]
            try:
                await self._commit(writes)
            except Exception as exc:  # a permanent error: isolate the culprit, keep the others
                if len(writes) == 1:
                    self._fail(writes, reason="permanent", detail=repr(exc))
                else:
                    await self._commit_one_by_one(writes)
            for w in writes:
                self._queue.popleft()
                if not w.future.done():
                    w.future.set_result(None)
            self.metrics.buffered.set(len(self._queue))

    async def _commit_one_by_one(self, writes: list[_Write]) -> None:
        for w in writes:
            try:
                await self._commit([w])
            except Exception as exc:
                self._fail([w], reason="permanent", detail=repr(exc))

    async def close(self, *, timeout: float = 10.0) -> None:
        """Give queued writes ``timeout`` seconds to land, then fail (log and count) the rest."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._queue:
            self._fail(list(self._queue), reason="shutdown", detail="database unreachable at shutdown")
            self._queue.clear()
            self.metrics.buffered.set(0)
