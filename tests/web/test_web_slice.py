"""The random slice in the web app (sightline/serve/web/dashboard.py, queue.py): measured accuracy on the labelled
slice estimates the accuracy of the whole stream (accepted, review and unknown answers alike), not of the accepted
ones; the slice's page lists members of every decision; the dashboard says the slice is drawn from all predictions
and how much of it is labelled per decision, and warns when the decisions are labelled unevenly."""
from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest
from sqlalchemy import update

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import DictImages, make_bundle, serving

from sightline.serve.web.dashboard import dashboard_data, slice_coverage
from sightline.serve.web.queue import ordered_queue
from sightline.storage.images import ImageKeeper, open_image_store
from sightline.storage.store import PredictionRecord, Store

# a stream where accepted answers are mostly right and queued ones mostly wrong
STREAM = {"accept": (4000, 0.95), "review": (1500, 0.5), "unknown": (500, 0.2)}


def _stream(store: Store, images: str | DictImages, *, rate: float, seed: int = 0,
            part: int = 1) -> tuple[dict[int, str], dict[int, str], float]:
    """Predictions of STREAM (1/`part` of each decision's count) in random order ("cat" predicted; the truth "cat"
    when right, else "dog"), kept by the service's keeper at `rate` in `images`: the image store at that URL (a
    memory:// one: a folder fsyncs each of the ~2,000 files, seconds that say nothing about the slice), or a
    `DictImages`; returns the decision and the truth per id and the stream's true accuracy."""
    rng = random.Random(seed)
    rows = [(d, rng.random() < right) for d, (n, right) in STREAM.items() for _ in range(n // part)]
    rng.shuffle(rows)
    ids = store.add_predictions([{
        "request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "pets",
        "model_version": "1", "label": "cat", "confidence": 0.9 if d == "accept" else 0.4, "top_k": [],
        "decision": d, "latency_ms": 1.0} for i, (d, _) in enumerate(rows)])
    files = images if isinstance(images, DictImages) else open_image_store(images)
    keeper = ImageKeeper(files, keep_accepted=rate, rng=random.Random(seed + 1))
    keeper.keep(store, ids, [d for d, _ in rows], [i.to_bytes(4, "big") for i in ids])
    truth = {i: "cat" if ok else "dog" for i, (_, ok) in zip(ids, rows)}
    return dict(zip(ids, (d for d, _ in rows))), truth, sum(ok for _, ok in rows) / len(rows)


def test_measured_accuracy_estimates_the_whole_stream(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    decisions, truth, stream_accuracy = _stream(store, DictImages(), rate=0.2)
    members = [r["prediction_id"] for r in store.kept_images() if r["in_slice"]]
    # the whole slice labelled, in one transaction: record_label's own transaction per label (its history row, its
    # shadow totals; tested in test_serve_roles) would cost ~1 s here for the ~1,200 reviewed_label columns read
    p = PredictionRecord
    with store.writing(), store.engine.begin() as conn:
        for label in ("cat", "dog"):
            conn.execute(update(p).where(p.id.in_([i for i in members if truth[i] == label]))
                         .values(reviewed_label=label, reviewer="ann"))
    measured = dashboard_data(store, classes=["cat", "dog"])["measured"]
    accepted_only = sum(truth[i] == "cat" for i, d in decisions.items() if d == "accept") / 4000
    # ~1,200 labelled items: the standard error of the estimate is about 1.2 points
    assert measured["n"] == len(members) and abs(measured["accuracy"] - stream_accuracy) < 0.05, measured
    assert abs(measured["accuracy"] - accepted_only) > 0.1  # what a slice of accepted answers alone would say
    assert measured["low"] < stream_accuracy < measured["high"]
    store.close()


def test_slice_page_lists_every_decision_and_coverage_warns_when_uneven(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    # a slice of ~300, as from all of the stream at 0.05, from a quarter of its rows
    _stream(store, DictImages(), rate=0.2, seed=3, part=4)
    page = ordered_queue(store, limit=500, sample=True)
    assert {item["decision"] for item in page} == {"accept", "review", "unknown"}
    assert all(item["has_image"] for item in page)
    queued = [item["id"] for item in page if item["decision"] != "accept"]
    for pid in queued:  # reviewers worked the queue: its slice members are labelled, the accepted ones are not
        store.record_label(pid, "cat", reviewer="ann")
    assert {item["decision"] for item in ordered_queue(store, limit=500, sample=True)} == {"accept"}
    coverage = slice_coverage(store.slice_counts())
    shares = {r["decision"]: r["share"] for r in coverage["by_decision"]}
    assert shares == {"accept": 0.0, "review": 1.0, "unknown": 1.0} and coverage["uneven"]
    assert coverage["labelled"] == len(queued) and coverage["n"] == len(page)
    even = slice_coverage({"accept": {"n": 10, "labelled": 5, "unlabelled_evicted": 0},
                           "review": {"n": 4, "labelled": 2, "unlabelled_evicted": 0},
                           "unknown": {"n": 0, "labelled": 0, "unlabelled_evicted": 0}})
    assert not even["uneven"] and math.isclose(even["share"], 0.5) and len(even["by_decision"]) == 2
    assert slice_coverage({}) == {"n": 0, "labelled": 0, "share": None, "by_decision": [], "uneven": False}
    store.close()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("slice"))


def test_pages_say_the_slice_is_drawn_from_all_predictions(bundle, tmp_path, memory_url):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ann = store.create_key("ann", ["review"])
    # a quarter of the stream at 4 times the rate: the slice as large (~60: 40 accepted, 15 review, 5 unknown
    # expected), and a quarter of the queued images put into the memory store (each put scans the names it holds)
    _, truth, _ = _stream(store, memory_url, rate=0.04, seed=5, part=4)
    reviewed = [r["prediction_id"] for r in store.kept_images() if r["in_slice"] and r["decision"] == "review"]
    for pid in reviewed:  # labelled from the queue; the accepted and unknown members are not
        store.record_label(pid, truth[pid], reviewer="ann")
    with serving(bundle, database_url=store.url, image_store=memory_url) as c:
        page = c.get("/ui/signin")
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        assert c.post("/ui/signin", data={"key": ann, "csrf": csrf}).status_code == 303
        dash = c.get("/ui/dashboard").text
        random_page = c.get("/ui/review", params={"slice": "random"}).text
        api = c.get("/v1/review", params={"slice": "random", "limit": 500}, headers={"X-API-Key": ann}).json()
    assert "drawn from all predictions" in dash
    coverage = dash.split('<p id="slice-coverage">')[1].split("</p>")[0]
    counts = store.slice_counts()
    n = sum(c["n"] for c in counts.values())
    assert reviewed and f"Slice: {len(reviewed)} of {n} labelled" in " ".join(coverage.split())
    assert "unevenly" in coverage
    assert "A random sample of all predictions" in random_page
    assert {item["decision"] for item in api} == {"accept", "unknown"} and len(api) == n - len(reviewed)
    store.close()
