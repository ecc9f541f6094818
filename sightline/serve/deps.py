"""Typed dependencies: the shared state and the caller's API key and role (401 / 403 / 429 at the edge).

FastAPI reads a request's body (a multipart upload, a JSON label) before it solves the route's dependencies, so
`KeyGate`, a pure ASGI middleware, checks key, role and rate limit from the headers first: a request without the
right key is answered before one byte of its body is received. The route dependencies (`require_role`) read the
gate's verdict from the request scope, or check themselves where the gate has no rule for the path.

Roles per path (`ROUTE_ROLES`, longest prefix first): /v1/predict needs `predict`; /v1/review..., /v1/monitor and
/v1/shadow need `review`; /v1/keys and /v1/registry (none over HTTP yet) need `admin`.
"""
from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from sightline.serve.state import ServiceState, TooManyFailedKeys
from sightline.storage.store import ROLES, ApiKeyInfo, hash_key

__all__ = ["get_state", "StateDep", "require_key", "require_role", "ApiKeyDep", "PredictKeyDep", "ReviewKeyDep",
           "AdminKeyDep", "KeyGate", "ROUTE_ROLES", "DATABASE_DOWN", "database_unavailable"]

ANONYMOUS = ApiKeyInfo(id=0, name="anonymous", roles=frozenset(ROLES))  # SIGHTLINE_REQUIRE_API_KEY=false
ROUTE_ROLES: tuple[tuple[str, str], ...] = (
    ("/v1/predict", "predict"),
    ("/v1/review", "review"),
    ("/v1/monitor", "review"),
    ("/v1/shadow", "review"),
    ("/v1/keys", "admin"),
    ("/v1/registry", "admin"),
)
_SCOPE_KEY = "sightline_key"  # request.state attribute holding (role checked, ApiKeyInfo)


# What the database raises when it is locked past SQLite's busy timeout (another process writing), down or
# restarting (PostgreSQL), or when every pooled connection stayed busy past the pool's timeout: the service's state,
# not the request's fault, and it passes.
DATABASE_DOWN: tuple[type[Exception], ...] = (OperationalError, PoolTimeoutError)


def database_unavailable(exc: Exception, where: str) -> HTTPException:
    """The 503 (Retry-After: 5) for a DATABASE_DOWN error, saying in one line which of the three it is; the
    driver's own words (which name the database's host, port, file or user) go to the log only, once, without the
    traceback. Each request answered a plain-text 500 and logged a traceback before."""
    import logging

    orig = getattr(exc, "orig", None)
    cause = str(orig if orig is not None else exc).strip().splitlines()
    why = cause[0][:200] if cause else type(exc).__name__
    logging.getLogger("sightline.serve").error("%s: the database is unavailable: %s", where, why)
    if isinstance(exc, PoolTimeoutError):
        state = "every database connection is busy"
    elif "locked" in why.lower() or "busy" in why.lower():
        state = "the database is locked by another writer"
    else:
        state = "the database cannot be reached"
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{state}; the request was not completed, retry it "
                         "later.", headers={"Retry-After": "5"})


def get_state(request: Request) -> ServiceState:
    return request.app.state.sightline


StateDep = Annotated[ServiceState, Depends(get_state)]


def _presented_key(headers: Any) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def role_for_path(path: str) -> str | None:
    for prefix, role in ROUTE_ROLES:
        if path == prefix or path.startswith(prefix + "/"):
            return role
    return None


async def authorize(state: ServiceState, headers: Any, role: str, client: str | None = None) -> ApiKeyInfo:
    """The caller's key (X-API-Key or Authorization: Bearer) when it has `role`: 401 when missing/unknown/
    revoked, 403 without the role, 429 over the per-key rate limit, and 429 for a key not verified yet when the
    caller's address (`client`) presented too many unknown keys lately (ServiceState.verify_key). A recently
    verified key is answered from memory; otherwise the database is read in a worker thread so the event loop
    never blocks."""
    if not state.settings.require_api_key:
        info = ANONYMOUS
    else:
        key = _presented_key(headers)
        if key is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "no API key; send it in the X-API-Key header or as Authorization: Bearer <key>.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        digest = hash_key(key)
        info = state.keys.get(digest)
        if info is None:
            try:
                info = await state.verify_key(key, client)
            except TooManyFailedKeys as exc:
                raise HTTPException(
                    status.HTTP_429_TOO_MANY_REQUESTS,
                    f"too many unknown or revoked API keys from this address (at most "
                    f"{state.settings.failed_keys_per_minute} a minute); retry later with a valid key.",
                    headers={"Retry-After": str(max(1, math.ceil(exc.retry_s)))},
                ) from None
            except DATABASE_DOWN as exc:  # the gate runs outside the app's error handlers: answer 503 from here
                raise database_unavailable(exc, f"API key check for {role!r}") from None
            if info is None:
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED,
                    "unknown or revoked API key; create one with `sightline keys create NAME`.",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            state.keys.put(digest, info)
    if role not in info.roles:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"the API key {info.name!r} lacks the {role!r} role (it has {', '.join(sorted(info.roles))}); "
            f"an admin can create one with `sightline keys create NAME --role {role}`.",
        )
    retry = state.limiter.check(info.id)
    if retry is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            state.limiter.refusal(),
            headers={"Retry-After": str(max(1, math.ceil(retry)))},
        )
    return info


def require_role(role: str) -> Any:
    """A dependency: the caller's ApiKeyInfo when the key has `role` (the gate's verdict when it ran)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    async def dependency(request: Request, state: StateDep) -> ApiKeyInfo:
        checked = getattr(request.state, _SCOPE_KEY, None)
        if checked is not None and checked[0] == role:
            return checked[1]
        return await authorize(state, request.headers, role, request.client.host if request.client else None)

    dependency.__name__ = f"require_{role}"
    return dependency


require_key = require_role("predict")
ApiKeyDep = Annotated[ApiKeyInfo, Depends(require_key)]  # kept for routes written before roles: predict
PredictKeyDep = ApiKeyDep
ReviewKeyDep = Annotated[ApiKeyInfo, Depends(require_role("review"))]
AdminKeyDep = Annotated[ApiKeyInfo, Depends(require_role("admin"))]


class KeyGate:
    """Pure ASGI middleware: key, role and rate limit from the headers before the body is read (see above)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        role = role_for_path(scope.get("path", "")) if scope["type"] == "http" else None
        state = getattr(scope["app"].state, "sightline", None) if role is not None and "app" in scope else None
        if state is None:  # not a guarded path (or the lifespan has not run): the route decides
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        try:
            client = scope.get("client")
            info = await authorize(state, Headers(scope=scope), role, client[0] if client else None)
        except HTTPException as exc:
            body = json.dumps({"detail": exc.detail}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]  # any body the client still sends is never read
            headers += [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
            await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        scope.setdefault("state", {})[_SCOPE_KEY] = (role, info)
        await self.app(scope, receive, send)
