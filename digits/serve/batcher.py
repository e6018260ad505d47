"""Dynamic batching: concurrent requests for one model become one runtime call, under
admission control and supervision.

A request puts its rows (one 28x28 for /v1, N for a v2 tensor) on the model's bounded
queue as **one item with one future**, and awaits it. The model's worker takes the first
item, then gathers more for up to ``max_wait_ms`` (or until ``max_batch`` rows), runs them
as one batch on the inference thread, and answers each item with its own rows. It waits
only while ``others_coming()`` says more requests are on their way (received, not yet
queued), so a lone client is not kept waiting for company: and a lone request that finds
the model idle is run at once on the event loop, without the thread hand-off, when the
model's single-row calls have been taking under ``INLINE_MS`` (at c=1 the hand-off cost
more than LeNet-5 itself; a slow or stalled runtime never blocks the loop this way).
``max_batch=1`` is plain batch-1 serving.

Admission: an item is admitted whole or not at all (:class:`Overloaded` when the queue
has no room for all of its rows: the server answers 503 with Retry-After); an item not
answered within its deadline gives up (:class:`TimedOut`, 504), and the worker skips it.
Supervision: every step of a batch is guarded; a failure answers that batch's requests with
:class:`BatchFailed` (a generic 500; the details go to the log and ``on_error`` counts it by
cause) and the worker goes on. Metrics run apart: a metrics error never fails a batch
(counted, logged once). If the worker dies anyway, ``alive`` turns false (readiness reports
it) and everything queued is answered with :class:`Unavailable`. ``stop`` drains: what is
queued, and what the worker has already taken, is still answered; past its grace, failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import Executor
from typing import Callable

import numpy as np

log = logging.getLogger("digits.serve")
INLINE_MS = 0.3  # single-row calls this fast run on the event loop when the model is idle


class Overloaded(Exception):
    """The model's queue has no room for the request's rows."""


class TimedOut(Exception):
    """Not answered within the request's deadline."""


class BatchFailed(Exception):
    """The batch this request was in failed (the cause is in the server's log)."""


class Unavailable(Exception):
    """The model's worker is stopped, stopping or dead."""


class _Item:
    __slots__ = ("rows", "future", "single")

    def __init__(self, rows: np.ndarray, future: asyncio.Future, single: bool = False):
        self.rows, self.future, self.single = rows, future, single  # single: answered with its row, not rows


class Batcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int, max_wait_ms: float,
                 executor: Executor, on_batch: Callable[[int, float], None] = lambda n, s: None,
                 others_coming: Callable[[], bool] = lambda: True, max_queue: int = 256,
                 on_error: Callable[[str], None] = lambda cause: None, name: str = "model",
                 on_depth: Callable[[int], None] = lambda depth: None):
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1e3
        self.executor, self.on_batch, self.others_coming = executor, on_batch, others_coming
        self.max_queue, self.on_error, self.name, self.on_depth = max_queue, on_error, name, on_depth
        self.queue: deque[_Item] = deque()
        self.rows = 0  # rows waiting in the queue (what max_queue bounds)
        self.taken: list[_Item] = []  # gathered by the worker, not yet answered
        self.task: asyncio.Task | None = None
        self.accepting = False
        self.busy = False  # a batch is running
        self.metric_errors = 0
        self.single_ms: float | None = None  # a running mean of single-row call times (None: not measured yet)
        self._wake: asyncio.Future | None = None

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._worker())
        self.task.add_done_callback(self._ended)
        self.accepting = True

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def depth(self) -> int:
        return self.rows

    async def stop(self, grace_s: float = 10.0) -> None:
        """Refuse new work; answer what is queued and what the worker has taken (within
        ``grace_s``); then end the worker, failing whatever is left with :class:`Unavailable`."""
        self.accepting = False  # a worker gathering for company runs what it has at its next look
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        deadline = time.monotonic() + grace_s
        while self.alive and (self.queue or self.taken or self.busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self._fail_all(Unavailable(f"{self.name} is shutting down"))

    # ----------------------------------------------------------------- requests
    async def submit(self, x: np.ndarray, timeout_s: float | None = None, others: int = 0) -> np.ndarray:
        """One normalized [1,28,28] input -> its logits [10]; or rows [N,1,28,28] -> [N,10]."""
        return await self.enqueue(x, timeout_s, others)

    def enqueue(self, x: np.ndarray, timeout_s: float | None = None, others: int = 0) -> asyncio.Future:
        """Queue ``x`` now (or run it now) and return the future of its logits; nothing awaits
        in between, so a caller knows its rows are queued when this returns. ``others``:
        requests known to be on their way besides this one."""
        if not (self.accepting and self.alive):
            raise Unavailable(f"{self.name} is not serving")
        single = x.ndim == 3
        rows = x[None] if single else x
        loop = asyncio.get_running_loop()
        if (len(rows) == 1 and not self.queue and not self.busy and not others and self.single_ms is not None
                and self.single_ms < INLINE_MS):
            return self._run_now(rows, single)  # idle, nobody coming, a fast model: no queue, no thread hand-off
        if self.rows + len(rows) > self.max_queue:  # whole or not at all: no rows run for a 503
            raise Overloaded(f"{self.name}'s queue has no room for {len(rows)} more rows ({self.max_queue})")
        future = loop.create_future()
        self.queue.append(_Item(rows, future, single))
        self.rows += len(rows)
        self._depth()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if timeout_s:
            timer = loop.call_later(timeout_s, _expire, future, self.name, timeout_s)
            future.add_done_callback(lambda _f: timer.cancel())
        return future

    def _run_now(self, rows: np.ndarray, single: bool) -> asyncio.Future:
        self.busy = True
        item = _Item(rows, asyncio.get_running_loop().create_future(), single)
        try:
            t0 = time.perf_counter()
            self._answer([item], self._call(rows, "runtime", 1), t0)
        except _Failed as e:
            self._fail_batch([item], e.step, e.cause)
        finally:
            self.busy = False
        return item.future

    # ----------------------------------------------------------------- the worker
    async def _gather(self) -> list[_Item]:
        """Items for one batch. Each is in ``self.taken`` from the moment it leaves the queue, so
        a stop (or the worker's death) meanwhile answers it: nothing is ever left stranded."""
        while not self.queue:
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        items = self.taken = [self.queue.popleft()]
        deadline = time.perf_counter() + self.max_wait
        count = len(items[0].rows)
        self.rows -= count
        while count < self.max_batch:
            if self.queue:
                if count + len(self.queue[0].rows) > self.max_batch:
                    break
                items.append(self.queue.popleft())
                count += len(items[-1].rows)
                self.rows -= len(items[-1].rows)
                continue
            left = deadline - time.perf_counter()
            if left <= 0 or not self.others_coming() or not self.accepting:
                break
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._wake, left)
            except asyncio.TimeoutError:
                break
        self._depth()
        return items

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._gather()
            live = [it for it in self.taken if not it.future.done()]  # a client that gave up is skipped
            if not live:
                self.taken = []
                continue
            batch = live[0].rows if len(live) == 1 else np.concatenate([it.rows for it in live])
            self.busy = True
            try:
                t0 = time.perf_counter()
                logits = await loop.run_in_executor(self.executor, self._call, batch, "runtime", len(live))
                self._answer(live, logits, t0)
            except _Failed as e:
                self._fail_batch(live, e.step, e.cause)
            finally:  # cancelled mid-batch (a stop past its grace): ``taken`` stays, for _fail_all to answer
                self.busy = False
            self.taken = []

    def _call(self, batch: np.ndarray, step: str, n: int) -> np.ndarray:
        """The runtime on ``batch``, in chunks of ``max_batch`` rows (a v2 tensor may be larger)."""
        try:
            if len(batch) == 1:  # the model's own time, without the thread hand-off: what inlining would cost
                t0 = time.perf_counter()
                out = self.run(batch)
                ms = (time.perf_counter() - t0) * 1e3
                self.single_ms = ms if self.single_ms is None else 0.8 * self.single_ms + 0.2 * ms
                return out
            if len(batch) <= self.max_batch:
                return self.run(batch)
            return np.concatenate([self.run(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)])
        except Exception as e:  # noqa: BLE001 - the batch fails, the worker lives
            raise _Failed(step, e) from None

    def _answer(self, items: list[_Item], logits: np.ndarray, t0: float) -> None:
        seconds = time.perf_counter() - t0
        total = sum(len(it.rows) for it in items)
        if len(logits) != total:
            raise _Failed("split", ValueError(f"the runtime returned {len(logits)} rows for a batch of {total}"))
        at = 0
        for it in items:
            if not it.future.done():
                it.future.set_result(logits[at] if it.single else logits[at:at + len(it.rows)])
            at += len(it.rows)
        try:  # metrics never fail a batch that ran: counted, logged once
            self.on_batch(total, seconds)
        except Exception as e:  # noqa: BLE001
            self.metric_errors += 1
            if self.metric_errors == 1:
                log.error("%s: a batch's metrics failed to record (the answers went out; logged once): %r",
                          self.name, e)

    def _fail_batch(self, items: list[_Item], step: str, cause: Exception) -> None:
        log.error("%s: a batch of %d failed at %s: %r", self.name, len(items), step, cause)
        self.on_error(step)
        for it in items:
            if not it.future.done():
                it.future.set_exception(BatchFailed(f"{self.name} failed on this batch"))

    def _depth(self) -> None:
        try:
            self.on_depth(self.rows)
        except Exception:  # noqa: BLE001 - a gauge is never a reason to fail a request
            self.metric_errors += 1

    def _ended(self, task: asyncio.Task) -> None:
        if not task.cancelled():
            log.error("%s: the batch worker died: %r", self.name, task.exception())
            self.on_error("worker_died")
        self._fail_all(Unavailable(f"{self.name}'s batch worker stopped"))

    def _fail_all(self, error: Exception) -> None:
        """Every item queued or taken gets ``error`` (nothing is left unanswered)."""
        for it in [*self.taken, *self.queue]:
            if not it.future.done():
                it.future.set_exception(error)
        self.queue.clear()
        self.taken = []
        self.rows = 0
        self._depth()


class _Failed(Exception):
    def __init__(self, step: str, cause: Exception):
        super().__init__(step)
        self.step, self.cause = step, cause


def _expire(future: asyncio.Future, name: str, timeout_s: float) -> None:
    if not future.done():
        future.set_exception(TimedOut(f"{name} did not answer within {timeout_s * 1e3:.0f} ms"))
