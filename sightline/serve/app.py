"""The FastAPI application: `create_app(settings)`.

The lifespan loads the bundle and its ONNX model, opens the database, starts the micro-batcher and, when the
bundle has a reference profile, the background monitor (`serve.monitoring`); on shutdown (uvicorn handles SIGTERM
by finishing in-flight requests first) the monitor finishes its run, the batcher finishes its queue and the
database is closed. Bad input never becomes a 500: image errors carry their status (415 / 413 / 422),
oversized bodies are cut off by `BodyLimitMiddleware` before they are read.

Example:
    >>> app = create_app(Settings(bundle="runs/demo"))
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sightline import __version__
from sightline.errors import SightlineError
from sightline.serve.settings import Settings

__all__ = ["create_app", "BodyLimitMiddleware"]

log = logging.getLogger("sightline.serve")


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when a streamed body passes the cap. An HTTPException, so FastAPI's body parsing
    passes it through unchanged (it turns other parsing failures into 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body above the limit of {limit} bytes; send fewer or smaller images.")


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 for bodies above `max_bytes` (by Content-Length, or counted while streaming),
    and request counts/latency for Prometheus."""

    def __init__(self, app: Any, *, max_bytes: int, metrics: Any = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status_holder = {"status": 500, "started": False}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
            await send(message)

        try:
            declared = int(dict(scope["headers"]).get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > self.max_bytes:
                await _send_json(send_wrapper, 413, BodyTooLarge(self.max_bytes).detail)
                return
            received = 0

            async def limited_receive() -> dict:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_bytes:
                        raise BodyTooLarge(self.max_bytes)
                return message

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except BodyTooLarge as exc:
                if status_holder["started"]:
                    raise
                await _send_json(send_wrapper, 413, exc.detail)
        finally:
            if self.metrics is not None:
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"  # never a raw path: labels must stay few
                self.metrics.requests.labels(scope["method"], path, str(status_holder["status"])).inc()
                self.metrics.latency.labels(path).observe(time.perf_counter() - t0)


async def _send_json(send: Any, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings) -> FastAPI:
    """Build the service for `settings.bundle`. Nothing is loaded until the app starts (lifespan)."""
    from sightline.serve.metrics import ServiceMetrics
    from sightline.serve.routes import health, model, monitor, predict, review

    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from sightline.bundle import load_bundle
        import anyio

        from sightline.inference import open_engine, usable_cores
        from sightline.serve.batching import MicroBatcher
        from sightline.serve.images import ImageKeeper, LocalImageStore
        from sightline.serve.monitoring import Monitor, open_observer
        from sightline.serve.ratelimit import RateLimiter
        from sightline.serve.state import KeyCache, ServiceState
        from sightline.serve.store import Store

        from threadpoolctl import threadpool_limits

        # numpy's BLAS does the monitor's small products (k-NN scores, projections, window tests); its own thread
        # pool, spinning beside ONNX Runtime's threads, cost 60x the work itself on a busy 2-core machine (22 vs
        # 0.33 ms CPU for 16 x 1,280 features against a 243-row bank). One thread; ONNX Runtime is not affected.
        blas = threadpool_limits(limits=1, user_api="blas")
        bundle = load_bundle(settings.bundle)
        if settings.review_confidence is not None:
            bundle.thresholds = {**bundle.thresholds, "review_confidence": settings.review_confidence}
        engine = open_engine(
            bundle,
            backend="onnx-int8" if settings.int8 else "onnx",
            threads=settings.threads,
            spinning=False,  # decoding shares the cores with inference; spinning threads would starve it
            max_pixels=settings.max_pixels,
            top_k=settings.top_k,
        )
        store = Store(settings.resolved_database_url())
        observer, monitor_message = open_observer(settings, bundle, engine)
        monitor_task = None
        if observer is None:
            log.warning("%s", monitor_message)
        else:
            monitor_task = Monitor(store=store, observer=observer, settings=settings, metrics=metrics,
                                   model={"name": bundle.name, "version": bundle.version})
        batcher = MicroBatcher(
            engine.run if observer is None else observer.infer(engine.run),  # + open-set scores, per batch
            max_size=settings.batch_max_size,
            max_wait_ms=settings.batch_max_wait_ms,
            on_batch=metrics.batch_size.observe,
        )
        await batcher.start()
        metrics.pending.set_function(lambda: batcher.pending)
        app.state.sightline = ServiceState(
            settings=settings,
            bundle=bundle,
            engine=engine,
            store=store,
            batcher=batcher,
            metrics=metrics,
            limiter=RateLimiter(settings.rate_limit_per_minute),
            keys=KeyCache(settings.key_cache_s),
            decode_limiter=anyio.CapacityLimiter(settings.decode_threads or usable_cores()),
            observer=observer,
            monitor=monitor_task,
            monitor_message=monitor_message,
            images=ImageKeeper(LocalImageStore(settings.resolved_image_store()), keep_accepted=settings.keep_accepted,
                               max_bytes=settings.image_store_max_bytes,
                               max_age_days=settings.image_store_max_age_days) if settings.keep_images else None,
        )
        if monitor_task is not None:
            await monitor_task.start()  # first run now: delivers what a previous process left in the outbox
        try:
            yield
        finally:
            if monitor_task is not None:
                await monitor_task.close()
            await batcher.close()  # in-flight requests have finished; anything still queued is answered
            engine.close()
            store.close()
            blas.restore_original_limits()

    app = FastAPI(
        title="Sightline",
        version=__version__,
        summary="Image classification with calibrated confidence and a human review queue.",
        lifespan=lifespan,
    )

    @app.exception_handler(SightlineError)
    async def _sightline_error(request: Request, exc: SightlineError) -> JSONResponse:
        metrics.rejected.labels(str(exc.status_code)).inc()
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    from sightline.serve.batching import BatcherClosedError

    @app.exception_handler(BatcherClosedError)
    async def _closing(request: Request, exc: BatcherClosedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    for router in (health.router, model.router, predict.router, review.router, monitor.router):
        app.include_router(router)
    from sightline.serve.deps import KeyGate

    app.add_middleware(KeyGate)  # key, role, rate limit from the headers, before the body (inside the size cap)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics)
    return app
