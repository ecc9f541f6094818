"""Shadow mode (sightline/serve/shadow.py, sightline/storage/shadow.py): a challenger scores a sample of live traffic
after the answer is sent; answers are the same with and without it, its rows are stored for the sampled requests
(checked against the challenger run on its own), GET /v1/shadow reports agreement and, on reviewer-labelled items,
both models' accuracy, needs the review role, a full queue drops and counts instead of blocking, and a bad --shadow
is a one-line CLI error. Tiny random-weight test_efficientnet bundles, uvicorn on loopback, SQLite."""
from __future__ import annotations

import asyncio
import random
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from serve_tiny import CLASSES, encode, make_bundle, photo, predict
from serve_tiny import serving as _serving

from sightline.storage.shadow import ShadowLog
from sightline.storage.store import Store


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """champion (seed 0), challenger (other weights, version 2) and twin (the champion's weights, another folder)."""
    root = tmp_path_factory.mktemp("shadow")
    return {"champion": make_bundle(root, seed=0, version="1", folder="champion"),
            "challenger": make_bundle(root, seed=1, version="2", folder="challenger"),
            "twin": make_bundle(root, seed=0, version="1", folder="twin")}


def serving(bundle, **overrides):
    """serve_tiny.serving with no batching window: these tests send one request at a time, and each waited the
    helper's 5 ms window for images that never came (~100 requests in this file). Images already queued still join
    the batch, so a request's own images are still inferred together."""
    return _serving(bundle, batch_max_wait_ms=0, **overrides)


def _db(tmp_path, name: str) -> tuple[str, dict[str, str]]:
    url = f"sqlite:///{tmp_path / f'{name}.db'}"
    store = Store(url)
    keys = {"client": store.create_key("client"), "reviewer": store.create_key("ann", ["review"])}
    store.close()
    return url, keys


def _blobs(n: int, seed: int = 0) -> list[bytes]:
    return [encode(photo(seed + i, 40 + i % 7, 32)) for i in range(n)]


