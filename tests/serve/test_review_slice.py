"""GET /v1/review?slice=random through the service (sightline/serve/routes/review.py): the random slice is drawn from
every answered prediction, so queued (review) answers are in it too, kept once; at rate 0 the slice is empty while
the queue still holds them."""
from __future__ import annotations

import hashlib

import pytest
from serve_tiny import encode, make_bundle, photo, predict, serving

from sightline.storage.store import Store


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("review-slice"))  # never confident: every answer is "review"


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_queued_answers_are_drawn_into_the_slice_too(bundle, tmp_path, rate):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    key = store.create_key("ops", ["predict", "review"])
    blobs = [encode(photo(30 + i)) for i in range(3)]
    with serving(bundle, database_url=store.url, image_store=tmp_path / "kept", keep_accepted=rate) as c:
        answers = predict(c, key, blobs).json()["predictions"]
        h = {"X-API-Key": key}
        queue = c.get("/v1/review", headers=h).json()
        in_slice = c.get("/v1/review", params={"slice": "random"}, headers=h).json()
    assert [a["decision"] for a in answers] == ["review"] * 3
    assert [x["id"] for x in queue] == [a["id"] for a in answers]
    assert [x["id"] for x in in_slice] == ([a["id"] for a in answers] if rate else [])
    rows = store.kept_images()  # every review image kept once, flagged when drawn
    assert [(r["prediction_id"], r["reason"], r["in_slice"]) for r in rows] == [
        (a["id"], "review", bool(rate)) for a in answers]
    assert [r["sha256"] for r in rows] == [hashlib.sha256(b).hexdigest() for b in blobs]
    store.close()
