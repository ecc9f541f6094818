"""Shadow mode (`sightline serve ... --shadow CHALLENGER`): a challenger model scores a sample of live traffic in the
background, after the champion's answer has been sent; its answers are stored for comparison
(sightline.storage.shadow) and never returned to a client.

How a request is shadowed. `ShadowTap`, a pure ASGI middleware around the routes, draws each `POST /v1/predict`
with probability `shadow_sample` before its body is read; for a drawn request it keeps references to the body chunks
as the route receives them (no copy) and the answer's JSON as it is sent. Once the answer is out (the route has
returned) and its status is 200, the request goes onto a bounded queue (`shadow_queue` requests, `shadow_queue_bytes`
bytes); when the queue is full the request is dropped and counted, so a challenger that falls behind never holds
up serving or grows memory. One background task takes the queue in order and, in a worker thread, parses the upload
(the `file` fields, in the order the route answered them), runs the challenger's engine on the images (its own ONNX
session, `shadow_threads` threads, decoding in that thread), and writes one row per prediction: the challenger's
label, confidence and decision beside the champion's label and decision from the answer. Undrawn requests pay one
random draw.

What is compared. Label agreement (same class) over every shadowed prediction, and, where reviewers labelled
shadowed items, both models' accuracy on them (GET /v1/shadow, `review` role). The challenger applies its own
temperature and review threshold (SIGHTLINE_REVIEW_CONFIDENCE overrides both models alike) but no open-set score,
so its decision is "accept" or "review". It must predict the same classes as the served model.

The challenger is resolved once, at start: a RUN or bundle folder, or with `--registry` a registry version or alias
(`challenger`, `v3`, a hash prefix); restart the service to shadow another one. Requests still queued at shutdown are
dropped (counted); the one being scored finishes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from sightline.errors import UserInputError

if TYPE_CHECKING:
    from sightline.bundle import Bundle
    from sightline.inference import Engine
    from sightline.loop.registry import Registry
    from sightline.serve.metrics import ServiceMetrics
    from sightline.serve.settings import Settings
    from sightline.storage.shadow import ShadowLog
    from sightline.storage.store import Store

__all__ = ["Challenger", "resolve_challenger", "check_classes", "Shadow", "ShadowJob", "ShadowTap", "open_shadow",
           "file_parts"]

log = logging.getLogger("sightline.serve")

PREDICT_PATH = "/v1/predict"
_REGISTRY_REF = re.compile(r"(champion|challenger|[vV]?\d+|[0-9a-fA-F]{6,64})")


@dataclass(frozen=True)
class Challenger:
    """The model a shadow run scores with, and how its rows name it."""

    bundle: Bundle
    version: str  # stored as challenger_version: bundle version + content hash (+ registry version)
    bundle_hash: str
    source: str  # the folder it came from, or "registry v3"
    registry_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.bundle.name, "version": self.version, "bundle_version": self.bundle.version,
                "bundle_hash": self.bundle_hash, "registry_version": self.registry_version, "source": self.source}


def resolve_challenger(settings: Settings, *, registry: Registry | None = None) -> Challenger:
    """The challenger `settings.shadow` names: with a registry (`settings.registry`; `registry` to reuse an open
    one) an alias, version or hash prefix is looked up there, anything else is a RUN or bundle folder. Its ONNX
    file for the serving backend must exist. One-line UserInputError / BundleError on bad input."""
    from sightline.bundle import load_bundle
    from sightline.loop.content import bundle_hash

    ref = (settings.shadow or "").strip()
    if not ref:
        raise UserInputError("--shadow is empty; pass the challenger's RUN or bundle folder (or, with --registry, a "
                             "registry version or alias).")
    registry_ref = None
    if settings.registry is not None and _REGISTRY_REF.fullmatch(ref):
        if registry is None:
            from sightline.loop.registry import Registry

            with Registry(settings.resolved_database_url(), root=settings.registry) as opened:
                version = opened.resolve(ref)
        else:
            version = registry.resolve(ref)
        bundle = load_bundle(version.path)
        digest, registry_ref, source = version.bundle_hash, version.ref, f"registry {version.ref}"
    else:
        path = Path(ref).expanduser()
        if not path.exists():
            also = " or a registry version or alias (challenger, v3)" if settings.registry is not None else ""
            raise UserInputError(f"--shadow '{ref}' does not exist; pass the challenger's RUN or bundle folder{also}.")
        bundle = load_bundle(path)
        assert bundle.path is not None
        digest, source = bundle_hash(bundle.path), str(bundle.path)
    onnx = bundle.int8_path if settings.int8 else bundle.onnx_path
    if not onnx.is_file():
        raise UserInputError(f"--shadow {ref}: {onnx} is missing; run `sightline export {bundle.path}"
                             f"{' --int8 --data DATA' if settings.int8 else ''}` first.")
    middle = f"{registry_ref}." if registry_ref else ""
    version_text = f"{bundle.version}+{middle}{digest[:12]}"[:100]
    return Challenger(bundle=bundle, version=version_text, bundle_hash=digest, source=source,
                      registry_version=registry_ref)


def check_classes(challenger: Challenger, served: Bundle) -> None:
    """UserInputError unless the challenger predicts the served model's classes (in any order)."""
    if set(challenger.bundle.classes) != set(served.classes):
        raise UserInputError(f"--shadow {challenger.source} predicts {sorted(challenger.bundle.classes)} but the "
                             f"served model predicts {sorted(served.classes)}; a shadow comparison needs the same "
                             "classes.")


