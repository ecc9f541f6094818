"""GET /v1/monitor: the latest drift windows and the alerts, for an API key."""
from __future__ import annotations

import anyio
from fastapi import APIRouter

from sightline.serve.deps import ReviewKeyDep, StateDep
from sightline.serve.schemas import ErrorResponse, MonitorStatus

router = APIRouter(tags=["monitor"])


@router.get("/v1/monitor", response_model=MonitorStatus,
            responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
async def monitor_status(state: StateDep, key: ReviewKeyDep) -> MonitorStatus:
    """The newest window of each kind (the last N predictions, blocks of N, hours, days) with its drift tests,
    unknown rate, mean confidence and label-free accuracy, and every alert's state (`open_alerts`: raised now).
    Without a reference profile `enabled` is false and `message` says how to add one."""
    if state.monitor is None:
        return MonitorStatus(enabled=False, message=state.monitor_message)
    return MonitorStatus(**await anyio.to_thread.run_sync(state.monitor.status))
