"""Monitoring in the service, through a real client against uvicorn on 127.0.0.1: the "unknown" decision and its
score on far-off images, a signals row for every answered prediction (SQLite and PostgreSQL), /v1/monitor behind
an API key, windows and alerts that survive a restart without repeating, and signed webhooks retried from the
outbox. The bundle is a tiny untrained model whose reference profile is built here from smooth "calm" images;
uniform noise stands for out-of-distribution input."""
from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import io
import json
import shutil
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from serve_tiny import cached, calm, fresh_database, make_bundle, noise, start_server, tls

from sightline.bundle import load_bundle

CLASSES = ["cat", "dog", "fox"]
SECRET = "whsec_" + base64.b64encode(b"sightline-test-webhook-key-32by").decode()
WINDOW = 30


def build_profiled_bundle(folder):
    """A tiny exported bundle plus a reference profile: 60 calm validation images, a k-NN bank of 60 more, the
    open-set score chosen against 30 noise images. Returns the profile (as the service loads it from `folder`).
    Built once per test run, copied after (serve_tiny.cached)."""
    from sightline.monitor.reference import load_reference

    cached(("profiled",), _build_profiled_bundle, folder)
    return load_reference(folder)


def _build_profiled_bundle(folder):
    from sightline.inference import open_engine
    from sightline.monitor.observe import load_observed
    from sightline.monitor.reference import build_reference

    # review_confidence 0.99: an untrained 3-class model is never that sure, so every in-distribution answer is
    # "review", and an "unknown" one shows that unknown wins over review
    make_bundle(folder.parent, seed=0, version="7", folder=folder.name)
    bundle = load_bundle(folder)
    with open_engine(bundle, backend="onnx", threads=1) as engine:
        def run(blobs):
            loaded = [load_observed(engine, b) for b in blobs]
            out = engine.run(engine.to_batch(np.stack([c for c, _ in loaded])))
            return out, [s for _, s in loaded]

        val, val_stats = run([calm(1000 + i) for i in range(60)])
        bank, _ = run([calm(2000 + i) for i in range(60)])
        outliers, _ = run([noise(5000 + i) for i in range(30)])
    profile = build_reference(val.logits, val.features, classes=CLASSES, temperature=bundle.temperature,
                              image_stats=val_stats, bank_features=bank.features,
                              bank_labels=bank.logits.argmax(axis=1))
    profile.fit_ood(val.logits, val.features, outliers.logits, outliers.features)
    profile.save(folder)
    return profile


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("monitor") / "bundle"
    profile = build_profiled_bundle(folder)
    return folder, profile


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh database: a SQLite file, or a schema of its own in SIGHTLINE_TEST_DATABASE_URL's database (dropped
    afterwards), so tests running at the same time on the same server never see each other's tables."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _settings(bundle, url, **kw):
    """The service's settings for these tests; those that read nothing of the kept images pass keep_images=False
    (every queued answer's image is otherwise written and fsynced into the bundle's images folder)."""
    from sightline.serve.settings import Settings

    base = dict(bundle=bundle, database_url=url, rate_limit_per_minute=0, key_cache_s=0, threads=1,
                batch_max_wait_ms=5, max_images_per_request=16, monitor_window=WINDOW, monitor_min_window=WINDOW,
                monitor_every=10**6, monitor_interval_minutes=600, monitor_calendar="", monitor_permutations=100)
    return Settings(**{**base, **kw})


@contextmanager
def serving(settings):
    """uvicorn with create_app(settings) on a free loopback port; yields (client, app, key)."""
    from sightline.serve.app import create_app

    app = create_app(settings)
    srv, thread, port = start_server(app)
    try:
        # through the service's own store: another Store would set up the schema once more (~70 ms on PostgreSQL)
        key = app.state.sightline.store.create_key("tester", ["predict", "review"])
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers={"X-API-Key": key},
                          verify=tls()) as client:
            yield client, app, key
    finally:
        srv.should_exit = True
        thread.join(timeout=60)
        assert not thread.is_alive(), "server did not stop"


