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

