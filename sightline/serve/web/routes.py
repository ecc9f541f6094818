"""The web app at /ui: sign-in with a `review` key, the review queue with keyboard labelling, kept images and
class activation maps under the session, and the monitoring dashboard (web/dashboard.py reads what it shows),
where a person acknowledges a raised alert (recorded as the session's key name, persisted with the alert).

Sessions are signed cookies (web/session.py), HttpOnly, SameSite=Strict, Path=/ui; every POST carries the
session's CSRF token (a form field, or the X-CSRF-Token header from the page's script); the sign-in form, before
any session exists, uses a double-submit token cookie. A page without a valid session redirects to sign-in; the
JSON and image routes answer 401. `UiHeaders` puts a strict Content-Security-Policy on every /ui answer.

CAMs are recomputed when the page asks for one (`/ui/cam/{id}.png`, the focused item only) through the served
engine on the kept image: no schema change and no cost on the prediction path; one small forward pass per view.
"""
from __future__ import annotations

import io
import math
import secrets
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from sightline.errors import SightlineError
from sightline.serve.schemas import PREDICTION_ID_MAX, PredictionId, known_label, shown_label
from sightline.serve.state import ServiceState, TooManyFailedKeys
from sightline.storage.store import UNKNOWN_LABEL, LabelConflictError
from sightline.serve.web.session import COOKIE, CSRF_COOKIE, SessionSigner, load_secret, same_token

__all__ = ["CSP", "UiHeaders", "router"]

CSP = ("default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; frame-ancestors 'none'; "
       "form-action 'self'; base-uri 'none'; object-src 'none'")
HERE = Path(__file__).parent
# swagger-ui-*: Swagger UI 5.35.0 (swagger-ui-dist, Apache-2.0, swagger-ui.LICENSE.txt) for the API docs at /docs,
# vendored: FastAPI's default page loads it from a CDN, so /docs was blank on a machine without internet
STATIC = {"review.js": "text/javascript", "app.css": "text/css", "swagger-ui-bundle.js": "text/javascript",
          "swagger-ui.css": "text/css"}
REVIEW_PAGE = 50  # items on one review page; the page says how many more wait

router = APIRouter(prefix="/ui", include_in_schema=False)


class UiHeaders:
    """Pure ASGI middleware: security headers on every answer under /ui (the API keeps its own)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == "/ui" or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() not in (b"content-security-policy", b"x-frame-options")]
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapper)


@lru_cache(maxsize=1)
def templates() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True)


def _render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = templates().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


def _state(request: Request) -> ServiceState:
    return request.app.state.sightline


def _signer(request: Request) -> SessionSigner:
    signer = getattr(request.app.state, "sightline_web_signer", None)
    if signer is None:
        signer = SessionSigner(load_secret(_secret_folder(_state(request).settings)))
        request.app.state.sightline_web_signer = signer
    return signer


def _secret_folder(settings: Any) -> Path | None:
    """Where the session secret is kept: beside a SQLite database, else in the bundle folder, else beside a local
    registry's copies (as the kept images); None when there is no such folder (a server database and a registry
    at a URL). Serving a registry on PostgreSQL, every /ui page was a 500 here (the bundle folder was None)."""
    from sqlalchemy.engine import make_url

    from sightline.bundle import resolve_bundle_dir
    from sightline.storage.images import is_url

    url = make_url(settings.resolved_database_url())
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).expanduser().resolve().parent
    if settings.bundle is not None:
        return resolve_bundle_dir(settings.bundle)
    if settings.registry is not None and not is_url(str(settings.registry)):
        return Path(settings.registry).expanduser().resolve().parent
    return None


def _session(request: Request) -> dict[str, Any] | None:
    """The signed session's payload (not checked against revocation: see `_live_session`)."""
    return _signer(request).verify(request.cookies.get(COOKIE))


async def _live_session(request: Request) -> dict[str, Any] | None:
    """The session, when its row in the database (web_sessions, named by the cookie's `sid`) has not ended (signed
    out) or expired and its key is not revoked. A signed cookie alone was valid until its expiry, up to 8 h after
    signing out, so a copied cookie kept working; the row is shared by every replica of the database. The verdict
    is trusted for key_cache_s seconds per session in this process (as an API key's), so a page's many requests
    read the row once; signing out here forgets it at once, another replica notices within key_cache_s. A cookie
    without `sid` (signed before sessions had rows) is not a session: sign in again."""
    session = _session(request)
    if session is None or not isinstance(session.get("sid"), str):
        return None
    state = _state(request)
    checked: dict[str, float] = request.app.state.__dict__.setdefault("sightline_web_live", {})
    sid, now = session["sid"], time.monotonic()
    if checked.get(sid, 0.0) > now:
        return session
    live = await anyio.to_thread.run_sync(
        lambda: state.store.web_session_live(sid, key_must_be_active=state.settings.require_api_key))
    if not live:
        checked.pop(sid, None)
        return None
    if len(checked) > 10_000:  # sessions seen long ago: their entries have lapsed
        for old in [k for k, until in checked.items() if until <= now]:
            del checked[old]
    checked[sid] = now + state.settings.key_cache_s
    return session


