"""The review queue: low-confidence and unknown predictions waiting for a person, and their labels as ground truth."""
from __future__ import annotations

import anyio
from fastapi import APIRouter, HTTPException, Query

from sightline.serve.deps import ApiKeyDep, StateDep
from sightline.serve.schemas import ErrorResponse, ReviewItem, ReviewLabel

router = APIRouter(tags=["review"])


@router.get("/v1/review", response_model=list[ReviewItem], responses={401: {"model": ErrorResponse}})
async def review_queue(
    state: StateDep,
    key: ApiKeyDep,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> list[ReviewItem]:
    """Predictions with decision "review" or "unknown" and no reviewer label yet, oldest first."""
    rows = await anyio.to_thread.run_sync(lambda: state.store.review_queue(limit=limit, offset=offset))
    return [ReviewItem(**r) for r in rows]


@router.post(
    "/v1/review/{prediction_id}",
    response_model=ReviewItem,
    responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def record_label(prediction_id: int, body: ReviewLabel, state: StateDep, key: ApiKeyDep) -> ReviewItem:
    """Store a reviewer's label for a prediction; it becomes ground truth for monitoring and retraining."""
    if body.label not in state.bundle.classes:
        raise HTTPException(
            422,
            f"label {body.label!r} is not one of the model's classes {state.bundle.classes}.",
        )
    row = await anyio.to_thread.run_sync(
        lambda: state.store.record_label(prediction_id, body.label, reviewer=body.reviewer or key.name)
    )
    if row is None:
        raise HTTPException(404, f"no prediction with id {prediction_id}.")
    return ReviewItem(**row)