def _predict(client, blobs, prefix="img"):
    answers = []
    for start in range(0, len(blobs), 16):
        chunk = blobs[start:start + 16]
        r = client.post("/v1/predict", files=[("file", (f"{prefix}{start + i}.jpg", b)) for i, b in enumerate(chunk)])
        assert r.status_code == 200, r.text
        answers += r.json()["predictions"]
    return answers


@functools.lru_cache(maxsize=1)
def _independent_outputs(bundle_dir, blobs: tuple[bytes, ...]):
    """Logits and features of `blobs` through the PyTorch backend (not the server's ONNX session); the same images
    on the same bundle for SQLite and PostgreSQL, so computed once."""
    from sightline.inference import open_engine

    with open_engine(load_bundle(bundle_dir), backend="torch") as engine:
        crops = np.stack([engine.load(b) for b in blobs])
        return engine.run(engine.to_batch(crops))


# --- the request path -------------------------------------------------------------------------------------------
def test_unknown_decision_score_and_a_signals_row_for_every_answer(profiled, database_url):
    from sightline.monitor.stats import image_stats
    from sightline.serve.monitoring import profile_fingerprint
    from sightline.storage.store import Store

    folder, profile = profiled
    assert profile.ood_choice is not None
    inside = [calm(i) for i in range(24)]
    outside = [noise(i) for i in range(12)]
    with serving(_settings(folder, database_url, keep_images=False)) as (client, app, key):
        answers = _predict(client, inside, "calm") + _predict(client, outside, "noise")
        assert client.post("/v1/predict", files=[("file", ("t.jpg", b"not an image"))]).status_code == 415
        queue = client.get("/v1/review", params={"limit": 500}).json()
        metrics = client.get("/metrics").text
    decisions = [a["decision"] for a in answers]
    # every noise image is unknown (over review); the calm ones stay "review" (the 99 % validation quantile
    # lets about 1 % of in-distribution images through as unknown)
    assert decisions[24:] == ["unknown"] * 12
    assert decisions[:24].count("unknown") <= 1 and set(decisions[:24]) <= {"review", "unknown"}
    # the score is the profile's own chosen score, recomputed independently (PyTorch backend, all four scores)
    out = _independent_outputs(folder, tuple(inside + outside))
    expected, flags = profile.unknown(out.logits, out.features)
    got = np.array([a["ood_score"] for a in answers])
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    assert [a["decision"] == "unknown" for a in answers] == flags.tolist()
    assert {a["id"] for a in answers if a["decision"] == "unknown"} <= {q["id"] for q in queue}
    assert 'decision="unknown"' in metrics

    store = Store(database_url)
    try:
        rows = store.signal_rows(profile_fingerprint(folder))
        assert store.count_predictions() == len(answers)  # the 415 stored nothing
        by_id = {r["prediction_id"]: r for r in rows}
        assert sorted(by_id) == sorted(a["id"] for a in answers)
        k, c = len(CLASSES), profile.pca_components.shape[1]
        projected = profile.project(out.features)
        probs = torch.softmax(torch.from_numpy(out.logits).double() / profile.temperature, 1).numpy()
        for i, (a, blob) in enumerate(zip(answers, inside + outside)):
            row = by_id[a["id"]]
            assert len(row["projected"]) == 2 * c <= 512 and len(row["probabilities"]) == 4 * k
            np.testing.assert_allclose(np.frombuffer(row["projected"], np.float16), projected[i], atol=2e-3)
            np.testing.assert_allclose(np.frombuffer(row["probabilities"], np.float32), probs[i], atol=1e-4)
            assert row["unknown"] == (a["decision"] == "unknown") and row["label"] == a["label"]
            assert row["ood_score"] == pytest.approx(a["ood_score"])
            with Image.open(io.BytesIO(blob)) as im:  # statistics of the decoded upload, header from its bytes
                want = image_stats(im.convert("RGB"), blob)
            assert row["image_stats"] == pytest.approx(want)
    finally:
        store.close()


