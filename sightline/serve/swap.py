"""What the service serves, and switching it without downtime (`sightline serve --registry DIR --alias champion`).

A `Served` is one loaded model: its bundle, inference engine, micro-batcher, open-set observer and monitor, plus
the registry version it came from. The state holds exactly one at a time and replaces it in one assignment; a
request binds the `Served` it started with (`with served.use():`) and finishes on it, so no request ever mixes two
models or meets a closed batcher. A replaced `Served` is retired once its in-flight requests have ended: its
batcher answers what is queued, then its engine and monitor close.

`RegistryWatcher` polls the registry's alias table every `registry_poll_s` seconds (one small SELECT: cheap, and it
sees a `sightline registry promote` or `rollback` made by any process, for every replica). When the alias points
to another version it loads that version beside the current one and swaps; a version that cannot be served (no
ONNX file for the backend, a load failure) is logged once and the current model keeps serving.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from sightline.bundle import Bundle
    from sightline.inference import Engine
    from sightline.loop.registry import Registry, Version
    from sightline.serve.batching import MicroBatcher
    from sightline.serve.metrics import ServiceMetrics
    from sightline.serve.monitoring import Monitor, Observer
    from sightline.serve.settings import Settings
    from sightline.storage.store import Store

__all__ = ["Served", "open_served", "retire", "RegistryWatcher", "onnx_file", "registry_version"]

log = logging.getLogger("sightline.serve")


@dataclass(eq=False)
class Served:
    """One loaded model. Never changed after it is built (only its in-flight count moves)."""

    bundle: Bundle
    engine: Engine
    batcher: MicroBatcher
    observer: Observer | None = None
    monitor: Monitor | None = None
    monitor_message: str | None = None
    registry_version: str | None = None  # "v3" when served from the registry
    bundle_hash: str | None = None
    inflight: int = field(default=0)

    @property
    def stored_version(self) -> str:
        """The model version written with each prediction row: the bundle's version, plus the registry version
        and content hash when served from the registry (two registry versions may share a bundle version)."""
        if self.registry_version is None:
            return str(self.bundle.version)[:100]  # the column's width (PostgreSQL refused longer: every request 500)
        return f"{self.bundle.version}+{self.registry_version}.{(self.bundle_hash or '')[:12]}"[:100]

    def model_ref(self) -> dict[str, Any]:
        return {"name": self.bundle.name, "version": self.bundle.version,
                "registry_version": self.registry_version, "bundle_hash": self.bundle_hash}

    @contextmanager
    def use(self) -> Iterator[Served]:
        """Count a request on this model while it runs (the event loop is single-threaded: no lock needed)."""
        self.inflight += 1
        try:
            yield self
        finally:
            self.inflight -= 1


def onnx_file(settings: Settings, bundle: Bundle) -> Path:
    return bundle.int8_path if settings.int8 else bundle.onnx_path


async def open_served(settings: Settings, bundle: Bundle, *, store: Store, metrics: ServiceMetrics,
                      version: Version | None = None) -> Served:
    """Engine, observer, monitor (not started) and a started batcher for `bundle`. The engine is built in a worker
    thread, so a swap does not stall the requests being served meanwhile."""
    from sightline.inference import open_engine
    from sightline.serve.batching import MicroBatcher
    from sightline.serve.monitoring import Monitor, open_observer

    if settings.review_confidence is not None:
        bundle.thresholds = {**bundle.thresholds, "review_confidence": settings.review_confidence}

    def load() -> tuple[Engine, Observer | None, str | None]:
        engine = open_engine(
            bundle,
            backend="onnx-int8" if settings.int8 else "onnx",
            threads=settings.threads,
            spinning=False,  # decoding shares the cores with inference; spinning threads would starve it
            max_pixels=settings.max_pixels,
            top_k=settings.top_k,
        )
        try:
            observer, message = open_observer(settings, bundle, engine)
        except BaseException:
            engine.close()
            raise
        return engine, observer, message

    engine, observer, message = await anyio.to_thread.run_sync(load)
    ref = version.ref if version is not None else None
    digest = version.bundle_hash if version is not None else None
    monitor = None
    if observer is None:
        log.warning("%s", message)
    else:
        model = {"name": bundle.name, "version": bundle.version}
        if ref is not None:
            model["registry_version"] = ref
        monitor = Monitor(store=store, observer=observer, settings=settings, metrics=metrics, model=model)
    batcher = MicroBatcher(
        engine.run if observer is None else observer.infer(engine.run),  # + open-set scores, per batch
        max_size=settings.batch_max_size,
        max_wait_ms=settings.batch_max_wait_ms,
        on_batch=metrics.batch_size.observe,
    )
    await batcher.start()
    return Served(bundle=bundle, engine=engine, batcher=batcher, observer=observer, monitor=monitor,
                  monitor_message=message, registry_version=ref, bundle_hash=digest)


async def retire(served: Served, *, timeout_s: float = 60.0) -> None:
    """Close a replaced (or the last) model once the requests bound to it have ended: the batcher answers what is
    queued, then the monitor finishes its run and the engine closes."""
    deadline = time.monotonic() + timeout_s
    while served.inflight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if served.inflight > 0:
        log.warning("closing model %s with %d request(s) still running after %.0f s", served.stored_version,
                    served.inflight, timeout_s)
    await served.batcher.close()
    if served.monitor is not None:
        await served.monitor.close()
    served.engine.close()


def registry_version(registry: Registry, alias: str) -> Version:
    """The version `alias` points to now, its copy fetched; UserInputError when it is not set or its copy is bad.
    Only this alias is resolved: a bad remote copy of another alias (a challenger) does not stop the service. A copy
    changed since it was added (its hash checked) is refused: served, another model answered under this version's
    name and hash."""
    from sightline.errors import UserInputError

    version = registry.resolve(alias)
    if not registry.intact(version):
        raise UserInputError(f"{alias} is {version.ref}, whose files at {version.path} are missing or changed since it "
                             f"was added; {registry.restore_hint(version)}.")
    return version


class RegistryWatcher:
    """Polls where `settings.alias` points and swaps the served model when it moves (see the module docstring)."""

    def __init__(self, state: Any, registry: Registry) -> None:  # a serve.state.ServiceState
        self.state = state
        self.registry = registry
        self.settings = state.settings
        self._task: asyncio.Task | None = None
        self._retiring: set[asyncio.Task] = set()
        self._refused: int | None = None  # the version id last found unservable (logged once, until the alias moves)
        self.swaps = 0
        self.polls = 0  # polls ended (each read the aliases, whatever came of it): what a caller can wait on
        self.retired = 0  # replaced models closed, their in-flight requests answered (one per swap, in time)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="sightline-registry-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not stop the watcher or the service
                log.warning("registry check failed (%s: %s); still serving %s", type(exc).__name__, exc,
                            self.state.served.stored_version)
            self.polls += 1

    async def check(self) -> bool:
        """One poll: swap when the alias moved to a servable version (its copy intact). True when a swap happened."""
        from sightline.bundle import load_bundle
        from sightline.errors import one_line

        aliases = await anyio.to_thread.run_sync(self.registry.aliases)
        version = aliases.get(self.settings.alias)
        current = self.state.served
        if version is None or version.bundle_hash == current.bundle_hash or version.id == self._refused:
            return False
        try:
            # hashed as at start (registry_version): a copy changed since it was added would answer under this
            # version's name and hash; once a move, off the event loop (tens of ms for a Lite0 bundle)
            if not await anyio.to_thread.run_sync(self.registry.intact, version):
                hint = await anyio.to_thread.run_sync(self.registry.restore_hint, version)
                raise FileNotFoundError(f"its files at {version.path} are missing or changed since it was added "
                                        f"({hint})")
            bundle = await anyio.to_thread.run_sync(load_bundle, version.path)
            path = onnx_file(self.settings, bundle)
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (export the bundle with `sightline export` "
                                        f"{'--int8 ' if self.settings.int8 else ''}and add it again)")
            new = await open_served(self.settings, bundle, store=self.state.store, metrics=self.state.metrics,
                                    version=version)
        except Exception as exc:  # noqa: BLE001 - an unservable version is reported, the current one keeps serving
            self._refused = version.id
            log.error("registry %s moved to %s, which cannot be served (%s); still serving %s", self.settings.alias,
                      version.ref, one_line(exc), current.stored_version)
            return False
        self._refused = None
        if new.monitor is not None:
            await new.monitor.start()
        self.state.served = new  # one assignment: new requests take the new model from here on
        self.swaps += 1
        log.warning("registry %s moved: now serving %s %s (was %s)", self.settings.alias, version.ref,
                 new.stored_version, current.stored_version)
        task = asyncio.create_task(retire(current), name="sightline-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retired)
        return True

    def _retired(self, task: asyncio.Task) -> None:
        self._retiring.discard(task)
        self.retired += 1
