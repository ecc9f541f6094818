"""POST /v1/predict: decode and check every upload, infer through the micro-batcher, store, answer.

The store step is coalesced (`serve.batching.Coalescer`): the requests whose images came back from one forward pass
are decided in one worker-thread hop and written in one transaction.
"""
from __future__ import annotations

import hashlib
import math
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, File, HTTPException, Request, UploadFile

from sightline.errors import CorruptImageError, SightlineError
from sightline.monitor.observe import load_observed
from sightline.serve.batching import Coalescer
from sightline.serve.deps import ApiKeyDep, StateDep
from sightline.serve.schemas import ErrorResponse, ModelRef, PredictionOut, PredictResponse, shown_label

if TYPE_CHECKING:
    from sightline.storage.images import ImageKeeper
    from sightline.storage.store import Store

router = APIRouter(tags=["predict"])

_ERRORS = {
    401: {"model": ErrorResponse, "description": "No API key, or an unknown or revoked one."},
    403: {"model": ErrorResponse, "description": "The API key lacks the predict role."},
    413: {"model": ErrorResponse, "description": "Body, image count or image pixels above the caps."},
    415: {"model": ErrorResponse, "description": "A file is not a JPEG, PNG, BMP, TIFF or WebP image."},
    422: {"model": ErrorResponse, "description": "A file is a truncated or corrupt image, no file was sent, or an "
                                                "upload came in another form field than `file`."},
    429: {"model": ErrorResponse, "description": "Rate limit of the API key reached; see Retry-After."},
}


@router.post("/v1/predict", response_model=PredictResponse, responses=_ERRORS)
async def predict(
    request: Request,
    state: StateDep,
    key: ApiKeyDep,
    file: list[UploadFile] = File(..., description="One or more images (repeat the `file` field)."),
) -> PredictResponse:
    """Classify one or more images. Each answer applies the bundle's calibration, class thresholds and review
    rule, and is stored (input hash, model version, label, confidence, latency, decision) before the reply. With a
    reference profile in the bundle the open-set score can make the decision "unknown", and the monitor's signals
    (projected features, calibrated softmax, open-set score, image statistics) are stored beside it."""
    t0 = time.perf_counter()
    s = state.settings
    # An upload under another field name ("files", "image") beside the `file` ones was never read: three images
    # sent, two answered with a 200, the third dropped without a word. (Text fields are still ignored.) The form
    # is the one FastAPI parsed for `file` (Starlette keeps it), not read again.
    stray = next(((k, v) for k, v in (await request.form()).multi_items()
                  if k != "file" and not isinstance(v, str)), None)
    if stray is not None:
        field, upload = stray
        raise HTTPException(422, f"the upload {shown_label(upload.filename or '')} is in form field "
                                 f"{shown_label(field)}, which is not read; send every image as a `file` field.")
    if len(file) > s.max_images_per_request:
        raise HTTPException(
            413,
            f"{len(file)} images in one request; the limit is {s.max_images_per_request}. Split the request.",
        )
    # PostgreSQL refuses a NUL in a text column: a filename with one failed the INSERT of every request stored in
    # the same transaction (a 500 for them all, nothing kept). U+FFFD marks where it was, here and in the answer.
    names = [(f.filename or f"file{i}").replace("\0", "\ufffd") for i, f in enumerate(file)]
    blobs = [await f.read() for f in file]
    served = state.served  # this request finishes on the model it started with, even across a registry swap
    # the answer's X-Request-ID (serve.app.RequestId), stored with each prediction of this request
    request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
    with served.use():
        return await _predict(state, served, key, names, blobs, t0, request_id)