def file_parts(body: bytes, content_type: str) -> list[bytes]:
    """The `file` fields of a multipart/form-data body, in order, as bytes (what POST /v1/predict read). ValueError
    on a body that is not multipart or has no boundary."""
    try:
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ModuleNotFoundError:  # python-multipart before 0.0.13 named its module `multipart`
        from multipart.multipart import MultipartParser, parse_options_header  # type: ignore[no-redef]

    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise ValueError(f"not a multipart/form-data body with a boundary ({content_type[:80]!r})")
    parts: list[bytes] = []
    headers: dict[bytes, bytes] = {}
    data = bytearray()
    name, value = bytearray(), bytearray()

    def on_part_begin() -> None:
        headers.clear()
        del data[:]

    def on_part_data(chunk: bytes, start: int, end: int) -> None:
        data.extend(chunk[start:end])

    def on_header_field(chunk: bytes, start: int, end: int) -> None:
        name.extend(chunk[start:end])

    def on_header_value(chunk: bytes, start: int, end: int) -> None:
        value.extend(chunk[start:end])

    def on_header_end() -> None:
        headers[bytes(name).lower()] = bytes(value)
        del name[:], value[:]

    def on_part_end() -> None:
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        if options.get(b"name") == b"file" and b"filename" in options:  # an UploadFile in the route
            parts.append(bytes(data))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
    })
    parser.write(body)
    parser.finalize()
    return parts


@dataclass(frozen=True)
class ShadowJob:
    """One sampled request: its body chunks as received, its Content-Type and the JSON answer that was sent."""

    chunks: tuple[bytes, ...]
    content_type: str
    answer: bytes

    @property
    def nbytes(self) -> int:
        return sum(len(c) for c in self.chunks) + len(self.answer)


