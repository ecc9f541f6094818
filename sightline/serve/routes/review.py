"""The review queue: low-confidence and unknown predictions waiting for a person, their kept images, and their
labels as ground truth. Every route needs a key with the `review` role; the reviewer recorded with a label is the
key's name (a `reviewer` field in the body is ignored), and a label is only replaced with `"override": true`."""
from __future__ import annotations

from typing import Literal

import anyio
from fastapi import APIRouter, HTTPException, Query, Response

from sightline.serve.deps import ReviewKeyDep, StateDep
from sightline.serve.schemas import (PREDICTION_ID_MAX, ErrorResponse, PredictionId, ReviewItem, ReviewLabel,
                                     known_label, shown_label)
from sightline.storage.store import UNKNOWN_LABEL

router = APIRouter(tags=["review"])

_AUTH = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse, "description": "The key lacks the review role."}}


@router.get("/v1/review", response_model=list[ReviewItem], responses={
    **_AUTH, 200: {"headers": {"X-Total-Count": {"description": "How many items wait in all (the list is one page of "
                                                 "them: `limit` from `offset`).", "schema": {"type": "integer"}}}}})
async def review_queue(
    state: StateDep,
    key: ReviewKeyDep,
    response: Response,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=PREDICTION_ID_MAX),  # a larger one overflowed in the database driver (500)
    which: Literal["queue", "random"] = Query(
        "queue", alias="slice", description="queue: low-confidence and unknown predictions; random: the random "
        "slice, drawn from all predictions whatever their decision (their labels measure production accuracy "
        "without bias)."),
) -> list[ReviewItem]:
    """Predictions with decision "review" or "unknown" and no reviewer label yet, oldest first (`slice=random`:
    instead the unlabelled members of the random slice whose image is kept, drawn from all predictions, accepted,
    review and unknown alike; a queued member is in both lists). The header X-Total-Count says how many wait in
    all."""
    sample = which == "random"

    def work() -> tuple[list[dict], int]:
        rows = state.store.review_queue(limit=limit, offset=offset, sample=sample)
        # a label given between the two reads must not make the total smaller than what this page shows; a page
        # past the end shows nothing, and the total is the count
        count = state.store.review_count(sample=sample)
        return rows, max(offset + len(rows), count) if rows else count

    rows, total = await anyio.to_thread.run_sync(work)
    response.headers["X-Total-Count"] = str(total)
    return [ReviewItem(**r) for r in rows]


@router.post(
    "/v1/review/{prediction_id}",
    response_model=ReviewItem,
    responses={**_AUTH, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def record_label(prediction_id: PredictionId, body: ReviewLabel, state: StateDep, key: ReviewKeyDep) -> ReviewItem:
    """Store a reviewer's label for a prediction; it becomes ground truth for monitoring and retraining. An
    already labelled prediction answers 409 unless `override` is true; every change is kept in the label history."""
    allowed = [*state.bundle.classes, UNKNOWN_LABEL]
    label = known_label(body.label, allowed)
    if label is None:
        raise HTTPException(422, f"label {shown_label(body.label)} is not one of the model's classes or "
                                 f"{UNKNOWN_LABEL!r}: {allowed}.")
    row = await anyio.to_thread.run_sync(
        lambda: state.store.record_label(prediction_id, label, reviewer=key.name, override=body.override)
    )
    if row is None:
        raise HTTPException(404, f"no prediction with id {prediction_id}.")
    return ReviewItem(**row)


@router.get(
    "/v1/review/{prediction_id}/image",
    response_class=Response,
    responses={**_AUTH, 200: {"content": {"image/*": {}}}, 404: {"model": ErrorResponse}},
)
async def review_image(prediction_id: PredictionId, state: StateDep, key: ReviewKeyDep) -> Response:
    """The prediction's image, exactly as it was uploaded (kept for review/unknown decisions and for the random
    slice of all predictions), with its content type; never sniffed by the browser."""
    if state.images is None:
        raise HTTPException(404, "the image store is off (SIGHTLINE_KEEP_IMAGES=false).")
    found = await anyio.to_thread.run_sync(state.images.read, state.store, prediction_id)
    if found is None:
        raise HTTPException(404, f"no kept image for prediction {prediction_id} (not kept, or evicted).")
    data, content_type = found
    return Response(data, media_type=content_type, headers={
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=3600",
        "Content-Security-Policy": "default-src 'none'; sandbox"})
