"""POST /v1/predict: decode and check every upload, infer through the micro-batcher, store, answer."""
from __future__ import annotations

import hashlib
import time
import uuid

import anyio
from fastapi import APIRouter, File, HTTPException, UploadFile

from sightline.errors import CorruptImageError, SightlineError
from sightline.serve.deps import ApiKeyDep, StateDep
from sightline.serve.schemas import ErrorResponse, ModelRef, PredictionOut, PredictResponse

router = APIRouter(tags=["predict"])

_ERRORS = {
    401: {"model": ErrorResponse, "description": "No API key, or an unknown or revoked one."},
    413: {"model": ErrorResponse, "description": "Body, image count or image pixels above the caps."},
    415: {"model": ErrorResponse, "description": "A file is not a JPEG, PNG, BMP, TIFF or WebP image."},
    422: {"model": ErrorResponse, "description": "A file is a truncated or corrupt image, or no file was sent."},
    429: {"model": ErrorResponse, "description": "Rate limit of the API key reached; see Retry-After."},
}


@router.post("/v1/predict", response_model=PredictResponse, responses=_ERRORS)
async def predict(
    state: StateDep,
    key: ApiKeyDep,
    file: list[UploadFile] = File(..., description="One or more images (repeat the `file` field)."),
) -> PredictResponse:
    """Classify one or more images. Each answer applies the bundle's calibration, class thresholds and review
    rule, and is stored (input hash, model version, label, confidence, latency, decision) before the reply."""
    t0 = time.perf_counter()
    s = state.settings
    if len(file) > s.max_images_per_request:
        raise HTTPException(
            413,
            f"{len(file)} images in one request; the limit is {s.max_images_per_request}. Split the request.",
        )
    names = [f.filename or f"file{i}" for i, f in enumerate(file)]
    blobs = [await f.read() for f in file]

    def decode_all():  # CPU work, off the event loop; raises ImageError subclasses (415 / 413 / 422)
        arrays = []
        for blob, name in zip(blobs, names):
            try:
                arrays.append(state.engine.prepare(blob, name=name))
            except SightlineError:
                raise
            except Exception as exc:  # noqa: BLE001 - a decoder bug on hostile bytes is still the input's fault
                raise CorruptImageError(f"{name}: cannot be decoded ({type(exc).__name__})") from exc
        return arrays

    arrays = await anyio.to_thread.run_sync(decode_all, limiter=state.decode_limiter)
    output = await state.batcher.submit_many(arrays)  # logits, features and CAMs of one forward pass
    preds = state.engine.decide(output, names)
    latency_ms = (time.perf_counter() - t0) * 1000
    request_id = uuid.uuid4().hex
    rows = [
        {
            "request_id": request_id,
            "filename": p.filename[:500],
            "input_sha256": hashlib.sha256(b).hexdigest(),
            "model_name": state.bundle.name,
            "model_version": state.bundle.version,
            "label": p.label,
            "confidence": p.confidence,
            "top_k": p.top_k,
            "decision": p.decision,
            "latency_ms": latency_ms,
            "api_key_id": key.id or None,
        }
        for p, b in zip(preds, blobs)
    ]
    ids = await anyio.to_thread.run_sync(state.store.add_predictions, rows)
    for p in preds:
        state.metrics.predictions.labels(p.label, p.decision).inc()
    return PredictResponse(
        model=ModelRef(name=state.bundle.name, version=state.bundle.version),
        predictions=[
            PredictionOut(
                filename=p.filename, label=p.label, confidence=p.confidence, top_k=p.top_k, decision=p.decision, id=i
            )
            for p, i in zip(preds, ids)
        ],
        inference_ms=round((time.perf_counter() - t0) * 1000, 3),
    )