class Shadow:
    """The challenger, its bounded queue and the background task that scores it (see the module docstring)."""

    def __init__(self, challenger: Challenger, engine: Engine, *, log_store: ShadowLog, metrics: ServiceMetrics,
                 sample: float, max_pending: int, max_pending_bytes: int, stored: tuple[int, int] = (0, 0),
                 rng: random.Random | None = None) -> None:
        self.challenger = challenger
        self.engine = engine
        self.log_store = log_store
        self.metrics = metrics
        self.sample = sample
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[ShadowJob | None] = asyncio.Queue()  # None: the end
        self._pending_bytes = 0
        self._task: asyncio.Task | None = None
        self._closed = False
        self._lock = threading.Lock()  # the counters move in the worker thread and are read on the event loop
        # sampled: requests drawn; each ends as scored, dropped (queue full, closing), failed, or skipped (not
        # answered with 200); predictions: rows stored
        self.counts = {"sampled": 0, "scored": 0, "dropped": 0, "failed": 0, "skipped": 0, "predictions": 0}
        self._n, self._agree = stored  # (rows, agreeing rows) already stored for this challenger: the gauge goes on
        metrics.shadow_agreement.set(self._agree / self._n if self._n else float("nan"))
        metrics.shadow_pending.set_function(self._queue.qsize)

    # --- on the event loop ----------------------------------------------------------------------------------
    def sampled(self) -> bool:
        """Draw one request: True (and counted) with probability `sample`; never once closed."""
        if self._closed or self.sample <= 0:
            return False
        drawn = self.sample >= 1 or self._rng.random() < self.sample
        if drawn:
            self._add("sampled", 1)
        return drawn

    def skip(self) -> None:
        """A drawn request that was not answered with 200: nothing to compare."""
        self._add("skipped", 1)

    def offer(self, job: ShadowJob) -> bool:
        """Queue a drawn request whose answer has been sent; False (counted as dropped) when the queue is full."""
        size = job.nbytes
        full = self._queue.qsize() >= self.max_pending or self._pending_bytes + size > self.max_pending_bytes
        if self._closed or full:
            self._count("dropped")
            return False
        self._pending_bytes += size
        self._queue.put_nowait(job)
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sightline-shadow")

    async def close(self, *, timeout_s: float = 30.0) -> None:
        """Stop taking requests, drop (and count) what is queued, let the request being scored finish (up to
        `timeout_s`), close the engine."""
        self._closed = True
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None:
                self._pending_bytes -= job.nbytes
                self._count("dropped")
        if self._task is not None:
            self._queue.put_nowait(None)  # after the request being scored, the task ends
            try:
                await asyncio.wait_for(self._task, timeout=timeout_s)
            except asyncio.TimeoutError:
                log.warning("shadow: the challenger did not finish its request within %.0f s; closing it", timeout_s)
            self._task = None
        self.engine.close()

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            if job is None:
                return
            self._pending_bytes -= job.nbytes
            try:
                await anyio.to_thread.run_sync(self.score, job)
            except Exception as exc:  # noqa: BLE001 - a failed shadow must never stop the task or touch serving
                self._count("failed")
                log.warning("shadow scoring by %s failed (%s: %s)", self.challenger.version, type(exc).__name__, exc)

    # --- in the worker thread -------------------------------------------------------------------------------
    def score(self, job: ShadowJob) -> int:
        """Score one sampled request with the challenger and store its rows; returns how many were stored. Raises
        ValueError when the upload and the answer do not line up (the request is then counted as failed)."""
        answer = json.loads(job.answer)
        predictions = answer["predictions"]
        blobs = file_parts(b"".join(job.chunks), job.content_type)
        if len(blobs) != len(predictions) or any(p.get("id") is None for p in predictions):
            raise ValueError(f"{len(blobs)} uploaded files for {len(predictions)} answered predictions")
        model = answer["model"]
        champion = str(model["version"])
        if model.get("registry_version"):
            champion = f"{champion}+{model['registry_version']}.{(model.get('bundle_hash') or '')[:12]}"
        t0 = time.perf_counter()
        rows = self.engine.predict_files(blobs, names=[f"file{i}" for i in range(len(blobs))],
                                         batch_size=max(1, len(blobs)))
        latency_ms = (time.perf_counter() - t0) * 1000
        records = [
            {"prediction_id": int(p["id"]), "challenger_name": self.challenger.bundle.name[:200],
             "challenger_version": self.challenger.version, "label": r.label, "confidence": float(r.confidence),
             "decision": r.decision, "champion_version": champion[:100], "champion_label": p["label"],
             "champion_decision": p["decision"], "latency_ms": latency_ms}
            for p, r in zip(predictions, rows) if r.error is None
        ]
        self.log_store.add(records)
        agree = sum(r["label"] == r["champion_label"] for r in records)
        with self._lock:
            self._n += len(records)
            self._agree += agree
            rate = self._agree / self._n if self._n else float("nan")
        self.metrics.shadow_agreement.set(rate)
        self.metrics.shadow_predictions.inc(len(records))
        self._count("scored")
        self._add("predictions", len(records))
        if len(records) < len(rows):  # the champion decoded these; the challenger's limits are the same
            log.warning("shadow: %d of %d images could not be scored by the challenger", len(rows) - len(records),
                        len(rows))
        return len(records)

    # --- reading ----------------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What GET /v1/shadow answers (reads the database: call from a worker thread)."""
        with self._lock:
            counts = dict(self.counts)
        return {
            "enabled": True,
            "challenger": self.challenger.to_dict(),
            "sample": self.sample,
            "queue": {"pending": self.pending, "capacity": self.max_pending, "pending_bytes": self._pending_bytes,
                      "capacity_bytes": self.max_pending_bytes},
            "since_start": counts,
            "stored": self.log_store.summary(self.challenger.version),
            "earlier_challengers": [v for v in self.log_store.versions() if v != self.challenger.version],
        }

    def _count(self, outcome: str) -> None:
        self._add(outcome, 1)
        self.metrics.shadow_requests.labels(outcome).inc()

    def _add(self, name: str, n: int) -> None:
        with self._lock:
            self.counts[name] += n


