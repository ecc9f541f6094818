"""Kept images (sightline/serve/images.py): a content-addressed store that keeps bytes as received, the rule
(every review/unknown image, a random sample of accepted ones, flagged), retention that only ever evicts
unlabelled samples, and GET /v1/review/{id}/image for reviewers, against uvicorn."""
from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta, timezone

import pytest
from serve_tiny import encode, make_bundle, open_store, photo, predict, serving

from sightline.storage.images import ImageKeeper, LocalImageStore, content_type
from sightline.storage.store import Store


def test_local_store_content_addressed_atomic_and_deduplicated(tmp_path):
    images = LocalImageStore(tmp_path / "img")
    blob = encode(photo(0))
    sha = images.put(blob)
    assert sha == hashlib.sha256(blob).hexdigest()
    assert images.path(sha) == tmp_path / "img" / sha[:2] / sha[2:4] / sha
    assert images.get(sha) == blob and images.exists(sha) and images.size(sha) == len(blob)
    assert images.put(blob) == sha
    files = [p for p in (tmp_path / "img").rglob("*") if p.is_file()]
    assert files == [images.path(sha)]  # once, and no temporary file left behind
    assert images.delete(sha) and not images.exists(sha) and images.get(sha) is None and images.size(sha) is None
    assert not images.delete(sha)
    with pytest.raises(ValueError, match="not a sha256"):
        images.path("../../etc/passwd")
    assert content_type(encode(photo(), "PNG")) == "image/png" and content_type(blob) == "image/jpeg"
    assert content_type(encode(photo(), "WEBP")) == "image/webp" and content_type(b"text") == "application/octet-stream"


def _predictions(store: Store, decisions: list[str]) -> list[int]:
    return store.add_predictions([{
        "request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "m", "model_version": "1",
        "label": "cat", "confidence": 0.5, "top_k": [], "decision": d, "latency_ms": 1.0,
    } for i, d in enumerate(decisions)])


def test_keeps_review_unknown_and_a_flagged_sample_of_accepts(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    keeper = ImageKeeper(LocalImageStore(tmp_path / "img"), keep_accepted=0.03, rng=random.Random(0))
    decisions = ["review", "unknown"] + ["accept"] * 2000
    ids = _predictions(store, decisions)
    blobs = [i.to_bytes(4, "big") + b"image" for i in range(len(ids))]
    kept = keeper.keep(store, ids, decisions, blobs)
    rows = store.kept_images()
    assert kept == len(rows)
    assert [(r["prediction_id"], r["reason"]) for r in rows[:2]] == [(ids[0], "review"), (ids[1], "unknown")]
    samples = [r for r in rows if r["reason"] == "sample"]
    assert all(r["decision"] == "accept" for r in samples)
    assert 30 <= len(samples) <= 95  # Binomial(2000, 0.03): mean 60, sd 7.6
    for r in rows:
        assert keeper.read(store, r["prediction_id"]) == (blobs[ids.index(r["prediction_id"])],
                                                          "application/octet-stream")
    store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    with open_store(request.param, tmp_path) as s:
        yield s


def test_retention_evicts_only_unlabelled_samples(store, tmp_path):
    images = LocalImageStore(tmp_path / "img")
    keeper = ImageKeeper(images, keep_accepted=1.0, retention_every_s=float("inf"))  # retention when asked
    decisions = ["review", "unknown", "accept", "accept", "accept", "accept"]
    ids = _predictions(store, decisions)
    blobs = [b"review", b"unknown", b"labelled sample", b"old sample", b"new sample", b"review"]  # last: 1st's bytes
    keeper.keep(store, ids, decisions, blobs)
    store.record_label(ids[2], "dog", reviewer="ann")
    # age out the "old sample" and the "shared" one: pretend they were kept 40 days ago
    old = datetime.now(timezone.utc) + timedelta(days=40)
    keeper.max_age_days = 30
    assert keeper.enforce_retention(store, now=old) == [ids[3], ids[4], ids[5]]  # every unlabelled sample is old
    # the shared bytes stay: the review item (never evicted) still needs them
    assert images.exists(hashlib.sha256(b"review").hexdigest())
    assert not images.exists(hashlib.sha256(b"old sample").hexdigest())
    live = {r["prediction_id"] for r in store.kept_images() if r["evicted"] is None}
    assert live == {ids[0], ids[1], ids[2]}
    assert keeper.read(store, ids[3]) is None and keeper.read(store, ids[2]) == (b"labelled sample",
                                                                                 "application/octet-stream")
    # by size: even a 0-byte budget never touches review/unknown/labelled items
    more = _predictions(store, ["accept", "accept"])
    keeper.max_age_days, keeper.max_bytes = None, 0
    keeper.keep(store, more, ["accept", "accept"], [b"a" * 10, b"b" * 10])
    assert keeper.enforce_retention(store) == more
    assert {r["prediction_id"] for r in store.kept_images() if r["evicted"] is None} == live
    assert all(images.exists(hashlib.sha256(b).hexdigest()) for b in (b"review", b"unknown", b"labelled sample"))
    # a budget that fits keeps the newest samples and evicts the oldest first
    newer = _predictions(store, ["accept"] * 3)
    keeper.max_bytes = sum(len(b) for b in (b"review", b"unknown", b"labelled sample")) + 20
    keeper.keep(store, newer, ["accept"] * 3, [b"x" * 10, b"y" * 10, b"z" * 10])
    assert keeper.enforce_retention(store) == [newer[0]]
    keeper.retention_every_s = 0  # as the service runs it: keep() applies retention itself
    last = _predictions(store, ["accept"])
    keeper.keep(store, last, ["accept"], [b"w" * 10])
    assert store.kept_image(newer[1])["evicted"] is not None and store.kept_image(last[0])["evicted"] is None


def test_retention_keeps_a_file_kept_again_meanwhile_and_a_failed_write_never_fails(store, tmp_path):
    images = LocalImageStore(tmp_path / "img")
    keeper = ImageKeeper(images, keep_accepted=1.0, max_bytes=0, retention_every_s=float("inf"))
    first = _predictions(store, ["accept"])
    keeper.keep(store, first, ["accept"], [b"same bytes"])

    class Racing:  # a request keeps the same bytes again between retention's read and its delete
        def __getattr__(self, name):
            return getattr(store, name)

        def mark_evicted(self, ids):
            marked = store.mark_evicted(ids)
            store.add_kept_images([{"prediction_id": _predictions(store, ["review"])[0], "sha256": sha,
                                    "reason": "review", "content_type": "application/octet-stream", "size": 10}])
            return marked

    sha = hashlib.sha256(b"same bytes").hexdigest()
    assert keeper.enforce_retention(Racing()) == first and images.exists(sha)
    blocked = ImageKeeper(LocalImageStore(tmp_path / "a-file"), keep_accepted=1.0)
    (tmp_path / "a-file").write_text("not a folder")
    assert blocked.keep(store, _predictions(store, ["review"]), ["review"], [b"x"]) == 0  # logged, not raised


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("images"))