@pytest.mark.parametrize("score", ["msp", "energy", "knn", "mahalanobis"])
def test_observer_scores_equal_the_profiles_own_bit_for_bit(profiled, score):
    """The service scores each micro-batch with a scorer prepared once (`ood.OpenSetScorer`); its scores and
    flags must equal `ReferenceProfile.unknown`, whichever score a profile chose."""
    import dataclasses

    from sightline.inference import Output
    from sightline.monitor.ood import OODChoice
    from sightline.serve.monitoring import Observer

    _, built = profiled
    profile = dataclasses.replace(built, ood_choice=OODChoice(score=score, threshold=0.0, quantile=0.99,
                                                              chosen_by="test", n_in=0, n_out=0))
    rng = np.random.default_rng(0)
    d = profile.pca_mean.shape[0]
    features = np.abs(rng.normal(size=(7, d))).astype(np.float32)
    logits = rng.normal(size=(7, len(CLASSES))).astype(np.float32)
    observer = Observer(profile, "f" * 16)
    profile.ood_choice.threshold = float(np.median(profile.unknown(logits, features)[0]))  # some flagged
    scored = observer.score(Output(logits, features))
    want, flags = profile.unknown(logits, features)
    assert np.array_equal(scored.scores, want) and np.array_equal(scored.unknown, flags) and 0 < flags.sum() < 7


def test_recent_window_is_the_newest_predictions_whether_read_with_the_blocks_or_alone(profiled, tmp_path,
                                                                                       monkeypatch):
    """`Monitor.run_once` takes the "recent" window from the tail of its block read when that read reaches the
    newest prediction (one read), else reads the newest N on their own; either way the stored window equals
    `summarize` on the newest N signal rows."""
    from sightline.inference import Output
    from sightline.monitor.windows import summarize
    from sightline.serve.metrics import ServiceMetrics
    from sightline.serve.monitoring import Monitor, Observer, batch_from_rows
    from sightline.storage.store import Store

    folder, profile = profiled
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    settings = _settings(folder, url)
    store = Store(url)
    observer = Observer(profile, "a" * 16)
    monitor = Monitor(store=store, observer=observer, settings=settings, metrics=ServiceMetrics(),
                      model={"name": "pets", "version": "7"})
    reads = []
    real = store.signal_rows
    monkeypatch.setattr(store, "signal_rows", lambda *a, **kw: reads.append(kw) or real(*a, **kw))
    rng = np.random.default_rng(0)
    row = {"request_id": "r", "filename": "a.jpg", "input_sha256": "0" * 64, "model_name": "pets",
           "model_version": "7", "label": "cat", "confidence": 0.5, "top_k": [], "decision": "review",
           "latency_ms": 1.0}
    try:
        # 45 new: one block and the recent window from one read; 10 more: 25 after the block, the newest 30
        # read alone; 400 more: the block read stops at 10 blocks (300 rows), the newest read alone
        for n, separate in ((45, False), (10, True), (400, True)):
            d = profile.pca_mean.shape[0]
            out = Output(rng.normal(size=(n, len(CLASSES))).astype(np.float32),
                         np.abs(rng.normal(size=(n, d))).astype(np.float32))
            store.add_predictions([row] * n, observer.observe(out, [{"width": 10 + i} for i in range(n)])[2])
            reads.clear()
            monitor.run_once()
            assert any(kw.get("newest") for kw in reads) == separate
            newest = batch_from_rows(real("a" * 16, newest=WINDOW), profile)
            want = summarize(profile, newest, kind="recent", key=int(newest.ids[-1]), alpha=settings.monitor_alpha,
                             min_window=settings.monitor_min_window, permutations=settings.monitor_permutations)
            assert store.latest_windows("a" * 16)["recent"] == want
    finally:
        store.close()


