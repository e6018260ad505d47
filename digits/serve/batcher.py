"""Dynamic batching: concurrent requests for one model become one runtime call.

A request puts its input on the model's queue and awaits a future. The model's worker
takes the first waiting input, then gathers more for up to ``max_wait_ms`` (or until
``max_batch``), runs them as one batch on the inference thread, and answers each
future with its own row. This is what Triton's dynamic batcher and TorchServe's
``batch_delay`` do, with one difference: the worker waits only while ``others_coming()``
says more requests are on their way (received, not yet queued). A lone client is then
answered at once instead of after ``max_wait_ms``. ``max_batch=1`` is plain batch-1 serving. A failing call fails
only the requests in that batch; the worker goes on to the next.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Callable

import numpy as np


class Batcher:
    def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch: int, max_wait_ms: float,
                 executor: Executor, on_batch: Callable[[int, float], None] = lambda n, s: None,
                 others_coming: Callable[[], bool] = lambda: True):
        self.run, self.max_batch, self.max_wait = run, max_batch, max_wait_ms / 1e3
        self.executor, self.on_batch, self.others_coming = executor, on_batch, others_coming
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """One normalized [1,28,28] float32 input -> its logits [10]."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((x, future))
        return await future

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
            live = [(x, f) for x, f in items if not f.done()]  # a client that went away is skipped
            if not live:
                continue
            batch = np.stack([x for x, _ in live])
            t0 = time.perf_counter()
            try:
                logits = await loop.run_in_executor(self.executor, self.run, batch)
            except Exception as e:  # noqa: BLE001 - the batch fails, the worker lives
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.on_batch(len(live), time.perf_counter() - t0)
            for (_, f), row in zip(live, logits, strict=True):
                if not f.done():
                    f.set_result(row)