def test_review_images_served_as_received_to_reviewers_only(bundle):
    store = Store(f"sqlite:///{bundle / 'sightline.db'}")
    client_key, reviewer_key = store.create_key("client"), store.create_key("ann", ["review"])
    jpeg, png = encode(photo(5)), encode(photo(6), "PNG")
    with serving(bundle, keep_accepted=0.0) as c:  # review_confidence 0.99: every answer goes to review
        preds = predict(c, client_key, [jpeg, png, jpeg]).json()["predictions"]
        assert [p["decision"] for p in preds] == ["review"] * 3
        for p, blob, kind in zip(preds, [jpeg, png, jpeg], ["image/jpeg", "image/png", "image/jpeg"]):
            r = c.get(f"/v1/review/{p['id']}/image", headers={"X-API-Key": reviewer_key})
            assert r.status_code == 200 and r.content == blob and r.headers["content-type"] == kind
            assert r.headers["x-content-type-options"] == "nosniff"
        assert c.get(f"/v1/review/{preds[0]['id']}/image", headers={"X-API-Key": client_key}).status_code == 403
        assert c.get("/v1/review/999999/image", headers={"X-API-Key": reviewer_key}).status_code == 404
    files = [p for p in (bundle / "images").rglob("*") if p.is_file()]
    assert sorted(f.name for f in files) == sorted({hashlib.sha256(b).hexdigest() for b in (jpeg, png)})  # dedup
    store.close()


def test_accepted_images_sampled_into_the_store(bundle, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    key = store.create_key("client")
    blobs = [encode(photo(10 + i)) for i in range(4)]
    reviewer = store.create_key("ann", ["review"])
    with serving(bundle, review_confidence=0.0, keep_accepted=1.0, database_url=store.url,
                 image_store=tmp_path / "kept") as c:
        preds = predict(c, key, blobs).json()["predictions"]
        h = {"X-API-Key": reviewer}
        assert c.get("/v1/review", headers=h).json() == []  # accepted: not in the queue ...
        sampled = c.get("/v1/review", params={"slice": "random"}, headers=h).json()
        assert [x["id"] for x in sampled] == [p["id"] for p in preds]  # ... but in the random slice
        assert c.post(f"/v1/review/{preds[0]['id']}", json={"label": "dog"}, headers=h).status_code == 200
        sampled = c.get("/v1/review", params={"slice": "random"}, headers=h).json()
        assert [x["id"] for x in sampled] == [p["id"] for p in preds[1:]]
        assert c.get("/v1/review", params={"slice": "all"}, headers=h).status_code == 422
    assert [p["decision"] for p in preds] == ["accept"] * 4
    rows = store.kept_images()
    assert [(r["prediction_id"], r["reason"]) for r in rows] == [(p["id"], "sample") for p in preds]
    assert [LocalImageStore(tmp_path / "kept").get(r["sha256"]) for r in rows] == blobs
    store.close()
