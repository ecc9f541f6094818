"""Typed dependencies: the shared state and the caller's API key (401 / 429 are raised here, at the edge)."""
from __future__ import annotations

import math
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Request, status

from sightline.serve.state import ServiceState
from sightline.serve.store import ApiKeyInfo, hash_key

__all__ = ["get_state", "StateDep", "require_key", "ApiKeyDep"]

ANONYMOUS = ApiKeyInfo(id=0, name="anonymous")


def get_state(request: Request) -> ServiceState:
    return request.app.state.sightline


StateDep = Annotated[ServiceState, Depends(get_state)]


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def require_key(request: Request, state: StateDep) -> ApiKeyInfo:
    """The caller's key (X-API-Key or Authorization: Bearer); 401 when missing/unknown/revoked, 429 over the
    per-key rate limit. A recently verified key is answered from memory; otherwise the database is read in a
    worker thread so the event loop never blocks."""
    if not state.settings.require_api_key:
        info = ANONYMOUS
    else:
        key = _presented_key(request)
        if key is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "no API key; send it in the X-API-Key header or as Authorization: Bearer <key>.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        digest = hash_key(key)
        info = state.keys.get(digest)
        if info is None:
            info = await anyio.to_thread.run_sync(state.store.verify_key, key)
            if info is None:
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED,
                    "unknown or revoked API key; create one with `sightline keys create NAME`.",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            state.keys.put(digest, info)
    retry = state.limiter.check(info.id)
    if retry is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit of {state.settings.rate_limit_per_minute} requests per minute reached; retry later.",
            headers={"Retry-After": str(max(1, math.ceil(retry)))},
        )
    return info


ApiKeyDep = Annotated[ApiKeyInfo, Depends(require_key)]
