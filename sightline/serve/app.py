"""The FastAPI application: `create_app(settings)`.

The lifespan loads the bundle and its ONNX model, opens the database, starts the micro-batcher and, when the
bundle has a reference profile, the background monitor (`serve.monitoring`), and with `shadow` the challenger that
scores a sample of answered requests in the background (`serve.shadow`); on shutdown (uvicorn handles SIGTERM
by finishing in-flight requests first) the monitor finishes its run, the batcher finishes its queue and the
database is closed. Bad input never becomes a 500: image errors carry their status (415 / 413 / 422),
oversized bodies are cut off by `BodyLimitMiddleware` before they are read.

Example:
    >>> app = create_app(Settings(bundle="runs/demo"))
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)
"""
from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sightline import __version__
from sightline.errors import SightlineError, validation_message
from sightline.serve.settings import Settings

__all__ = ["create_app", "BodyLimitMiddleware", "MultipartEnd", "RequestId"]

log = logging.getLogger("sightline.serve")


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when a streamed body passes the cap. An HTTPException, so FastAPI's body parsing
    passes it through unchanged (it turns other parsing failures into 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body above the limit of {limit} bytes; send fewer or smaller images.")


class BodyTooSlow(StarletteHTTPException):
    """Raised from `receive` when no chunk of a body arrived for the idle timeout (the connection is closed)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"no part of the request body arrived for {timeout_s:g} s; send the request again.",
                         headers={"Connection": "close"})  # the rest of a stalled body is never read


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 for bodies above `max_bytes` (by Content-Length, or counted while streaming), 408
    when the body stalls (no chunk for `idle_timeout_s` while the app waits for one: a slow upload held its
    connection and its worker for as long as the client liked; uvicorn has no body timeout), and request
    counts/latency for Prometheus."""

    def __init__(self, app: Any, *, max_bytes: int, metrics: Any = None, idle_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.idle_timeout_s = idle_timeout_s

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
            received, body_done = 0, False

            async def limited_receive() -> dict:
                nonlocal received, body_done
                if body_done or self.idle_timeout_s is None:  # after the body: a wait for the disconnect, unbounded
                    message = await receive()
                else:
                    with anyio.move_on_after(self.idle_timeout_s) as waited:
                        message = await receive()
                    if waited.cancelled_caught:
                        raise BodyTooSlow(self.idle_timeout_s)
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    body_done = not message.get("more_body", False)
                    if received > self.max_bytes:
                        raise BodyTooLarge(self.max_bytes)
                return message

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except (BodyTooLarge, BodyTooSlow) as exc:
                if status_holder["started"]:
                    raise
                await _send_json(send_wrapper, exc.status_code, exc.detail)
        finally:
            if self.metrics is not None:
                route = scope.get("route")
                path = getattr(route, "path", None) or "unmatched"  # never a raw path: labels must stay few
                self.metrics.requests.labels(scope["method"], path, str(status_holder["status"])).inc()
                self.metrics.latency.labels(path).observe(time.perf_counter() - t0)


class MultipartEnd:
    """Pure ASGI middleware: 400 for a multipart/form-data body that ends before its close delimiter
    (CRLF "--boundary--"). python-multipart stops at the end of the bytes without saying whether the body was
    complete, and Starlette keeps the parts finished so far: a body cut off in its second image (a client that
    gave up, a proxy's timeout, a hand-built request without the closing line) answered 200 with one prediction,
    the second image silently dropped. The delimiter is looked for as the body streams (the last few bytes of
    each chunk kept), and the refusal is raised from `receive` at the body's last chunk, before the parser
    finishes, so the route never runs. A body without a boundary is left to Starlette ("Missing boundary")."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        close = _close_delimiter(scope) if scope["type"] == "http" else None
        if close is None:
            await self.app(scope, receive, send)
            return
        seen = opened = False
        tail = b"\r\n"  # at the very start the delimiter has no CRLF before it (a body of no parts)

        async def checked_receive() -> dict:
            nonlocal seen, opened, tail
            message = await receive()
            if message["type"] != "http.request" or seen:
                return message
            body, keep = message.get("body", b""), len(close) - 1
            seam = tail + body[:keep]  # a delimiter across two chunks; the chunk itself is searched in place (no copy)
            seen = close in seam or close in body
            opened = opened or close[2:-2] in seam or close[2:-2] in body
            tail = body[-keep:] if len(body) >= keep else (tail + body)[-keep:]
            # a body that never names its boundary is not cut off: the parser says it cannot be read (another
            # boundary) or the route names the field it lacks (an empty body)
            if opened and not seen and not message.get("more_body", False):
                raise StarletteHTTPException(
                    400, f"{scope.get('method', 'POST')} {scope.get('path', '')}: the multipart body ends before its "
                         f"closing boundary line ({close.strip().decode('latin-1')[:80]!r}): it was cut off or "
                         "built without that line, and nothing of it was used; send the whole request again.")
            return message

        await self.app(scope, checked_receive, send)


def _close_delimiter(scope: dict) -> bytes | None:
    """CRLF + "--" + boundary + "--" of a multipart/form-data request, as Starlette's parser reads its
    Content-Type; None for any other request, or one without a boundary."""
    from python_multipart.multipart import parse_options_header

    value = next((v for k, v in scope.get("headers", []) if k == b"content-type"), None)
    if value is None:
        return None
    media, params = parse_options_header(value)
    boundary = params.get(b"boundary")
    if media != b"multipart/form-data" or not boundary:
        return None
    return b"\r\n--" + boundary + b"--"


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")  # what a caller's X-Request-ID may be (the stored column: 32)


class RequestId:
    """Pure ASGI middleware: `X-Request-ID` on every answer (DESIGN.md, HTTP API), 413 and 401 included. A caller's
    own X-Request-ID is kept when it is 1-32 letters, digits, '.', '_' or '-'; anything else (too long, spaces, a
    second one) is replaced by a new id, so what is echoed and stored is never the caller's arbitrary text. The id
    is in `request.state.request_id`; /v1/predict stores it with every prediction of the request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = [v for k, v in scope["headers"] if k == b"x-request-id"]
        text = given[0].decode("latin-1") if len(given) == 1 else ""
        request_id = text if _REQUEST_ID.fullmatch(text) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


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
    """Build the service for `settings.bundle`. Nothing is loaded until the app starts (lifespan). A
    SIGHTLINE_SESSION_SECRET too short to be safe is refused here (UserInputError), not at the first /ui page."""
    from sightline.serve.metrics import ServiceMetrics
    from sightline.serve.web.session import check_secret_env

    check_secret_env()
    from sightline.serve.routes import health, model, monitor, predict, review
    from sightline.serve.routes import shadow as shadow_route

    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from sightline.bundle import load_bundle
        import anyio

        from sightline.errors import UserInputError
        from sightline.inference import usable_cores
        from sightline.storage.images import ImageKeeper, open_image_store
        from sightline.serve.swap import RegistryWatcher, onnx_file, open_served, registry_version, retire
        from sightline.serve.ratelimit import RateLimiter
        from sightline.serve.state import KeyCache, ServiceState
        from sightline.storage.store import Store

        from threadpoolctl import threadpool_limits

        # numpy's BLAS does the monitor's small products (k-NN scores, projections, window tests); its own thread
        # pool, spinning beside ONNX Runtime's threads, cost 60x the work itself on a busy 2-core machine (22 vs
        # 0.33 ms CPU for 16 x 1,280 features against a 243-row bank). One thread; ONNX Runtime is not affected.
        blas = threadpool_limits(limits=1, user_api="blas")
        store = Store(settings.resolved_database_url())
        registry = version = None
        if settings.registry is not None:  # serve what the alias points to; the watcher follows its moves
            from sightline.loop.registry import Registry

            registry = Registry(settings.resolved_database_url(), root=settings.registry)
            version = registry_version(registry, settings.alias)
            bundle = load_bundle(version.path)
            if not onnx_file(settings, bundle).is_file():
                raise UserInputError(f"{settings.alias} is {version.ref}, whose {onnx_file(settings, bundle)} is "
                                     f"missing; export the bundle and add it to the registry again.")
        else:
            bundle = load_bundle(settings.bundle)
        shadow = None
        if settings.shadow is not None:  # a challenger scores a sample of traffic after each answer (serve/shadow.py)
            from sightline.serve.shadow import open_shadow

            shadow = await open_shadow(settings, store=store, metrics=metrics, served=bundle, registry=registry)
        app.state.shadow = shadow
        served = await open_served(settings, bundle, store=store, metrics=metrics, version=version)
        state = ServiceState(
            settings=settings,
            served=served,
            store=store,
            metrics=metrics,
            limiter=RateLimiter(settings.rate_limit_per_minute),
            keys=KeyCache(settings.key_cache_s),
            failed_keys=RateLimiter(settings.failed_keys_per_minute),
            decode_limiter=anyio.CapacityLimiter(settings.decode_threads or usable_cores()),
            images=ImageKeeper(open_image_store(settings.resolved_image_store()),
                               keep_accepted=settings.keep_accepted, max_bytes=settings.image_store_max_bytes,
                               max_age_days=settings.image_store_max_age_days) if settings.keep_images else None,
        )
        metrics.pending.set_function(lambda: state.served.batcher.pending)
        app.state.sightline = state
        if served.monitor is not None:
            await served.monitor.start()  # first run now: delivers what a previous process left in the outbox
        if registry is not None:
            state.watcher = RegistryWatcher(state, registry)
            await state.watcher.start()
        try:
            yield
        finally:
            if shadow is not None:  # what is still queued is dropped (counted); the request being scored finishes
                await shadow.close()
            if state.watcher is not None:
                await state.watcher.close()  # no more swaps; replaced models finish retiring
            # in-flight requests have finished; anything still queued is answered, then the monitor's last run
            await retire(state.served)
            store.close()
            if registry is not None:
                registry.close()
            blas.restore_original_limits()

    app = FastAPI(
        title="Sightline",
        version=__version__,
        summary="Image classification with calibrated confidence and a human review queue.",
        lifespan=lifespan,
        docs_url=None,  # served below from the package's own copy of Swagger UI
        redoc_url=None,  # ReDoc, too, comes from a CDN; /docs and /openapi.json remain
    )

    @app.get("/docs", include_in_schema=False)
    async def _docs() -> HTMLResponse:
        """The API docs (Swagger UI) with its script and style from the web app's static files: FastAPI's own page
        loads them from a CDN, and on a machine without internet (DESIGN.md: offline first) it stayed blank."""
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="Sightline API",
                                   swagger_js_url="/ui/static/swagger-ui-bundle.js",
                                   swagger_css_url="/ui/static/swagger-ui.css", swagger_favicon_url="data:,")

    @app.exception_handler(SightlineError)
    async def _sightline_error(request: Request, exc: SightlineError) -> JSONResponse:
        metrics.rejected.labels(str(exc.status_code)).inc()
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default answer is a list of pydantic records; ours is one line that names the field
        # ("body.file is missing; add it", "query.limit='0' must be >= 1"), as every other error here.
        where = f"{request.method} {request.url.path}"
        bad_json = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            at = bad_json.get("loc", ("body", "?"))[-1]
            return JSONResponse({"detail": f"{where}: the body is not valid JSON (error at character {at}); send a "
                                           "JSON object with Content-Type: application/json."}, status_code=422)
        not_file = next((e for e in exc.errors() if "Expected UploadFile" in str(e.get("msg", ""))), None)
        if not_file is not None:  # a part without a filename arrives as text: never echo its bytes back
            field = str(not_file.get("loc", ("body", "file"))[1])
            return JSONResponse({"detail": f"{where}: form field '{field}' must be a file upload (a multipart part "
                                           "with a filename), not text."}, status_code=422)
        sent = request.headers.get("content-type", "")
        not_json = next((e for e in exc.errors() if tuple(e.get("loc", ())) == ("body",)
                         and e.get("type") in ("model_attributes_type", "dict_type")), None)
        if not_json is not None and "json" not in sent.lower():
            # a JSON object sent as text/plain, as a form, or with no Content-Type is not parsed: it arrives as bytes,
            # and "body must be a mapping of key: value" did not say that the header was what to change
            return JSONResponse({"detail": f"{where}: the body must be a JSON object sent with Content-Type: "
                                           f"application/json (it came with {_shown_type(sent)})."}, status_code=422)
        return JSONResponse({"detail": validation_message(_Errors(exc), where=where)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Any:
        # Starlette answers every multipart parse failure with "Invalid multipart data."; say what is wrong with it.
        # python-multipart refuses a part header line over 4 KB (a filename of about 4,000 characters) or more than
        # 8 headers in a part, and anything that is not multipart/form-data with the boundary its header names.
        if exc.status_code == 400 and exc.detail == "Invalid multipart data.":
            return JSONResponse({"detail": f"{request.method} {request.url.path}: the multipart body cannot be "
                                           "parsed; send multipart/form-data with the boundary its Content-Type "
                                           "names, each part with at most 8 headers of at most 4 KB each (a "
                                           "filename under about 4,000 characters)."}, status_code=400)
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer when reading a body raised anything but a JSON syntax error: a JSON body that is not
            # UTF-8 (UnicodeDecodeError) or nested beyond Python's recursion limit (RecursionError). Same status
            # and words as the syntax error above: to the client both are "not valid JSON".
            cause = exc.__cause__
            why = ("it is not UTF-8 text" if isinstance(cause, UnicodeDecodeError) else
                   "it is nested too deeply" if isinstance(cause, RecursionError) else
                   # Python refuses to read a whole number of over 4,300 digits (int_max_str_digits)
                   "a number in it has over 4,300 digits" if isinstance(cause, ValueError)
                   and "digits" in str(cause) else f"it cannot be read ({type(cause).__name__})")
            return JSONResponse({"detail": f"{request.method} {request.url.path}: the body is not valid JSON ({why});"
                                           " send a JSON object in UTF-8 with Content-Type: application/json."},
                                status_code=422)
        if exc.status_code == 400 and isinstance(exc.detail, str):  # Starlette's other multipart refusals
            where, detail = f"{request.method} {request.url.path}", exc.detail
            if detail.startswith("Too many files."):  # its cap is 1,000 parts; ours is far lower: say ours
                return JSONResponse({"detail": f"{where}: over 1,000 files in one request; the limit is "
                                               f"{settings.max_images_per_request}. Split the request."},
                                    status_code=413)
            if detail.startswith(("Missing boundary", "Too many fields.", "Field exceeded", "Part exceeded")):
                fix = ("send multipart/form-data with a boundary in its Content-Type and only the file field(s), each "
                       "image as a file upload." if request.url.path == "/v1/predict" else  # the web app's forms:
                       "send the form's own fields as its page does (a few, each under 1 MB).")
                return JSONResponse({"detail": f"{where}: {detail[:1].lower()}{detail[1:-1]}; {fix}"},
                                    status_code=400)
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 405 and exc.detail == "Method Not Allowed":  # the router's own: say which to use
            allow = (exc.headers or {}).get("Allow", "")
            return JSONResponse({"detail": f"{where}: this route does not take {request.method}; use {allow}."},
                                status_code=405, headers=exc.headers)
        if exc.status_code == 404 and exc.detail == "Not Found":  # no route matched (the routes' own 404s say more)
            return JSONResponse({"detail": f"{where}: no such route; /openapi.json lists the API, /ui is the web "
                                           "app."}, status_code=404)
        return await http_exception_handler(request, exc)

    from sightline.serve.batching import BatcherClosedError

    @app.exception_handler(BatcherClosedError)
    async def _closing(request: Request, exc: BatcherClosedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    from sightline.serve.deps import DATABASE_DOWN, database_unavailable

    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # a locked, unreachable or exhausted database (serve.deps.DATABASE_DOWN): 503 with Retry-After, one log line
        refusal = database_unavailable(exc, f"{request.method} {request.url.path}")
        return JSONResponse({"detail": refusal.detail}, status_code=refusal.status_code, headers=refusal.headers)

    for error in DATABASE_DOWN:
        app.add_exception_handler(error, _database_unavailable)

    for router in (health.router, model.router, predict.router, review.router, monitor.router, shadow_route.router):
        app.include_router(router)
    from sightline.serve.web.routes import UiHeaders
    from sightline.serve.web.routes import router as web_router

    app.include_router(web_router)  # the web app at /ui (session cookies; the API gate has no rule for it)
    from sightline.serve.deps import KeyGate
    from sightline.serve.shadow import ShadowTap

    app.add_middleware(ShadowTap)  # innermost: hands a sample of answered predict requests to the challenger
    app.add_middleware(UiHeaders)  # strict Content-Security-Policy and friends on /ui answers only
    app.add_middleware(MultipartEnd)  # a multipart body cut off before its close delimiter: 400, never half used
    app.add_middleware(KeyGate)  # key, role, rate limit from the headers, before the body (inside the size cap)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, metrics=metrics,
                       idle_timeout_s=settings.body_idle_timeout_s)
    app.add_middleware(RequestId)  # outermost: every answer carries the id, the body limit's 413 included
    return app


def _shown_type(content_type: str) -> str:
    """A request's Content-Type as an error quotes it: its media type alone, at most 60 characters."""
    media = content_type.split(";", 1)[0].strip()
    return f"Content-Type: {media[:60]!r}" if media else "no Content-Type"


class _Errors:
    """A RequestValidationError as `validation_message` reads a pydantic ValidationError (`errors(include_url=)`)."""

    def __init__(self, exc: RequestValidationError) -> None:
        self._errors = exc.errors()

    def errors(self, include_url: bool = False) -> list[dict[str, Any]]:
        return list(self._errors)