def _csrf_ok(session: dict[str, Any], token: str | None) -> bool:
    return bool(token) and same_token(token, session.get("csrf", ""))


def _to_signin() -> RedirectResponse:
    return RedirectResponse("/ui/signin", status_code=303)


# --- sign-in / sign-out --------------------------------------------------------------------------------------
@router.get("")
async def home(request: Request) -> RedirectResponse:
    return RedirectResponse("/ui/review" if await _live_session(request) else "/ui/signin", status_code=303)


def _signin_page(error: str | None = None, status: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = _render("signin.html", status, csrf=token, error=error)
    response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path="/ui/signin", max_age=3600)
    return response


@router.get("/signin")
async def signin_form(request: Request) -> Response:
    if await _live_session(request):  # a signed-out or revoked cookie would loop between sign-in and review
        return RedirectResponse("/ui/review", status_code=303)
    return _signin_page()


@router.post("/signin")
async def signin(request: Request, key: str = Form(""), csrf: str = Form("")) -> Response:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not same_token(csrf, cookie):
        return _signin_page("The form expired; sign in again.", 400)
    state = _state(request)
    try:
        info = await state.verify_key(key.strip(), request.client.host if request.client else None) \
            if key.strip() else None
    except TooManyFailedKeys as exc:
        return _signin_page(f"Too many unknown keys from this address; try again in {math.ceil(exc.retry_s)} s.",
                            429)
    if info is None:
        return _signin_page("Unknown or revoked API key.", 401)
    if "review" not in info.roles:
        return _signin_page(f"The key {info.name!r} lacks the 'review' role; create one with "
                            f"`sightline keys create NAME --role review`.", 403)
    signer = _signer(request)
    sid = await anyio.to_thread.run_sync(state.store.start_web_session, info.id, signer.max_age_s)
    value = signer.sign({"key_id": info.id, "name": info.name, "sid": sid, "csrf": secrets.token_urlsafe(24)})
    response = RedirectResponse("/ui/review", status_code=303)
    response.set_cookie(COOKIE, value, httponly=True, samesite="strict", path="/ui", max_age=int(signer.max_age_s),
                        secure=request.url.scheme == "https")
    response.delete_cookie(CSRF_COOKIE, path="/ui/signin")
    return response


@router.post("/signout")
async def signout(request: Request, csrf: str = Form("")) -> Response:
    session = _session(request)
    if session is not None and not _csrf_ok(session, csrf):
        return JSONResponse({"detail": "bad CSRF token; reload the page."}, status_code=403)
    if session is not None and isinstance(session.get("sid"), str):  # ended in the database: a copy stops working
        await anyio.to_thread.run_sync(_state(request).store.end_web_session, session["sid"])
        request.app.state.__dict__.get("sightline_web_live", {}).pop(session["sid"], None)
    response = _to_signin()
    response.delete_cookie(COOKIE, path="/ui")
    return response


# --- the review queue ----------------------------------------------------------------------------------------
@router.get("/review")
async def review_page(request: Request, slice: str = "queue") -> Response:
    session = await _live_session(request)
    if session is None:
        return _to_signin()
    from sightline.serve.web.queue import ordered_queue

    state = _state(request)
    sample = slice == "random"

    def work() -> tuple[list[dict[str, Any]], int]:
        items = ordered_queue(state.store, limit=REVIEW_PAGE, sample=sample)
        # max: a label given between the two reads must not make "50 of 49"
        return items, max(len(items), state.store.review_count(sample=sample))

    items, total = await anyio.to_thread.run_sync(work)
    classes = list(state.bundle.classes)
    return _render("review.html", session=session, items=items, total=total, classes=classes, keyed=classes[:9],
                   unknown=UNKNOWN_LABEL, slice="random" if sample else "queue",
                   model=f"{state.bundle.name} {state.bundle.version}")


async def _api_session(request: Request) -> dict[str, Any] | JSONResponse:
    session = await _live_session(request)
    if session is None:
        return JSONResponse({"detail": "not signed in; sign in at /ui/signin."}, status_code=401)
    if request.method == "POST" and not _csrf_ok(session, request.headers.get("x-csrf-token")):
        return JSONResponse({"detail": "bad CSRF token; reload the page."}, status_code=403)
    return session