def test_requests_of_one_micro_batch_are_stored_in_one_transaction(profiled, tmp_path):
    """Concurrent requests that share a forward pass share the store step: their prediction and signal rows are
    written by one `add_predictions` call (one `created` time for all its rows), each answer keeps its own id,
    decision and score, and every answer has its signals row; their kept images' rows also share one write."""
    import sqlalchemy as sa

    from sightline.storage.store import KeptImage, PredictionRecord, PredictionSignal, Store

    folder, _ = profiled
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    blobs = [calm(300 + i) for i in range(6)] + [noise(300 + i) for i in range(2)]
    # the batch closes when all 8 images are in (batch_max_size), or after 1 s: the window is a bound, not a wait
    with serving(_settings(folder, url, batch_max_wait_ms=1000, batch_max_size=len(blobs))) as (client, app, key):
        def one(i):
            r = client.post("/v1/predict", files=[("file", (f"c{i}.jpg", blobs[i]))])
            assert r.status_code == 200, r.text
            return r.json()["predictions"][0]

        threads, answers = [], [None] * len(blobs)
        for i in range(len(blobs)):
            threads.append(threading.Thread(target=lambda i=i: answers.__setitem__(i, one(i))))
            threads[-1].start()
        for t in threads:
            t.join()
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(PredictionRecord.id, PredictionRecord.filename, PredictionRecord.created,
                                          PredictionRecord.decision)).all()
            signals = dict(conn.execute(sa.select(PredictionSignal.prediction_id, PredictionSignal.ood_score)).all())
            kept = dict(conn.execute(sa.select(KeptImage.prediction_id, KeptImage.created)).all())
    finally:
        store.close()
    by_id = {r.id: r for r in rows}
    queued = {a["id"] for a in answers if a["decision"] in ("review", "unknown")}
    assert queued <= set(kept) and len(queued) >= 2  # every queued image kept (the random slice may add more)
    assert len(set(kept.values())) < len(kept)  # kept-image rows of several requests in one transaction
    assert sorted(by_id) == sorted(a["id"] for a in answers)
    for i, a in enumerate(answers):
        assert by_id[a["id"]].filename == f"c{i}.jpg" and by_id[a["id"]].decision == a["decision"]
        assert signals[a["id"]] == pytest.approx(a["ood_score"])
    assert [a["decision"] for a in answers[6:]] == ["unknown", "unknown"]
    assert len({r.created for r in rows}) < len(rows)  # at least two requests went into one transaction


def test_without_a_profile_or_with_monitoring_off_serving_is_unchanged(profiled, tmp_path):
    from sightline.storage.store import PredictionSignal, Store

    folder, _ = profiled
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns("reference.npz", "sightline.db*"))
    for bundle, extra, says in ((bare, {}, "sightline evaluate RUN --data DATA"),
                                (folder, {"monitor": False}, "SIGHTLINE_MONITOR=false")):
        url = f"sqlite:///{tmp_path / (bundle.name + str(len(extra)) + '.db')}"
        with serving(_settings(bundle, url, **extra)) as (client, app, key):
            answers = _predict(client, [noise(1), calm(1)])
            status = client.get("/v1/monitor")
        assert [a["decision"] for a in answers] == ["review", "review"]  # no "unknown" without a profile
        assert all(a["ood_score"] is None for a in answers)
        body = status.json()
        assert status.status_code == 200 and body["enabled"] is False and says in body["message"]
        store = Store(url)
        with store.engine.connect() as conn:
            import sqlalchemy as sa

            assert conn.execute(sa.select(sa.func.count()).select_from(PredictionSignal)).scalar() == 0
        assert store.count_predictions() == 2
        store.close()