async def open_shadow(settings: Settings, *, store: Store, metrics: ServiceMetrics, served: Bundle,
                      registry: Registry | None = None) -> Shadow:
    """Resolve `settings.shadow`, check its classes against the served bundle, open its engine (in a worker thread)
    and start the background task."""
    from sightline.inference import open_engine
    from sightline.storage.shadow import ShadowLog

    def load() -> tuple[Challenger, Engine, ShadowLog, tuple[int, int]]:
        challenger = resolve_challenger(settings, registry=registry)
        check_classes(challenger, served)
        bundle = challenger.bundle
        if settings.review_confidence is not None:  # the operator's review rule applies to both models alike
            bundle.thresholds = {**bundle.thresholds, "review_confidence": settings.review_confidence}
        engine = open_engine(bundle, backend="onnx-int8" if settings.int8 else "onnx", threads=settings.shadow_threads,
                             spinning=False, max_pixels=settings.max_pixels, top_k=settings.top_k)
        engine.workers = 1  # decode in the scoring thread: the challenger never takes more than its share of cores
        try:
            log_store = ShadowLog(store)
            stored = log_store.summary(challenger.version)
            return challenger, engine, log_store, (stored["n"], round((stored["agreement_rate"] or 0.0) * stored["n"]))
        except BaseException:
            engine.close()
            raise

    challenger, engine, log_store, stored = await anyio.to_thread.run_sync(load)
    shadow = Shadow(challenger, engine, log_store=log_store, metrics=metrics, sample=settings.shadow_sample,
                    max_pending=settings.shadow_queue, max_pending_bytes=settings.shadow_queue_bytes, stored=stored)
    await shadow.start()
    log.warning("shadow: %s (%s) scores %.0f%% of predict requests in the background", challenger.version,
                challenger.source, 100 * settings.shadow_sample)
    return shadow


class ShadowTap:
    """Pure ASGI middleware: hands a sample of answered POST /v1/predict requests to `app.state.shadow` once their
    answer is sent (see the module docstring). Without a shadow, or for any other path, it only passes through."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        shadow = None
        if scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path") == PREDICT_PATH:
            shadow = getattr(scope["app"].state, "shadow", None) if "app" in scope else None
        if shadow is None or not shadow.sampled():
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        content_type = Headers(scope=scope).get("content-type", "")
        chunks: list[bytes] = []
        answer: list[bytes] = []
        status = 0

        async def tap_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
            return message

        async def tap_send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 200:
                answer.append(message.get("body", b""))
            await send(message)

        answered = False
        try:
            await self.app(scope, tap_receive, tap_send)
            answered = status == 200
        finally:
            if answered:  # the answer is out: from here on nothing the challenger does can reach the client
                shadow.offer(ShadowJob(tuple(chunks), content_type, b"".join(answer)))
            else:
                shadow.skip()