class LabelBody(BaseModel):
    id: int = Field(ge=1, le=PREDICTION_ID_MAX)
    label: str


class UndoBody(BaseModel):
    id: int = Field(ge=1, le=PREDICTION_ID_MAX)


@router.post("/label")
async def label(request: Request, body: LabelBody) -> JSONResponse:
    session = await _api_session(request)
    if isinstance(session, JSONResponse):
        return session
    state = _state(request)
    allowed = [*state.bundle.classes, UNKNOWN_LABEL]
    chosen = known_label(body.label, allowed)
    if chosen is None:
        return JSONResponse({"detail": f"label {shown_label(body.label)} is not one of {allowed}."}, status_code=422)
    try:
        row = await anyio.to_thread.run_sync(
            lambda: state.store.record_label(body.id, chosen, reviewer=session["name"]))
    except LabelConflictError:  # another reviewer labelled it first; the API's advice ("override") is not the page's
        current = await anyio.to_thread.run_sync(lambda: state.store.get_prediction(body.id)) or {}
        return JSONResponse({"detail": f"prediction {body.id} was labelled {current.get('reviewed_label')!r} by "
                                       f"{current.get('reviewer')} meanwhile; reload the queue to see it."},
                            status_code=409)
    except SightlineError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code)
    if row is None:
        return JSONResponse({"detail": f"no prediction with id {body.id}."}, status_code=404)
    return JSONResponse({"id": body.id, "label": row["reviewed_label"]})


@router.post("/undo")
async def undo(request: Request, body: UndoBody) -> JSONResponse:
    """Undo this reviewer's last change of an item: back to the label before it (an override) or to unlabelled;
    both are kept in the label history."""
    session = await _api_session(request)
    if isinstance(session, JSONResponse):
        return session
    store = _state(request).store

    def work() -> dict[str, Any] | JSONResponse:
        try:
            row = store.undo_label(body.id, reviewer=session["name"])
        except LabelConflictError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=409)
        if row is None:
            return JSONResponse({"detail": f"no prediction with id {body.id}."}, status_code=404)
        return {"id": body.id, "label": row["reviewed_label"]}

    result = await anyio.to_thread.run_sync(work)
    return result if isinstance(result, JSONResponse) else JSONResponse(result)


async def _kept(request: Request, prediction_id: int, *, charged: bool = False) -> tuple[bytes, str] | Response:
    """The kept image's (bytes, content type), or the response saying why not. `charged`: the request runs the model,
    so it takes a token from the signed-in key's rate limit (rate_limit_per_minute, the API's bucket)."""
    session = await _live_session(request)
    if session is None:
        return Response("not signed in", status_code=401, media_type="text/plain")
    state = _state(request)
    if charged and (retry := state.limiter.check(session["key_id"])) is not None:
        return Response(state.limiter.refusal(), status_code=429, media_type="text/plain",
                        headers={"Retry-After": str(max(1, math.ceil(retry)))})
    found = None
    if state.images is not None:
        found = await anyio.to_thread.run_sync(state.images.read, state.store, prediction_id)
    if found is None:
        return Response(f"no kept image for prediction {prediction_id}", status_code=404, media_type="text/plain")
    return found


@router.get("/image/{prediction_id}")
async def image(request: Request, prediction_id: PredictionId) -> Response:
    found = await _kept(request, prediction_id)
    if isinstance(found, Response):
        return found
    data, content_type = found
    return Response(data, media_type=content_type, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/cam/{prediction_id}.png")
async def cam(request: Request, prediction_id: PredictionId) -> Response:
    """The model's input crop with the top class's activation map blended over it, as PNG (one inference: counted
    in the reviewer key's rate limit)."""
    found = await _kept(request, prediction_id, charged=True)
    if isinstance(found, Response):
        return found
    engine = _state(request).engine

    def work() -> bytes | None:
        import numpy as np
        from PIL import Image

        from sightline.inference import scale_cams

        crop = engine.load(found[0])
        out = engine.run(engine.to_batch([crop]))
        if out.cams is None:
            return None
        heat = scale_cams(out.cams[:1], crop.shape[0])[0]
        color = np.stack([heat, 0.25 * heat, 1.0 - heat], axis=-1) * 255.0  # red = where the model looked
        blended = (0.55 * crop.astype(np.float32) + 0.45 * color).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(blended).save(buf, format="PNG")
        return buf.getvalue()

    try:
        png = await anyio.to_thread.run_sync(work)
    except SightlineError as exc:
        return Response(str(exc), status_code=exc.status_code, media_type="text/plain")
    if png is None:
        return Response("this model gives no class activation map", status_code=404, media_type="text/plain")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                    headers={"Cache-Control": "public, max-age=300"})