def test_the_service_uses_the_spec_files_monitor_section_and_review_rule(profiled, tmp_path, monkeypatch):
    """`sightline serve --spec PATH` (Settings.spec): the monitor: section sets the windows and the alert rule that
    /v1/monitor reports, review_below_confidence the review rule (the bundle says 0.99, so every calm answer is
    "review" without the file); a SIGHTLINE_* variable wins over the file."""
    for name in ("SIGHTLINE_SPEC", "SIGHTLINE_REVIEW_CONFIDENCE", "SIGHTLINE_MONITOR_WINDOW",
                 "SIGHTLINE_MONITOR_MIN_WINDOW", "SIGHTLINE_MONITOR_CONSECUTIVE", "SIGHTLINE_MONITOR_ALPHA"):
        monkeypatch.delenv(name, raising=False)
    from sightline.serve.settings import load_settings

    folder, _ = profiled
    data = tmp_path / "data"
    data.mkdir()
    (data / "sightline.yaml").write_text("review_below_confidence: 0.0\n"
                                         "monitor: {window: 40, min_window: 20, consecutive: 3, alpha: 0.01}\n")
    monkeypatch.setenv("SIGHTLINE_MONITOR_ALPHA", "0.02")  # a variable wins over the file
    settings = load_settings(bundle=folder, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", spec=data,
                             rate_limit_per_minute=0, key_cache_s=0, threads=1, monitor_calendar="",
                             monitor_every=10**6, monitor_interval_minutes=600)
    assert settings.spec == data / "sightline.yaml" and settings.review_confidence == 0.0
    with serving(settings) as (client, app, key):
        answers = _predict(client, [calm(i) for i in range(6)])
        status = client.get("/v1/monitor").json()
    assert {a["decision"] for a in answers} <= {"accept", "unknown"} and "accept" in {a["decision"] for a in answers}
    assert {k: status["settings"][k] for k in ("window", "min_window", "consecutive", "alpha")} == {
        "window": 40, "min_window": 20, "consecutive": 3, "alpha": 0.02}
    monkeypatch.setenv("SIGHTLINE_REVIEW_CONFIDENCE", "0.5")
    assert load_settings(bundle=folder, spec=data).review_confidence == 0.5