async def _predict(state, served, key, names: list[str], blobs: list[bytes], t0: float,
                   request_id: str) -> PredictResponse:
    observer, engine = served.observer, served.engine

    def decode_all():  # CPU work, off the event loop; raises ImageError subclasses (415 / 413 / 422)
        arrays, stats = [], []
        for blob, name in zip(blobs, names):
            try:
                if observer is None:
                    arrays.append(engine.prepare(blob, name=name))
                else:  # the same single decode, plus the image statistics of what was decoded
                    crop, stat = load_observed(engine, blob, name=name)
                    arrays.append(engine.normalize(crop))
                    stats.append(stat)
            except SightlineError:
                raise
            except Exception as exc:  # noqa: BLE001 - a decoder bug on hostile bytes is still the input's fault
                raise CorruptImageError(f"{name}: cannot be decoded ({type(exc).__name__})") from exc
        return arrays, stats

    arrays, stats = await anyio.to_thread.run_sync(decode_all, limiter=state.decode_limiter)
    # logits, features and CAMs of one forward pass (with a profile: and each row's open-set score)
    output = await served.batcher.submit_many(arrays)
    latency_ms = (time.perf_counter() - t0) * 1000

    def decide() -> _Stored:  # decisions and open-set scores: the rows of the store step
        preds = engine.decide(output if observer is None else output.output, names)
        scores, signals = [None] * len(preds), None
        if observer is not None:
            raw, unknown, signals = observer.observe(output, stats)
            for p, flag in zip(preds, unknown):
                if flag:
                    p.decision = "unknown"  # unknown wins over review
            scores = [float(v) if math.isfinite(v) else None for v in raw]
        rows = [
            {
                "request_id": request_id,
                "filename": p.filename[:500],
                "input_sha256": hashlib.sha256(b).hexdigest(),
                "model_name": str(served.bundle.name)[:200],  # the column's width, as the filename's
                "model_version": served.stored_version,
                "label": p.label,
                "confidence": p.confidence,
                "top_k": p.top_k,
                "decision": p.decision,
                "latency_ms": latency_ms,
                "api_key_id": key.id or None,
            }
            for p, b in zip(preds, blobs)
        ]
        return _Stored(preds, scores, rows, signals, state.store, state.images, blobs)

    preds, scores, ids = await _store_step(state.store).submit(decide)
    for p in preds:
        state.metrics.predictions.labels(p.label, p.decision).inc()
    if served.monitor is not None:
        served.monitor.notify(len(preds))
    return PredictResponse(
        model=ModelRef(**served.model_ref()),
        predictions=[
            PredictionOut(
                filename=p.filename, label=p.label, confidence=p.confidence, top_k=p.top_k, decision=p.decision, id=i,
                ood_score=score,
            )
            for p, i, score in zip(preds, ids, scores)
        ],
        inference_ms=round((time.perf_counter() - t0) * 1000, 3),
    )


# --- the store step: the requests of a micro-batch in one transaction ----------------------------------------------
@dataclass
class _Stored:
    """One request's answers and what the database keeps of them (before ids exist)."""

    preds: list[Any]  # sightline.inference.Prediction, decision final
    scores: list[float | None]  # open-set score per image, None without monitoring
    rows: list[dict[str, Any]]  # PredictionRecord columns
    signals: list[dict[str, Any]] | None  # PredictionSignal columns per row; None without monitoring
    store: Store  # the service's database (one per app: the key of the coalesced step)
    images: ImageKeeper | None  # where review / unknown images and the sampled slice are kept
    blobs: list[bytes]


_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Store -> its Coalescer (which holds no Store)


def _store_step(store: Store) -> Coalescer:
    """The store's coalesced store step (made on first use, in the event loop that serves)."""
    step = _STEPS.get(store)
    if step is None:
        step = _STEPS[store] = Coalescer(_store_all)
    return step


def _store_all(jobs: list[Callable[[], _Stored]]) -> list[Any]:
    """Decide every request that came back from inference together, write all their prediction rows and signal
    rows in ONE `add_predictions` transaction (one INSERT of each kind instead of one per request), then keep their
    images (files per request; the kept-image rows of all of them in one more transaction, not one per request:
    with that, keeping images took int8 serving from 141.5 to 126.2 req/s at 16 clients, benchmarks/serve_load.py
    on an idle machine). SQLite, one core at load 3-5 (benchmarks/monitor_terms.py): 0.54-0.90 ms a request alone
    without signals, 0.95-1.09 with; 0.21-0.29 and 0.28-0.33 ms each when 4 requests share a transaction.
    Returns one (preds, scores, ids) per request, or the exception that request answers with."""
    made: list[_Stored | BaseException] = []
    for job in jobs:
        try:
            made.append(job())
        except Exception as exc:  # noqa: BLE001 - that request answers 5xx; the others are stored
            made.append(exc)
    ok = [m for m in made if isinstance(m, _Stored)]
    assert len({id(m.store) for m in ok}) <= 1, "one coalesced step per store"
    rows = [r for m in ok for r in m.rows]
    signals = None
    if any(m.signals is not None for m in ok):  # a model swap can mix requests with and without monitoring
        signals = [s for m in ok for s in (m.signals if m.signals is not None else [None] * len(m.rows))]
    ids = ok[0].store.add_predictions(rows, signals) if rows else []
    results: list[Any] = []
    kept: dict[int, tuple[Any, list[int], list[dict[str, Any]]]] = {}  # keeper -> (keeper, result slots, rows)
    start = 0
    for m in made:
        if not isinstance(m, _Stored):
            results.append(m)
            continue
        mine, start = ids[start:start + len(m.rows)], start + len(m.rows)
        try:
            if m.images is not None:  # review/unknown images and the random slice: files now, rows below
                keeper = kept.setdefault(id(m.images), (m.images, [], []))
                keeper[2].extend(m.images.select(mine, [p.decision for p in m.preds], m.blobs))
                keeper[1].append(len(results))
            results.append((m.preds, m.scores, mine))
        except Exception as exc:  # noqa: BLE001 - as the request's own write would have failed it
            results.append(exc)
    for keeper, slots, kept_rows in kept.values():  # every request's kept-image rows in ONE transaction
        try:
            keeper.record(ok[0].store, kept_rows)
        except Exception as exc:  # noqa: BLE001 - as their own writes would have failed them
            for i in slots:
                results[i] = exc
    return results