# --- the monitoring dashboard --------------------------------------------------------------------------------
def _shadow_status(shadow: Any) -> dict[str, Any]:
    """`shadow.status()` (what GET /v1/shadow answers) with `as_of`. Live on every dashboard load: the stored
    summary reads the challenger's running totals (one row, about 0.1 ms at 100,000 shadow rows), not the rows.
    Blocking: call from a worker thread."""
    return {**shadow.status(), "as_of": datetime.now(timezone.utc).isoformat(timespec="seconds")}


@router.get("/dashboard")
async def dashboard(request: Request, decision: str = "", label: str = "", band: str = "") -> Response:
    session = await _live_session(request)
    if session is None:
        return _to_signin()
    from sightline.serve.monitoring import alert_views
    from sightline.serve.web.dashboard import (class_mix_history, dashboard_data, model_history, p_value_history,
                                               window_view)

    state = _state(request)
    served = state.served  # one model for the whole page, even if the registry swaps meanwhile
    classes = list(served.bundle.classes)
    bands = {"": (0.0, 1.0), "low": (0.0, 0.5), "mid": (0.5, 0.8), "high": (0.8, 1.0)}
    low, high = bands.get(band, (0.0, 1.0))
    decision = decision if decision in ("accept", "review", "unknown") else ""
    label = label if label in classes else ""
    monitor = served.monitor
    status = await anyio.to_thread.run_sync(monitor.status) if monitor is not None else None
    stored = (status or {}).get("windows") or {}
    windows = [window_view(kind, w) for kind, w in sorted(stored.items())]
    reference = next((w["reference_class_mix"] for w in stored.values() if w.get("reference_class_mix")), None)
    shadow = getattr(request.app.state, "shadow", None)
    settings = state.settings
    own_profile = status["profile"]["fingerprint"] if status is not None else None  # "this model" in the alerts

    def work() -> dict[str, Any]:
        store = state.store
        return {
            "data": dashboard_data(store, classes=classes, decision=decision or None, label=label or None, low=low,
                                   high=high, window=settings.monitor_window),
            "mix": class_mix_history(store, classes, size=settings.monitor_window, reference=reference),
            "history": p_value_history(store, status["profile"]["fingerprint"]) if status is not None else [],
            # every model's, persisted: shown with monitoring off too, with the model whose windows each counts
            "alerts": alert_views(store.alert_rows(), own=own_profile),
            "registry": (model_history(state.watcher.registry, settings.alias, served.registry_version)
                         if state.watcher is not None else None),
            "shadow": _shadow_status(shadow) if shadow is not None else None,
        }

    found = await anyio.to_thread.run_sync(work)
    alpha = settings.monitor_alpha
    alpha_y = round(100 - 25 * min(4.0, -math.log10(alpha)), 2)
    serving = {**served.model_ref(), "stored_as": served.stored_version,
               "started": datetime.fromtimestamp(state.started, timezone.utc).isoformat(timespec="seconds"),
               "swaps": state.watcher.swaps if state.watcher is not None else 0}
    return _render("dashboard.html", session=session, monitor=status, windows=windows, own_profile=own_profile,
                   message=served.monitor_message, classes=classes,
                   filters={"decision": decision, "label": label, "band": band},
                   model=f"{served.bundle.name} {served.bundle.version}", serving=serving,
                   alpha=alpha, alpha_y=alpha_y, **found)


@router.post("/alerts/{name}/ack")
async def acknowledge_alert(request: Request, name: str, csrf: str = Form(""), note: str = Form(""),
                            profile: str = Form("")) -> Response:
    """The dashboard's acknowledge form, for the row it is on: alert `name` of the model whose profile fingerprint
    is `profile` ('': a row that recorded no model). Who is the session's key name (never a form field); back to
    the dashboard's alerts on success, one line with the status otherwise."""
    session = await _live_session(request)
    if session is None:
        return _to_signin()
    if not _csrf_ok(session, csrf):
        return Response("bad CSRF token; reload the page.", status_code=403, media_type="text/plain")
    from sightline.serve.monitoring import acknowledge_alert as record

    store = _state(request).store
    try:
        await anyio.to_thread.run_sync(lambda: record(store, name, profile=profile, by=session["name"],
                                                              note=note))
    except SightlineError as exc:
        return Response(str(exc), status_code=exc.status_code, media_type="text/plain")
    return RedirectResponse("/ui/dashboard#alerts", status_code=303)
