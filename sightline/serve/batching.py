"""Micro-batching: concurrent requests' images are coalesced into one inference call.

Each request awaits `submit(x)` per image; a single worker task collects up to `max_size` queued images (waiting
at most `max_wait_ms` after the first one), runs the model once in a dedicated thread (so the event loop keeps
accepting requests) and hands each caller its row of logits. `close()` finishes what is queued, then stops.

`infer` returns an `Output`, or any batch result with the same two methods (`take(index)` -> rows,
`concat(parts)` -> one result): the service's `monitoring.Scored` adds the open-set scores, computed once per
batch in the same thread (the k-NN bank is read once per batch instead of once per request).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from sightline.inference import Output

__all__ = ["MicroBatcher", "BatcherClosedError", "Coalescer"]


class BatcherClosedError(RuntimeError):
    """The service is shutting down and takes no new work."""


_STOP = object()


class MicroBatcher:
    def __init__(
        self,
        infer: Callable[[np.ndarray], Any],
        *,
        max_size: int = 32,
        max_wait_ms: float = 4.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """infer: (N, 3, S, S) float32 -> Output (logits, features, CAMs) of N rows, or a result with the same
        `take` / `concat`; called from one worker thread, never concurrently."""
        self._infer = infer
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000
        self._on_batch = on_batch
        self._queue: asyncio.Queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sightline-infer")
        self._task: asyncio.Task | None = None
        self._closing = False
        self.pending = 0  # images submitted and not yet answered (queue depth, for metrics and tests)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sightline-batcher")

    async def submit(self, x: np.ndarray) -> Any:
        """(3, S, S) input -> its one-row Output (or `infer`'s result type)."""
        if self._closing or self._task is None:
            raise BatcherClosedError("the service is shutting down; retry on another replica.")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((x, future))
        self.pending += 1
        try:
            return await future
        finally:
            self.pending -= 1

    async def submit_many(self, xs: list[np.ndarray]) -> Any:
        """list of (3, S, S) -> Output of N rows, each image queued on its own so it can join other requests."""
        rows = await asyncio.gather(*(self.submit(x) for x in xs))
        return type(rows[0]).concat(rows) if rows else Output.concat([])

    async def close(self) -> None:
        """Stop accepting work, finish everything queued, stop the worker."""
        if self._task is None:
            return
        self._closing = True
        self._queue.put_nowait(_STOP)
        await self._task
        self._task = None
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = False
        while not stop:
            item = await self._queue.get()
            if item is _STOP:
                stop = True
                batch = self._drain()
            else:
                batch = [item]
                deadline = loop.time() + self.max_wait_s
                while len(batch) < self.max_size:
                    try:
                        nxt = self._queue.get_nowait()
                    except asyncio.QueueEmpty:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        try:
                            nxt = await asyncio.wait_for(self._queue.get(), remaining)
                        except TimeoutError:
                            break
                    if nxt is _STOP:
                        stop = True
                        batch += self._drain()
                        break
                    batch.append(nxt)
            for start in range(0, len(batch), self.max_size):
                await self._run_batch(loop, batch[start : start + self.max_size])

    def _drain(self) -> list:
        items = []
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return items
            if item is not _STOP:
                items.append(item)

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        live = [(x, f) for x, f in batch if not f.cancelled()]  # a client that went away needs no answer
        if not live:
            return
        x = np.ascontiguousarray(np.stack([x for x, _ in live]), dtype=np.float32)
        try:
            out = await loop.run_in_executor(self._executor, self._infer, x)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request, which answers 5xx
            for _, f in live:
                if not f.done():
                    f.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(live))
        for i, (_, f) in enumerate(live):
            if not f.done():
                f.set_result(out.take(slice(i, i + 1)))


class Coalescer:
    """Concurrent requests' blocking steps joined into one call on a worker thread: `submit(item)` waits for
    `run(items)` (one result per item, in order; an exception instance as a result fails that item only), which
    takes every item submitted while the previous call ran, at most `max_items`. No timer: an idle service runs
    each item at once; under load each call carries what arrived during the last one. An exception raised by `run`
    reaches every item of that call. Items whose caller went away (a client that hung up) still run, and their
results are discarded: the service's store step records what it received and computed, so an image is never lost
to the monitor or the review queue because its sender stopped waiting for the answer.

    The service's store step (`routes/predict.py`) uses it: the requests of a micro-batch come back from inference
    together, and their prediction and signal rows go to the database in one transaction (one INSERT of each
    kind) instead of one per request."""

    def __init__(self, run: Callable[[list[Any]], list[Any]], *, max_items: int = 64) -> None:
        self._run_items = run
        self.max_items = max_items
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def submit(self, item: Any) -> Any:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="sightline-coalescer")
        return await future

    async def _drain(self) -> None:
        import anyio

        try:
            while self._pending:
                taken, self._pending = self._pending[: self.max_items], self._pending[self.max_items :]
                live = taken  # every item runs, a cancelled caller's too (see the class docstring)
                try:
                    results = await anyio.to_thread.run_sync(self._run_items, [item for item, _ in live])
                except BaseException as exc:  # handed to every request of the call, which answers 5xx
                    for _, f in live:
                        if f.done():
                            continue
                        if isinstance(exc, Exception):
                            f.set_exception(exc)
                        else:  # cancelled (shutdown): so are the requests waiting on this call
                            f.cancel()
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, f), result in zip(live, results):
                    if f.done():
                        continue
                    if isinstance(result, BaseException):
                        f.set_exception(result)
                    else:
                        f.set_result(result)
        finally:
            self._task = None
