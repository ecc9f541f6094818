"""GET /v1/monitor: the latest drift windows and every model's alerts, for an API key; POST .../alerts/{name}/ack: a
person acknowledges a raised alert of the model serving now."""
from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from pydantic import BaseModel, Field

from sightline.serve.deps import ReviewKeyDep, StateDep
from sightline.serve.schemas import ErrorResponse, MonitorStatus, shown_label

router = APIRouter(tags=["monitor"])


@router.get("/v1/monitor", response_model=MonitorStatus,
            responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
async def monitor_status(state: StateDep, key: ReviewKeyDep) -> MonitorStatus:
    """The newest window of each kind (the last N predictions, blocks of N, hours, days) with its drift tests,
    unknown rate, mean confidence and label-free accuracy, and the state of every model's alerts, this model's
    first (`this_model`; `profile` / `model`: whose windows it counts; `open_alerts`: this model's raised now;
    `acknowledged`: who saw it, when, their note). Without a reference profile `enabled` is false and `message`
    says how to add one."""
    if state.monitor is None:
        return MonitorStatus(enabled=False, message=state.monitor_message)
    return MonitorStatus(**await anyio.to_thread.run_sync(state.monitor.status))


class AlertAck(BaseModel):
    note: str = Field("", description="Optional: what was seen or done (at most 500 characters).")


@router.post("/v1/monitor/alerts/{name}/ack",
             responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
                        404: {"model": ErrorResponse, "description": "The model serving has no alert of that name."},
                        409: {"model": ErrorResponse, "description": "Not raised, or acknowledged already."}})
async def acknowledge(name: str, state: StateDep, key: ReviewKeyDep, body: AlertAck | None = None) -> dict[str, Any]:
    """Acknowledge raised alert `name` of the model serving now (its reference profile's; another model's alert
    is acknowledged on the dashboard): the key's name is recorded as who (a field in the body cannot say
    otherwise), with the time and the optional note. The acknowledgement is persisted and shown until the alert
    clears. Answers the alert as /v1/monitor lists it."""
    from sightline.serve.monitoring import UnknownAlertError, acknowledge_alert

    monitor = state.monitor
    if monitor is None:  # no profile: this model counts no windows, so it has no alert
        raise UnknownAlertError(f"no alert named {shown_label(name)} of this model: {state.monitor_message}")
    profile = monitor.observer.fingerprint
    note = body.note if body is not None else ""
    return await anyio.to_thread.run_sync(
        lambda: acknowledge_alert(state.store, name, profile=profile, by=key.name, note=note))
