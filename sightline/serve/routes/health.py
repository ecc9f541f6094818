"""Liveness, readiness and Prometheus metrics."""
from __future__ import annotations

import anyio
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sightline.serve.deps import StateDep
from sightline.serve.schemas import Health, ModelRef

router = APIRouter(tags=["health"])


# Load balancers and uptime checkers often probe with HEAD, which was a 405 (read as "down"): each health route
# also answers HEAD, as its GET does without the body (kept out of the schema: one operation per path and method).
@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (no dependency checked)."""
    return Health(status="ok")


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(state: StateDep) -> Response:
    """Ready to answer: the model is loaded, the database is reachable and takes writes (every answered
    prediction is stored: a replica whose database is write-locked by another process answered 200 here and then
    503 to every predict). 503 otherwise. Names the model serving now."""
    served = state.served
    store = state.store

    def database() -> tuple[bool, bool]:  # one worker-thread hop; no row is written (Store.writable)
        reachable = store.ping()
        return reachable, reachable and store.writable()

    db_ok, writable = await anyio.to_thread.run_sync(database)
    checks = {"model": served.engine is not None, "database": db_ok, "database_writable": writable}
    ready = all(checks.values())
    body = Health(status="ready" if ready else "not ready", checks=checks, model=ModelRef(**served.model_ref()))
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
