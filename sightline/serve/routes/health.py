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
    """Ready to answer: the model is loaded and the database is reachable. 503 otherwise. Names the model
    serving now."""
    served = state.served
    db_ok = await anyio.to_thread.run_sync(state.store.ping)
    checks = {"model": served.engine is not None, "database": db_ok}
    ready = all(checks.values())
    body = Health(status="ready" if ready else "not ready", checks=checks, model=ModelRef(**served.model_ref()))
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
