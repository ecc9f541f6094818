"""Everything the routes share, created in the app's lifespan."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import anyio

from sightline.bundle import Bundle
from sightline.inference import Engine
from sightline.serve.batching import MicroBatcher
from sightline.storage.images import ImageKeeper
from sightline.serve.metrics import ServiceMetrics
from sightline.serve.monitoring import Monitor, Observer
from sightline.serve.ratelimit import RateLimiter
from sightline.serve.settings import Settings
from sightline.storage.store import ApiKeyInfo, Store
from sightline.serve.swap import RegistryWatcher, Served

__all__ = ["ServiceState", "KeyCache", "TooManyFailedKeys"]


class KeyCache:
    """Verified keys trusted for `ttl_s` seconds, so a busy client does not cost a database read per request.
    A revoked key stops working within `ttl_s`."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[ApiKeyInfo, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> ApiKeyInfo | None:
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is None or entry[1] < time.monotonic():
                self._entries.pop(key_hash, None)
                return None
            return entry[0]

    def put(self, key_hash: str, info: ApiKeyInfo) -> None:
        if self.ttl_s > 0:
            with self._lock:
                self._entries[key_hash] = (info, time.monotonic() + self.ttl_s)


class TooManyFailedKeys(Exception):
    """A client address presented more unknown or revoked keys than settings.failed_keys_per_minute allows; its
    next key is checked in `retry_s` seconds."""

    def __init__(self, retry_s: float) -> None:
        super().__init__(f"too many unknown API keys; retry in {retry_s:.0f} s")
        self.retry_s = retry_s


@dataclass
class ServiceState:
    settings: Settings
    served: Served  # the model answering new requests (replaced whole on a registry swap; see serve/swap.py)
    store: Store
    metrics: ServiceMetrics
    limiter: RateLimiter
    keys: KeyCache
    failed_keys: RateLimiter  # by client address: unknown or revoked keys presented (see deps.authorize)
    decode_limiter: anyio.CapacityLimiter  # how many requests decode at once (CPU-bound: about the core count)
    images: ImageKeeper | None = None  # kept images (None: SIGHTLINE_KEEP_IMAGES=false)
    started: float = field(default_factory=time.time)
    watcher: RegistryWatcher | None = None  # polls the registry alias (serve --registry)

    # The current model's parts. A request that awaits should bind `state.served` once instead, so that it
    # finishes on the model it started with.
    @property
    def bundle(self) -> Bundle:
        return self.served.bundle

    @property
    def engine(self) -> Engine:  # the inference core on the bundle's ONNX graph
        return self.served.engine

    async def verify_key(self, key: str, client: str | None) -> ApiKeyInfo | None:
        """The key's ApiKeyInfo from the database (in a worker thread), None when it is unknown or revoked. A client
        address (`client`; None: not known) that presented more unknown or revoked keys than
        settings.failed_keys_per_minute allows gets TooManyFailedKeys instead, without a database read: a flood of
        made-up keys costs the database nothing, and neither guessing nor a misconfigured client can keep it busy.
        Keys already verified (the KeyCache) are answered before this and never wait."""
        if client is not None and (retry := self.failed_keys.waiting(client)) is not None:
            raise TooManyFailedKeys(retry)
        info = await anyio.to_thread.run_sync(self.store.verify_key, key)
        if info is None and client is not None:
            self.failed_keys.check(client)
        return info

    @property
    def batcher(self) -> MicroBatcher:
        return self.served.batcher

    @property
    def observer(self) -> Observer | None:  # open-set decision + signals; None without a reference profile
        return self.served.observer

    @property
    def monitor(self) -> Monitor | None:  # windows and alerts in the background
        return self.served.monitor

    @property
    def monitor_message(self) -> str | None:  # why monitoring is off (one line), when it is
        return self.served.monitor_message