def _status(c: httpx.Client, key: str) -> dict:
    r = c.get("/v1/shadow", headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return r.json()


def _settle(c: httpx.Client, key: str, *, timeout: float = 60) -> dict:
    """/v1/shadow once every drawn request has been scored, dropped, failed or skipped."""
    deadline = time.time() + timeout
    while True:
        s = _status(c, key)
        done = sum(s["since_start"][k] for k in ("scored", "dropped", "failed", "skipped"))
        if s["queue"]["pending"] == 0 and done == s["since_start"]["sampled"]:
            return s
        assert time.time() < deadline, f"the shadow queue did not drain: {s}"
        time.sleep(0.02)


def _answers(c: httpx.Client, key: str, requests: list[list[bytes]]) -> list[dict]:
    out = []
    for blobs in requests:
        r = predict(c, key, blobs)
        assert r.status_code == 200, r.text
        out.append(r.json())
    return out


def _metric(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return sample.value
    return None


def _same_answer(a: dict, b: dict) -> None:
    """Equal answers: model, files, labels, decisions, open-set scores, fields; probabilities to float32 noise."""
    assert a["model"] == b["model"] and set(a) == set(b)
    assert len(a["predictions"]) == len(b["predictions"])
    for p, q in zip(a["predictions"], b["predictions"]):
        assert set(p) == set(q)  # nothing of the challenger in the answer
        keys = ("filename", "label", "decision", "ood_score")
        assert {k: p[k] for k in keys} == {k: q[k] for k in keys}
        assert [t["label"] for t in p["top_k"]] == [t["label"] for t in q["top_k"]]
        assert [p["confidence"], *(t["confidence"] for t in p["top_k"])] == pytest.approx(
            [q["confidence"], *(t["confidence"] for t in q["top_k"])], abs=1e-6)


def test_file_parts_are_the_file_fields_in_order():
    from sightline.serve.shadow import file_parts

    blobs = _blobs(3)
    request = httpx.Request("POST", "http://x/v1/predict", data={"note": "not a file"},
                            files=[("file", ("a.jpg", blobs[0])), ("other", ("o.jpg", b"other")),
                                   ("file", ("b.jpg", blobs[1])), ("file", ("c.jpg", blobs[2]))])
    body = request.read()
    assert file_parts(body, request.headers["content-type"]) == blobs
    chunks = [body[i:i + 7] for i in range(0, len(body), 7)]  # as the server receives it, in pieces
    assert file_parts(b"".join(chunks), request.headers["content-type"]) == blobs
    with pytest.raises(ValueError, match="boundary"):
        file_parts(body, "application/json")


def test_answers_unchanged_and_every_sampled_prediction_stored(bundles, tmp_path):
    from sightline.bundle import load_bundle
    from sightline.inference import open_engine

    requests = [_blobs(1, 0), _blobs(3, 10), _blobs(2, 20), _blobs(1, 30)]
    url_plain, keys_plain = _db(tmp_path, "plain")
    with serving(bundles["champion"], database_url=url_plain) as c:
        plain = _answers(c, keys_plain["client"], requests)
        assert _status(c, keys_plain["reviewer"])["enabled"] is False
    url, keys = _db(tmp_path, "shadowed")
    with serving(bundles["champion"], database_url=url, shadow=str(bundles["challenger"]), shadow_sample=1.0) as c:
        shadowed = _answers(c, keys["client"], requests)
        status = _settle(c, keys["reviewer"])
        metrics = c.get("/metrics").text
    for a, b in zip(plain, shadowed, strict=True):
        _same_answer(a, b)
    n = sum(map(len, requests))
    assert status["since_start"] == {"sampled": 4, "scored": 4, "dropped": 0, "failed": 0, "skipped": 0,
                                     "predictions": n}
    # the stored rows: one per answered prediction, the challenger's answers as the challenger gives them alone
    store = Store(url)
    rows = ShadowLog(store).rows()
    store.close()
    answered = [p for a in shadowed for p in a["predictions"]]
    assert [r["prediction_id"] for r in rows] == [p["id"] for p in answered]
    assert [(r["champion_label"], r["champion_decision"]) for r in rows] == [(p["label"], p["decision"])
                                                                             for p in answered]
    with open_engine(load_bundle(bundles["challenger"]), backend="onnx", threads=1) as engine:
        alone = engine.predict_files([b for req in requests for b in req])
    assert [r["label"] for r in rows] == [p.label for p in alone]
    assert [r["confidence"] for r in rows] == pytest.approx([p.confidence for p in alone], abs=1e-5)
    assert {r["challenger_version"] for r in rows} == {status["challenger"]["version"]}
    assert status["challenger"]["version"].startswith("2+") and status["challenger"]["name"] == "pets"
    agreement = float(np.mean([r["label"] == r["champion_label"] for r in rows]))
    assert status["stored"]["n"] == n and status["stored"]["agreement_rate"] == pytest.approx(agreement)
    assert _metric(metrics, "sightline_shadow_agreement_rate") == pytest.approx(agreement)
    assert _metric(metrics, "sightline_shadow_predictions_total") == n


def test_agreement_and_accuracy_on_reviewer_labels(bundles, tmp_path):
    url, keys = _db(tmp_path, "labels")
    blobs = _blobs(6, 40)
    with serving(bundles["champion"], database_url=url, shadow=str(bundles["twin"]), shadow_sample=1.0) as c:
        answered = [p for a in _answers(c, keys["client"], [[b] for b in blobs]) for p in a["predictions"]]
        status = _settle(c, keys["reviewer"])
        assert status["stored"]["agreement_rate"] == 1.0  # the same weights: the same labels
        assert status["stored"]["labelled"] == {"n": 0, "champion_accuracy": None, "challenger_accuracy": None}
        truths = [answered[0]["label"], answered[1]["label"], next(x for x in CLASSES if x != answered[2]["label"]),
                  "unknown"]  # right, right, wrong, and a "not a valid item" that counts for neither
        for p, truth in zip(answered, truths):
            r = c.post(f"/v1/review/{p['id']}", json={"label": truth}, headers={"X-API-Key": keys["reviewer"]})
            assert r.status_code == 200, r.text
        labelled = _status(c, keys["reviewer"])["stored"]["labelled"]
    assert labelled == {"n": 3, "champion_accuracy": pytest.approx(2 / 3), "challenger_accuracy": pytest.approx(2 / 3)}


def test_accuracies_differ_when_the_models_do(bundles, tmp_path):
    url, keys = _db(tmp_path, "differ")
    blobs = _blobs(12, 60)
    with serving(bundles["champion"], database_url=url, shadow=str(bundles["challenger"]), shadow_sample=1.0) as c:
        answered = [p for a in _answers(c, keys["client"], [[b] for b in blobs]) for p in a["predictions"]]
        _settle(c, keys["reviewer"])
        store = Store(url)
        rows = {r["prediction_id"]: r for r in ShadowLog(store).rows()}
        store.close()
        for p in answered:  # the challenger's label is the truth: it is always right, the champion when they agree
            c.post(f"/v1/review/{p['id']}", json={"label": rows[p["id"]]["label"]},
                   headers={"X-API-Key": keys["reviewer"]}).raise_for_status()
        stored = _status(c, keys["reviewer"])["stored"]
    agree = np.mean([rows[p["id"]]["label"] == p["label"] for p in answered])
    assert stored["labelled"] == {"n": 12, "champion_accuracy": pytest.approx(agree), "challenger_accuracy": 1.0}
    assert stored["agreement_rate"] == pytest.approx(agree)


def test_only_the_sample_is_shadowed(bundles, tmp_path):
    url, keys = _db(tmp_path, "sample")
    with serving(bundles["champion"], database_url=url, shadow=str(bundles["challenger"]), shadow_sample=0.5) as c:
        answered = [a["predictions"][0]["id"] for a in _answers(c, keys["client"], [[b] for b in _blobs(30, 80)])]
        status = _settle(c, keys["reviewer"])
    store = Store(url)
    rows = ShadowLog(store).rows()
    store.close()
    sampled = status["since_start"]["sampled"]
    assert 4 <= sampled <= 26  # Binomial(30, 0.5): outside in about 1 run of 10^5 (8e-6)
    assert status["since_start"]["scored"] == sampled == len(rows) == status["stored"]["n"]
    assert {r["prediction_id"] for r in rows} < set(answered)


def test_shadow_status_needs_the_review_role(bundles, tmp_path):
    url, keys = _db(tmp_path, "roles")
    with serving(bundles["champion"], database_url=url, shadow=str(bundles["twin"]), shadow_sample=0.0) as c:
        r = c.get("/v1/shadow", headers={"X-API-Key": keys["client"]})
        assert r.status_code == 403 and "lacks the 'review' role" in r.json()["detail"]
        assert c.get("/v1/shadow").status_code == 401
        status = _status(c, keys["reviewer"])
        assert status["enabled"] is True and status["sample"] == 0.0 and status["stored"]["n"] == 0


def test_a_slow_challenger_never_holds_up_answers(bundles, tmp_path, monkeypatch):
    """The challenger is stuck until released: answers keep coming at full speed, the queue (2) fills, the rest is
    dropped and counted; released, what was queued is scored."""
    from sightline.serve import shadow as shadow_module

    gate = threading.Event()
    original = shadow_module.Shadow.score

    def stuck(self, job):
        assert gate.wait(60)
        return original(self, job)

    monkeypatch.setattr(shadow_module.Shadow, "score", stuck)
    url, keys = _db(tmp_path, "slow")
    with serving(bundles["champion"], database_url=url, shadow=str(bundles["challenger"]), shadow_sample=1.0,
                 shadow_queue=2) as c:
        try:
            t0 = time.perf_counter()
            _answers(c, keys["client"], [[b] for b in _blobs(8, 200)])
            elapsed = time.perf_counter() - t0
            held = _status(c, keys["reviewer"])
        finally:
            gate.set()
        status = _settle(c, keys["reviewer"])
        metrics = c.get("/metrics").text
    assert elapsed < 20  # eight tiny answers; waiting for the stuck challenger would take 60 s each
    # the first request is being scored (stuck) or still queued; two wait; the rest were dropped
    assert held["queue"]["pending"] == 2 and held["since_start"]["dropped"] in (5, 6), held
    counts = status["since_start"]
    assert counts["sampled"] == 8 and counts["scored"] + counts["dropped"] == 8
    assert counts["failed"] == counts["skipped"] == 0
    assert counts["dropped"] == held["since_start"]["dropped"]
    assert _metric(metrics, "sightline_shadow_requests_total", {"outcome": "dropped"}) == counts["dropped"]
    store = Store(url)
    assert len(ShadowLog(store).rows()) == counts["scored"]
    store.close()


def test_queue_bounds_and_close_drop_and_count():
    from sightline.serve.metrics import ServiceMetrics
    from sightline.serve.shadow import Shadow, ShadowJob

    metrics = ServiceMetrics()
    closed = []
    shadow = Shadow(SimpleNamespace(version="x"), SimpleNamespace(close=lambda: closed.append(True)), log_store=None,
                    metrics=metrics, sample=1.0, max_pending=2, max_pending_bytes=1000)

    def job(size: int) -> ShadowJob:
        return ShadowJob((b"x" * size,), "multipart/form-data; boundary=b", b"{}")

    assert shadow.sampled()
    assert shadow.offer(job(10)) and shadow.offer(job(10))
    assert not shadow.offer(job(10))  # two waiting: full
    assert not Shadow(SimpleNamespace(version="y"), None, log_store=None, metrics=ServiceMetrics(), sample=1.0,
                      max_pending=5, max_pending_bytes=100).offer(job(200))  # above the byte cap
    asyncio.run(shadow.close())
    assert shadow.counts["dropped"] == 3 and shadow.pending == 0 and closed == [True] and not shadow.sampled()
    assert metrics.registry.get_sample_value("sightline_shadow_requests_total", {"outcome": "dropped"}) == 3
    draws = Shadow(SimpleNamespace(version="z"), None, log_store=None, metrics=ServiceMetrics(), sample=0.1,
                   max_pending=1, max_pending_bytes=1, rng=random.Random(0))
    assert 150 <= sum(draws.sampled() for _ in range(2000)) <= 250  # Binomial(2000, 0.1): mean 200, sd 13


def test_registry_alias_as_challenger(bundles, tmp_path):
    from sightline.errors import UserInputError
    from sightline.loop.registry import Registry
    from sightline.serve.settings import Settings
    from sightline.serve.shadow import resolve_challenger

    url = f"sqlite:///{tmp_path / 'reg.db'}"
    with Registry(url, root=tmp_path / "registry") as registry:
        registry.add(bundles["champion"], alias="champion")
        v2 = registry.add(bundles["challenger"], alias="challenger").version
    settings = Settings(registry=tmp_path / "registry", database_url=url, shadow="challenger")
    found = resolve_challenger(settings)
    assert found.registry_version == v2.ref and found.bundle_hash == v2.bundle_hash
    assert found.version == f"2+{v2.ref}.{v2.bundle_hash[:12]}"
    assert resolve_challenger(settings.model_copy(update={"shadow": str(bundles["twin"])})).registry_version is None
    with pytest.raises(UserInputError, match="unknown version 'v9'"):
        resolve_challenger(settings.model_copy(update={"shadow": "v9"}))


def test_bad_shadow_is_one_line_exit_2(bundles, tmp_path, run_cli):
    from sightline.bundle import load_bundle

    database = str(tmp_path / "cli.db")
    code, out = run_cli(["serve", str(bundles["champion"]), "--database", database, "--shadow",
                         str(tmp_path / "nowhere")])
    assert code == 2 and out.err.count("\n") == 1, out.err
    assert "--shadow" in out.err and "does not exist" in out.err and "Traceback" not in out.err
    code, out = run_cli(["serve", str(bundles["champion"]), "--database", database, "--shadow",
                         str(bundles["challenger"]), "--shadow-sample", "1.5"])
    assert code == 2 and out.err.count("\n") == 1 and "shadow_sample" in out.err, out.err
    birds = load_bundle(make_bundle(tmp_path, seed=1, folder="birds"))  # another class list: nothing to compare
    birds.classes, birds.name = ["crow", "owl", "tit"], "birds"  # an exported 3-class graph, as valid as any
    birds.write_json()
    other = birds.path
    code, out = run_cli(["serve", str(bundles["champion"]), "--database", database, "--shadow", str(other)])
    assert code == 2 and out.err.count("\n") == 1 and "same classes" in out.err, out.err
    no_onnx = make_bundle(tmp_path, seed=3, folder="raw", onnx=False)
    code, out = run_cli(["serve", str(bundles["champion"]), "--database", database, "--shadow", str(no_onnx)])
    assert code == 2 and out.err.count("\n") == 1 and "sightline export" in out.err, out.err
