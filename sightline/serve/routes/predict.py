"""POST /v1/predict: decode and check every upload, infer through the micro-batcher, store, answer.

The store step is coalesced (`serve.batching.Coalescer`): the requests whose images came back from one forward pass
are decided in one worker-thread hop and written in one transaction.
"""
from __future__ import annotations

import hashlib
import logging
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
log = logging.getLogger("sightline.serve")

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
    """Decide every request that came back from inference together, store the files of the images they keep, then
    write all their prediction rows, signal rows and kept-image rows in ONE `add_predictions` transaction (one
    INSERT of each kind instead of one per request). One transaction, not one for predictions and another for the
    kept images (as before): a failure of the second (the database locked or gone between them) answered 503 for
    predictions already stored, and the client's retry stored them twice. Now a 503 stored nothing, and a 200
    stored everything; it also saves a commit and a write-lock turn per micro-batch. Retention runs after the
    commit; its failure is logged and does not fail requests whose answers are stored. (Keeping images, their
    rows then in a second transaction, took int8 serving from 141.5 to 126.2 req/s at 16 clients, benchmarks/
    serve_load.py on an idle machine.) SQLite, one core at load 3-5 (benchmarks/monitor_terms.py): 0.54-0.90 ms a
    request alone without signals, 0.95-1.09 with; 0.21-0.29 and 0.28-0.33 ms each when 4 requests share a
    transaction. Returns one (preds, scores, ids) per request, or the exception that request answers with."""
    made: list[tuple[_Stored, list[dict[str, Any]]] | BaseException] = []
    for job in jobs:
        try:
            stored = job()
            # the files of the images it keeps, before the transaction (no lock held while writing them); the rows
            # name their prediction by its index in this request's rows until the INSERT gives it an id
            kept = stored.images.choose([p.decision for p in stored.preds], stored.blobs) if stored.images else []
            made.append((stored, kept))
        except Exception as exc:  # noqa: BLE001 - that request answers 5xx and stores nothing; the others are stored
            made.append(exc)
    ok = [m for m in made if not isinstance(m, BaseException)]
    assert len({id(m.store) for m, _ in ok}) <= 1, "one coalesced step per store"
    rows, kept_rows, signals = [], [], None
    for m, kept in ok:
        kept_rows += [{**k, "row": k["row"] + len(rows)} for k in kept]
        rows += m.rows
    if any(m.signals is not None for m, _ in ok):  # a model swap can mix requests with and without monitoring
        signals = [s for m, _ in ok for s in (m.signals if m.signals is not None else [None] * len(m.rows))]
    ids = ok[0][0].store.add_predictions(rows, signals, kept=kept_rows) if rows else []
    results: list[Any] = []
    start = 0
    for m in made:
        if isinstance(m, BaseException):
            results.append(m)
            continue
        stored, _ = m
        mine, start = ids[start:start + len(stored.rows)], start + len(stored.rows)
        results.append((stored.preds, stored.scores, mine))
    keepers = {id(m.images): m.images for m, kept in ok if kept}
    for keeper in keepers.values():  # retention after the commit: the answers are stored whatever it does
        try:
            keeper.retain_if_due(ok[0][0].store)
        except Exception:  # noqa: BLE001 - the next due run tries again; logged, never a failed request
            log.exception("image retention failed; it runs again when next due")
    return results
