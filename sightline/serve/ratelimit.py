"""Token buckets by key (an API key's id, a client's address): `per_minute` a minute, bursts up to the same number."""
from __future__ import annotations

import threading
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """`max_keys` bounds the buckets held, so keys that come and go (client addresses) do not pile up: past it, the
    buckets refilled to full (the same as none) are dropped, then, while more than half of `max_keys` remain, the
    longest idle (an address rotating through more than that many others gets a fresh bucket; memory and the time
    spent pruning, once per max_keys / 2 new keys, stay bounded)."""

    def __init__(self, per_minute: int, *, max_keys: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._buckets: dict[object, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many buckets are held."""
        return len(self._buckets)

    def _tokens(self, key: object, now: float) -> float:
        tokens, last = self._buckets.get(key, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60.0)

    def check(self, key: object) -> float | None:
        """Take one token for `key`; None when allowed, else seconds until the next token."""
        if self.per_minute <= 0:
            return None
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(key, now)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) * 60.0 / self.per_minute
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > self.max_keys:
                self._prune(now)
            return None

    def _prune(self, now: float) -> None:
        kept = {k: v for k, v in self._buckets.items() if self._tokens(k, now) < self.per_minute}
        half = self.max_keys // 2
        if len(kept) > half:  # the most recently used half stays
            kept = dict(sorted(kept.items(), key=lambda item: item[1][1])[len(kept) - half:])
        self._buckets = kept

    def refusal(self) -> str:
        """What a refused request is told (the API's JSON detail, the web app's text)."""
        return f"rate limit of {self.per_minute} requests per minute reached; retry later."

    def waiting(self, key: object) -> float | None:
        """Seconds until `key` has a token again, taking none; None when it has one now."""
        if self.per_minute <= 0:
            return None
        with self._lock:
            tokens = self._tokens(key, time.monotonic())
        return None if tokens >= 1.0 else (1.0 - tokens) * 60.0 / self.per_minute
