"""Dynamic batching: concurrent requests for one model become one runtime call, under
admission control and supervision.

A request puts its input on the model's bounded queue and awaits a future. The model's
worker takes the first waiting input, then gathers more for up to ``max_wait_ms`` (or until
``max_batch``), runs them as one batch on the inference thread, and answers each future with
its own row. This is what Triton's dynamic batcher and TorchServe's ``batch_delay`` do, with
one difference: the worker waits only while ``others_coming()`` says more requests are on
their way (received, not yet queued). A lone client is then answered at once instead of
after ``max_wait_ms``. ``max_batch=1`` is plain batch-1 serving.

Admission: a full queue refuses at once (:class:`Overloaded`: the server answers 503 with
Retry-After); a request not answered within its deadline gives up (:class:`TimedOut`, 504),
and the worker skips it. Supervision: every step of a batch is guarded; a failure answers
that batch's requests with :class:`BatchFailed` (a generic 500; the details go to the log
and ``on_error`` counts it by cause) and the worker goes on. If the worker dies anyway,
``alive`` turns false (readiness reports it) and everything queued is answered with
:class:`Unavailable`. ``stop`` drains: what is queued is still answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Callable

import numpy as np

log = logging.getLogger("digits.serve")


class Overloaded(Exception):
    """The model's queue is full."""


class TimedOut(Exception):
    """Not answered within the request's deadline."""


class BatchFailed(Exception):
    """The batch this request was in failed (the cause is in the server's log)."""


class Unavailable(Exception):
    """The model's worker is stopped, stopping or dead."""


class Batcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int, max_wait_ms: float,
                 executor: Executor, on_batch: Callable[[int, float], None] = lambda n, s: None,
                 others_coming: Callable[[], bool] = lambda: True, max_queue: int = 256,
                 on_error: Callable[[str], None] = lambda cause: None, name: str = "model"):
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1e3
        self.executor, self.on_batch, self.others_coming = executor, on_batch, others_coming
        self.max_queue, self.on_error, self.name = max_queue, on_error, name
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.accepting = False
        self.busy = False  # a batch is on the inference thread

    def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.max_queue)
        self.task = asyncio.get_running_loop().create_task(self._worker())
        self.task.add_done_callback(self._ended)
        self.accepting = True

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def depth(self) -> int:
        return self.queue.qsize() if self.queue else 0

    async def stop(self, grace_s: float = 10.0) -> None:
        """Refuse new work, answer what is queued (within ``grace_s``), then end the worker."""
        self.accepting = False
        deadline = time.monotonic() + grace_s
        while self.alive and (self.depth() or self.busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self._fail_queued(Unavailable(f"{self.name} is shutting down"))

    async def submit(self, x: np.ndarray, timeout_s: float | None = None) -> np.ndarray:
        """One normalized [1,28,28] float32 input -> its logits [10]."""
        if not (self.accepting and self.alive):
            raise Unavailable(f"{self.name} is not serving")
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((x, future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.name}'s queue is full ({self.max_queue})") from None
        try:
            return await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            raise TimedOut(f"{self.name} did not answer within {timeout_s * 1e3:.0f} ms") from None

    async def _gather(self) -> list:
        items = [await self.queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(items) < self.max_batch:
            try:
                items.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.perf_counter()
            if left <= 0 or not self.others_coming():
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return items

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather()
            live = [(x, f) for x, f in items if not f.done()]  # a client that gave up is skipped
            if not live:
                continue
            step = "stack"
            try:
                batch = np.stack([x for x, _ in live])
                step, t0, self.busy = "runtime", time.perf_counter(), True
                try:
                    logits = await loop.run_in_executor(self.executor, self.run, batch)
                finally:
                    self.busy = False
                step = "callback"
                self.on_batch(len(live), time.perf_counter() - t0)
                step = "split"
                rows = list(logits)
                if len(rows) != len(live):
                    raise ValueError(f"the runtime returned {len(rows)} rows for a batch of {len(live)}")
                for (_, f), row in zip(live, rows, strict=True):
                    if not f.done():
                        f.set_result(row)
            except asyncio.CancelledError:
                for _, f in live:
                    if not f.done():
                        f.set_exception(Unavailable(f"{self.name} is shutting down"))
                raise
            except Exception as e:  # noqa: BLE001 - the batch fails, the worker lives
                log.error("%s: a batch of %d failed at %s: %r", self.name, len(live), step, e)
                self.on_error(step)
                for _, f in live:
                    if not f.done():
                        f.set_exception(BatchFailed(f"{self.name} failed on this batch"))

    def _ended(self, task: asyncio.Task) -> None:
        if not task.cancelled():
            log.error("%s: the batch worker died: %r", self.name, task.exception())
            self.on_error("worker_died")
        self._fail_queued(Unavailable(f"{self.name}'s batch worker stopped"))

    def _fail_queued(self, error: Exception) -> None:
        while self.queue is not None and not self.queue.empty():
            _, f = self.queue.get_nowait()
            if not f.done():
                f.set_exception(error)
