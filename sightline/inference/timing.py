"""One way to time a latency figure: warm up, repeat within a time budget, report percentiles.

`bench`, `distill` and `compare` all call `time_calls`, so their milliseconds mean the same thing: wall time
(`time.perf_counter`) of whole calls after `warmup` uncounted ones, at least `min_repeats` and at most
`max_repeats` counted, stopping early once `budget_s` has passed.

Example:
    >>> t = time_calls(lambda: engine.run(batch), items=len(batch))
    >>> t.p50_ms, t.ms_per_item
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["Timing", "time_calls"]


@dataclass(frozen=True)
class Timing:
    """Wall-clock figures of repeated calls, in milliseconds; `items` is what one call processes (images)."""

    repeats: int
    items: int
    p50_ms: float
    p95_ms: float
    mean_ms: float

    @property
    def ms_per_item(self) -> float:
        return self.mean_ms / max(self.items, 1)

    @property
    def items_per_s(self) -> float:
        return 1000.0 * self.items / self.mean_ms if self.mean_ms > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()} | {
            "ms_per_item": round(self.ms_per_item, 3), "items_per_s": round(self.items_per_s, 2)}


def time_calls(
    fn: Callable[[], Any],
    *,
    items: int = 1,
    warmup: int = 1,
    min_repeats: int = 3,
    max_repeats: int = 20,
    budget_s: float = 2.0,
) -> Timing:
    """Time `fn()` (see the module docstring). `items`: how many images one call handles, for per-image rates."""
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(f"need 1 <= min_repeats ({min_repeats}) <= max_repeats ({max_repeats})")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_repeats or (len(times) < max_repeats and time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    a = np.asarray(times)
    return Timing(repeats=len(times), items=items, p50_ms=float(np.percentile(a, 50)),
                  p95_ms=float(np.percentile(a, 95)), mean_ms=float(a.mean()))
