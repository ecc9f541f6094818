"""Micro-batcher: coalescing, order, errors, draining on shutdown. (The rate limiter, the key store and the
settings have their own test modules.)"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sightline.inference import Output
from sightline.serve.batching import BatcherClosedError, MicroBatcher


def _weights() -> np.ndarray:
    return np.arange(12, dtype=np.float32).reshape(3, 4) / 10  # (C=3 inputs summed) -> K=4 logits


def _infer_recorder(calls: list[int]):
    w = _weights()

    def infer(x: np.ndarray) -> Output:
        calls.append(len(x))
        features = x.reshape(len(x), 3, -1).mean(axis=2)
        return Output(features @ w, features)

    return infer


def test_concurrent_submissions_are_coalesced_in_order():
    calls: list[int] = []
    xs = [np.full((3, 2, 2), i, dtype=np.float32) for i in range(10)]

    async def main():
        batcher = MicroBatcher(_infer_recorder(calls), max_size=4, max_wait_ms=50)
        await batcher.start()
        out = await asyncio.gather(*(batcher.submit(x) for x in xs))
        await batcher.close()
        return out

    out = asyncio.run(main())
    assert calls == [4, 4, 2]  # 10 concurrent images, at most 4 per inference call
    expected = np.stack([x.reshape(3, -1).mean(axis=1) for x in xs]) @ _weights()
    # each caller gets its own row of every output of the pass
    np.testing.assert_allclose(np.concatenate([o.logits for o in out]), expected, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([o.features for o in out]),
                               np.stack([x.reshape(3, -1).mean(axis=1) for x in xs]), rtol=1e-6)


def test_close_drains_queued_work_then_refuses():
    calls: list[int] = []

    async def main():
        batcher = MicroBatcher(_infer_recorder(calls), max_size=8, max_wait_ms=1000)
        await batcher.start()
        pending = [asyncio.create_task(batcher.submit(np.ones((3, 2, 2), np.float32))) for _ in range(3)]
        await asyncio.sleep(0)  # queued, the worker is waiting for more (1 s)
        await batcher.close()  # must answer them now rather than drop them
        results = [await p for p in pending]
        with pytest.raises(BatcherClosedError):
            await batcher.submit(np.ones((3, 2, 2), np.float32))
        return results

    results = asyncio.run(main())
    assert len(results) == 3 and sum(calls) == 3


def test_inference_error_reaches_every_waiting_caller():
    def broken(x):
        raise RuntimeError("device lost")

    async def main():
        batcher = MicroBatcher(broken, max_size=4, max_wait_ms=10)
        await batcher.start()
        results = await asyncio.gather(
            *(batcher.submit(np.zeros((3, 2, 2), np.float32)) for _ in range(2)), return_exceptions=True
        )
        await batcher.close()
        return results

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))



def test_coalescer_joins_what_arrives_together_and_keeps_failures_apart():
    """Requests submitted while a call runs go together into the next one, in order; a per-item exception fails
    that item only, an exception of the call fails every item of it, and the next call runs normally."""
    from sightline.serve.batching import Coalescer

    calls: list[list[int]] = []

    def run(items: list[int]) -> list:
        calls.append(list(items))
        if 99 in items:
            raise RuntimeError("database down")
        return [ValueError(f"bad {i}") if i == 3 else i * 10 for i in items]

    async def main():
        step = Coalescer(run)
        first = asyncio.ensure_future(step.submit(0))
        await asyncio.sleep(0)  # the first call starts with item 0 alone
        rest = await asyncio.gather(*(step.submit(i) for i in range(1, 6)), return_exceptions=True)
        failed = await asyncio.gather(step.submit(99), step.submit(7), return_exceptions=True)
        return await first, rest, failed, await step.submit(8)

    first, rest, failed, last = asyncio.run(main())
    assert first == 0 and calls[0] == [0]
    assert calls[1] == [1, 2, 3, 4, 5]  # arrived while the first call ran: one call
    assert rest[:2] == [10, 20] and isinstance(rest[2], ValueError) and rest[3:] == [40, 50]
    assert all(isinstance(x, RuntimeError) for x in failed) and calls[2] == [99, 7]
    assert last == 80 and calls[3] == [8]


def test_coalescer_still_runs_items_whose_caller_went_away():
    """A client that hangs up after inference does not erase its prediction: its store item runs with the others
    (nothing is lost to the monitor), and only its result is discarded."""
    from sightline.serve.batching import Coalescer

    calls: list[list[int]] = []

    async def main():
        step = Coalescer(lambda items: calls.append(list(items)) or items)
        blocker = asyncio.ensure_future(step.submit(0))
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(step.submit(1))
        kept = asyncio.ensure_future(step.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        return await blocker, await kept

    assert asyncio.run(main()) == (0, 2)
    assert calls == [[0], [1, 2]]
