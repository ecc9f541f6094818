"""Micro-batcher (coalescing, order, errors, draining on shutdown), rate limiter, key store, `keys` commands."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from sightline.serve.batching import BatcherClosedError, MicroBatcher
from sightline.serve.ratelimit import RateLimiter
from sightline.serve.store import Store, hash_key


def _weights() -> np.ndarray:
    return np.arange(12, dtype=np.float32).reshape(3, 4) / 10  # (C=3 inputs summed) -> K=4 logits


def _infer_recorder(calls: list[int]):
    w = _weights()

    def infer(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return x.reshape(len(x), 3, -1).mean(axis=2) @ w

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
    np.testing.assert_allclose(np.stack(out), expected, rtol=1e-6)


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


def test_rate_limiter_bucket():
    limiter = RateLimiter(3)
    assert [limiter.check("k") for _ in range(3)] == [None, None, None]
    wait = limiter.check("k")
    assert wait is not None and 0 < wait <= 20.0  # one token every 20 s at 3 per minute
    assert limiter.check("other") is None
    assert RateLimiter(0).check("k") is None


def test_store_keys_hashed_and_revocable(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    key = store.create_key("ci")
    assert key.startswith("sl_") and len(key) > 40
    raw = b"".join(f.read_bytes() for f in tmp_path.glob("db.sqlite*"))  # WAL mode: rows may sit in -wal
    assert key.encode() not in raw and hash_key(key).encode() in raw  # only the hash is stored
    assert store.verify_key(key).name == "ci"
    assert store.verify_key(key[:-2] + "zz") is None and store.verify_key("nope") is None
    assert store.revoke_key("ci") == 1 and store.verify_key(key) is None
    store.close()


def test_keys_commands(tmp_path, capsys):
    from sightline.cli import main

    url = f"sqlite:///{tmp_path / 'k.db'}"

    def run(*args):
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        return exc.value.code, capsys.readouterr()

    code, out = run("keys", "create", "ops", "--database-url", url, "--json")
    assert code == 0
    key = json.loads(out.out)["key"]
    code, out = run("keys", "list", "--database-url", url, "--json")
    listed = json.loads(out.out)
    assert code == 0 and listed[0]["name"] == "ops" and key not in out.out and listed[0]["revoked"] is None
    assert run("keys", "revoke", "ops", "--database-url", url)[0] == 0
    code, out = run("keys", "revoke", "ops", "--database-url", url)
    assert code == 2 and "no active key" in out.err
    code, out = run("keys", "create", "x")  # no bundle, no URL: one-line error
    assert code == 2 and "SIGHTLINE_DATABASE_URL" in out.err


def test_bad_settings_and_database_urls_are_one_line_errors(tmp_path, capsys) -> None:
    import pytest

    from sightline.cli import main
    from sightline.errors import UserInputError
    from sightline.serve.settings import load_settings
    from sightline.serve.store import Store

    with pytest.raises(UserInputError, match="SIGHTLINE_PORT"):
        load_settings(port=70000)
    with pytest.raises(UserInputError, match="cannot be used"):
        Store("nonsense")
    with pytest.raises(UserInputError, match="cannot be opened"):
        Store(f"sqlite:///{tmp_path}/missing/dir/x.db")
    with pytest.raises(UserInputError, match=r"\*\*\*"):  # the password never reaches the message
        Store("postgresql+nosuchdriver://u:secret@localhost/db")
    with pytest.raises(SystemExit) as exc:
        main(["keys", "list", "--database-url", "nonsense"])
    assert exc.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
