"""GET /v1/shadow: how the challenger of shadow mode (`serve --shadow`) compares with the served model."""
from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from sightline.serve.deps import ReviewKeyDep
from sightline.serve.schemas import ErrorResponse

router = APIRouter(tags=["shadow"])


class ShadowStatus(BaseModel):
    enabled: bool = Field(description="False when the service runs without --shadow (SIGHTLINE_SHADOW).")
    message: str | None = Field(None, description="Why shadow mode is off, and how to turn it on.")
    challenger: dict[str, Any] | None = Field(
        None, description="name, version (as stored with each row: bundle version + content hash), bundle_hash, "
        "registry_version, source."
    )
    sample: float | None = Field(None, description="Share of predict requests the challenger scores.")
    queue: dict[str, int] = Field(
        default_factory=dict, description="pending / capacity (sampled requests), pending_bytes / capacity_bytes."
    )
    since_start: dict[str, int] = Field(
        default_factory=dict, description="Requests since this process started: sampled (drawn), then each one "
        "scored, dropped (queue full), failed, or skipped (not answered with 200); predictions: rows stored."
    )
    stored: dict[str, Any] | None = Field(
        None, description="All stored rows of this challenger: n, agreement_rate (same label as the champion), "
        "decisions_agree_rate, first, last, labelled {n, champion_accuracy, challenger_accuracy} on shadowed "
        "predictions that a reviewer labelled."
    )
    earlier_challengers: list[str] = Field(default_factory=list, description="Other challenger versions with rows.")


@router.get("/v1/shadow", response_model=ShadowStatus,
            responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}})
async def shadow_status(request: Request, key: ReviewKeyDep) -> ShadowStatus:
    """The challenger scoring a sample of traffic in the background: its queue, what happened to the sampled
    requests since start, and on its stored rows the agreement with the champion and both models' accuracy where
    reviewers labelled the shadowed items. Its answers are never returned to clients."""
    shadow = getattr(request.app.state, "shadow", None)
    if shadow is None:
        return ShadowStatus(enabled=False, message="no challenger is shadowed; start the service with --shadow "
                            "CHALLENGER (SIGHTLINE_SHADOW): a RUN or bundle folder, or with --registry an alias or "
                            "version.")
    return ShadowStatus(**await anyio.to_thread.run_sync(shadow.status))
