"""The per-key token bucket (sightline/serve/ratelimit.py): `per_minute` requests a minute, bursts up to the same
number, each key its own bucket, 0 for no limit. The limiter reads a fake clock here, so every wait is exact."""
from __future__ import annotations

import types

import pytest

from sightline.serve import ratelimit
from sightline.serve.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(ratelimit, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_a_burst_of_per_minute_requests_then_the_wait_for_the_next_token(clock: Clock) -> None:
    limiter = RateLimiter(3)
    assert [limiter.check("k") for _ in range(3)] == [None, None, None]
    assert limiter.check("k") == pytest.approx(20.0)  # one token every 60 / 3 = 20 s
    clock.now += 5.0
    assert limiter.check("k") == pytest.approx(15.0)  # a refused request spends nothing
    clock.now += 15.0
    assert limiter.check("k") is None
    assert limiter.check("k") == pytest.approx(20.0)


def test_an_idle_key_saves_up_one_burst_at_most(clock: Clock) -> None:
    limiter = RateLimiter(3)
    for _ in range(3):
        limiter.check("k")
    clock.now += 600.0  # ten minutes idle: 30 tokens earned, 3 kept
    assert [limiter.check("k") for _ in range(4)] == [None, None, None, pytest.approx(20.0)]


def test_each_key_has_its_own_bucket_and_zero_means_no_limit(clock: Clock) -> None:
    limiter = RateLimiter(2)
    assert [limiter.check("alice") for _ in range(3)] == [None, None, pytest.approx(30.0)]
    assert [limiter.check("bob") for _ in range(2)] == [None, None]
    assert all(RateLimiter(0).check("k") is None for _ in range(1000))


def test_waiting_takes_no_token_and_the_buckets_held_stay_bounded(clock: Clock) -> None:
    limiter = RateLimiter(2, max_keys=4)
    assert limiter.waiting("k") is None and limiter.waiting("k") is None  # asking spends nothing
    limiter.check("k"), limiter.check("k")
    assert limiter.waiting("k") == pytest.approx(30.0) and limiter.waiting("k") == pytest.approx(30.0)
    assert RateLimiter(0).waiting("k") is None
    for address in ("a", "b", "c"):  # four buckets: at the bound, all kept
        limiter.check(address)
    assert len(limiter) == 4 and limiter.waiting("k") == pytest.approx(30.0)
    clock.now += 60.0  # all full again: the same as no bucket
    limiter.check("e")
    assert len(limiter) == 1  # past the bound: the full ones dropped, "e" kept
    for address in ("f", "g", "h"):
        clock.now += 1.0
        limiter.check(address)
    clock.now += 1.0
    limiter.check("i")  # five buckets in use: the two used last stay
    assert len(limiter) == 2
    assert limiter.check("h") is None and limiter.check("h") == pytest.approx(29.0)  # kept: its token spent 1 s ago
    assert limiter.check("f") is None and limiter.check("f") is None  # dropped: a fresh bucket of two