# --- windows, alerts, webhooks ------------------------------------------------------------------------------
class Receiver:
    """A webhook endpoint on 127.0.0.1 that verifies each delivery's Standard Webhooks signature with its own
    code (hmac + base64 from the standard library) and answers the statuses queued in `plan` (then 204)."""

    def __init__(self, secret: str) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.plan: list[int] = []
        self.seen: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["content-length"]))
                msg_id, ts = self.headers["webhook-id"], self.headers["webhook-timestamp"]
                mac = hmac.new(receiver.key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
                valid = ("v1," + base64.b64encode(mac).decode()) in self.headers["webhook-signature"].split(" ")
                status = receiver.plan.pop(0) if receiver.plan else 204
                receiver.seen.append({"id": msg_id, "timestamp": int(ts), "valid": valid, "status": status,
                                      "body": json.loads(body)})
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        # shutdown() waits for serve_forever's next poll: every 10 ms, not the default 0.5 s
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait(predicate, timeout=60.0, every=0.02):
    """Until `predicate()`, checked `every` seconds: 20 ms where a check is a GET /v1/monitor (a few ms of the
    service's CPU, beside the monitor run it waits for), 10 ms for the receiver's own list."""
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(every)


def test_alert_fires_after_two_drifted_windows_survives_a_restart_and_is_delivered_signed(profiled, database_url):
    from sightline.storage.store import MonitorWindow, Store

    folder, _ = profiled
    receiver = Receiver(SECRET)
    # the monitor runs in the background after every WINDOW predictions; 2 webhook attempts per run
    settings = _settings(folder, database_url, monitor_every=WINDOW, alert_webhook_url=receiver.url,
                         alert_webhook_secret=SECRET, alert_webhook_attempts=2, alert_webhook_backoff_s=0.01,
                         keep_images=False)
    try:
        with serving(settings) as (client, app, key):
            assert client.get("/v1/monitor", headers={"X-API-Key": ""}).status_code == 401
            assert client.get("/v1/monitor", headers={"X-API-Key": key[:-2] + "xx"}).status_code == 401

            def blocks():
                return client.get("/v1/monitor").json()["alerts"]

            _predict(client, [calm(100 + i) for i in range(WINDOW)], "calm")
            _wait(lambda: any(a["name"] == "drift" and a["last_window"] for a in blocks()))
            first = client.get("/v1/monitor").json()
            assert first["windows"]["block"]["significant"] is False and first["open_alerts"] == []
            receiver.plan = [500, 500]  # this process's two attempts both fail: the event must wait in the outbox
            _predict(client, [noise(100 + i) for i in range(WINDOW)], "noise")
            _wait(lambda: next(a for a in blocks() if a["name"] == "drift")["significant_streak"] == 1)
            assert client.get("/v1/monitor").json()["open_alerts"] == []  # one drifted window is not enough
            _predict(client, [noise(200 + i) for i in range(WINDOW)], "noise")
            _wait(lambda: len(receiver.seen) >= 2, every=0.01)
            status = client.get("/v1/monitor").json()
            block = status["windows"]["block"]
            assert status["open_alerts"] == ["drift"] and block["significant"] is True
            assert block["n"] == WINDOW and block["tests"]["feature_mmd"]["p_value"] < 0.05
            assert block["unknown_rate"] == 1.0
            drift = next(a for a in status["alerts"] if a["name"] == "drift")
            assert drift["pending"] == ["drift-1"]  # not delivered yet, not lost
            assert drift["acknowledged"] is None
            r = client.post("/v1/monitor/alerts/drift/ack", json={"note": "noise from camera 3"})
            assert r.status_code == 200 and r.json()["acknowledged"]["by"] == "tester"  # the key's name
            text = client.get("/metrics").text
            assert 'sightline_monitor_alert_active{alert="drift"} 1.0' in text
            assert 'sightline_monitor_p_value{test="feature_mmd",window="block"}' in text
            assert 'sightline_monitor_unknown_rate{window="block"} 1.0' in text
        store = Store(database_url)
        with store.engine.connect() as conn:
            import sqlalchemy as sa

            n_windows = conn.execute(sa.select(sa.func.count()).select_from(MonitorWindow)
                                     .where(MonitorWindow.kind == "block")).scalar()
        store.close()
        assert n_windows == 3

        receiver.plan = [503]  # the new process: its first attempt fails, the retry (after backoff) succeeds
        with serving(settings) as (client, app, key):
            _wait(lambda: any(s["status"] == 204 for s in receiver.seen), every=0.01)
            _wait(lambda: client.get("/v1/monitor").json()["alerts"][0]["pending"] == [])
            monitor = app.state.sightline.monitor
            assert monitor.run_once() == []  # the same windows again: nothing counted twice, no new event
            status = client.get("/v1/monitor").json()
            assert status["open_alerts"] == ["drift"]
            drift = next(a for a in status["alerts"] if a["name"] == "drift")  # delivered after the person saw it:
            assert drift["pending"] == [] and drift["acknowledged"]["note"] == "noise from camera 3"  # both kept
            text = client.get("/metrics").text
            assert 'sightline_monitor_alert_active{alert="drift"} 1.0' in text  # restored from the database
            assert "sightline_monitor_alert_events_total{" not in text  # this process emitted nothing
        assert [s["status"] for s in receiver.seen] == [500, 500, 503, 204]
        assert {s["id"] for s in receiver.seen} == {"drift-1"} and all(s["valid"] for s in receiver.seen)
        assert all(abs(s["timestamp"] - time.time()) < 300 for s in receiver.seen)
        body = receiver.seen[-1]["body"]
        assert body["type"] == "sightline.alert.fired" and body["data"]["name"] == "drift"
        assert body["data"]["detail"]["significant_tests"] and body["data"]["model"] == {"name": "pets", "version": "7"}
    finally:
        receiver.close()


def test_calendar_windows_are_tested_once_when_closed(profiled, tmp_path):
    """Predictions moved into the previous hour form one closed hour window: tested once, then never again; the
    current hour is left open."""
    import sqlalchemy as sa

    from sightline.storage.store import PredictionSignal, Store

    folder, _ = profiled
    url = f"sqlite:///{tmp_path / 'cal.db'}"
    with serving(_settings(folder, url, monitor_calendar="hour", keep_images=False)) as (client, app, key):
        ids = [a["id"] for a in _predict(client, [calm(300 + i) for i in range(WINDOW + 5)])]
        few = [a["id"] for a in _predict(client, [calm(400 + i) for i in range(4)])]
        hour = int(time.time() // 3600)
        now = hour * 3600 + 1800.0  # the monitor's clock: half past (a period is tested a minute after it ends)
        store = Store(url)
        with store.engine.begin() as conn:  # the first batch happened an hour ago, the 4 others two hours ago
            for moved, back in ((ids, 1), (few, 2)):
                when = datetime.fromtimestamp((hour - back) * 3600 + 60, tz=timezone.utc)
                conn.execute(sa.update(PredictionSignal).where(PredictionSignal.prediction_id.in_(moved))
                             .values(created=when))
        store.close()
        monitor = app.state.sightline.monitor
        assert monitor.run_once(now=now) == []
        status = client.get("/v1/monitor").json()
        window = status["windows"]["hour"]
        assert window["key"] == hour - 1 and window["n"] == WINDOW + 5 and window["tested"] is True
        assert window["start"].endswith("+00:00") and window["significant"] is False
        alert = next(a for a in status["alerts"] if a["name"] == "drift_hour")
        assert alert["last_window"] == hour - 1
        monitor.run_once(now=now)
        store = Store(url)
        rows = store.latest_windows(status["profile"]["fingerprint"])
        with store.engine.connect() as conn:
            from sightline.storage.store import MonitorWindow

            hours = conn.execute(sa.select(MonitorWindow.key, MonitorWindow.n, MonitorWindow.significant)
                                 .where(MonitorWindow.kind == "hour").order_by(MonitorWindow.key)).all()
        store.close()
        # two hours ago: 4 predictions, below the minimum, kept but not tested; an hour ago: tested; once each
        assert [tuple(h) for h in hours] == [(hour - 2, 4, None), (hour - 1, WINDOW + 5, False)]
        assert rows["hour"]["key"] == hour - 1


def test_webhook_signing_follows_the_standard_webhooks_test_vector():
    from sightline.errors import UserInputError
    from sightline.serve.webhooks import parse_secret, sign

    key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")  # the specification's own example
    assert sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    for bad in ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_not base64!", "whsec_c2hvcnQ="):
        with pytest.raises(UserInputError, match="SIGHTLINE_ALERT_WEBHOOK_SECRET"):
            parse_secret(bad)


def test_webhook_delivery_gives_up_after_its_attempts_and_never_raises():
    from sightline.serve.webhooks import deliver, parse_secret

    receiver = Receiver(SECRET)
    try:
        receiver.plan = [500, 502, 200]
        ok = asyncio.run(deliver(receiver.url, parse_secret(SECRET), "e-1", {"a": 1}, attempts=2, backoff_s=0.01))
        assert ok is False and [s["status"] for s in receiver.seen] == [500, 502]
        ok = asyncio.run(deliver(receiver.url, parse_secret(SECRET), "e-1", {"a": 1}, attempts=2, backoff_s=0.01))
        assert ok is True and all(s["valid"] for s in receiver.seen)
    finally:
        receiver.close()
    # nothing listens there any more: a connection error is a failed attempt, not an exception
    assert asyncio.run(deliver(receiver.url, parse_secret(SECRET), "e-2", {}, attempts=2, backoff_s=0.01)) is False


def test_an_alert_event_is_logged_in_words_not_as_a_dict():
    """The service's log (and `demo --serve`'s output) printed each alert event's window as a Python dict."""
    from sightline.serve.monitoring import alert_words

    detail = {"kind": "block", "key": "800", "n": 200, "p_value": 3.2e-61, "unknown_rate": 0.12,
              "mean_confidence": 0.713, "expected_accuracy": 0.79, "expected_accuracy_reliable": False,
              "significant_tests": ["feature_mmd", "image_stats"], "model": {"name": "pets"}}
    assert alert_words(detail, 7) == ("block 800 (200 predictions); p 3.2e-61, changed: feature_mmd, image_stats; "
                                      "unknown 12.0%; mean confidence 0.71; label-free accuracy 0.79 (not reliable: "
                                      "the window drifted)")
    assert alert_words({}, 7) == "window 7"  # an event from before these fields: still one line
