"""The random slice (sightline/storage/images.py ImageKeeper, sightline/storage/store.py): drawn for every answered
prediction whatever its decision, so it is a uniform sample of the stream; a queued prediction drawn into it is kept
once, with its reason and the flag; the slice's review list holds members of every decision; retention never evicts a
review/unknown member or a labelled one; a database made before the `in_slice` column gets it on open, its "sample"
rows staying slice members (SQLite and PostgreSQL, a schema of its own, skipped with the reason when unreachable)."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from sightline.storage.images import ImageKeeper, LocalImageStore
from sightline.storage.store import IN_SLICE, KeptImage, Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # serve_tiny
from serve_tiny import DictImages, open_store  # noqa: E402


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    with open_store(request.param, tmp_path) as s:
        yield s


def _predictions(store: Store, decisions: list[str], label: str = "cat") -> list[int]:
    return store.add_predictions([{
        "request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "m", "model_version": "1",
        "label": label, "confidence": 0.5, "top_k": [], "decision": d, "latency_ms": 1.0,
    } for i, d in enumerate(decisions)])


class _Counting(random.Random):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return super().random()


def test_slice_is_drawn_from_every_decision_alike(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    rng = _Counting(1)
    images = DictImages()
    keeper = ImageKeeper(images, keep_accepted=0.3, rng=rng)
    decisions = ["accept", "review", "unknown"] * 1000
    ids = _predictions(store, decisions)
    kept = keeper.keep(store, ids, decisions, [i.to_bytes(4, "big") for i in range(len(ids))])
    assert rng.draws == len(ids)  # one draw per prediction, before its decision is looked at
    rows = {r["prediction_id"]: r for r in store.kept_images()}
    assert kept == len(rows) == len(images.blobs)
    by_decision = {d: [rows.get(i) for i, dd in zip(ids, decisions) if dd == d] for d in ("accept", "review",
                                                                                           "unknown")}
    # every queued image is kept, once, with its own reason; an accepted one only when drawn (reason "sample")
    assert all(r is not None and r["reason"] == d for d in ("review", "unknown") for r in by_decision[d])
    assert all(r is None or (r["reason"] == "sample" and r["in_slice"]) for r in by_decision["accept"])
    for d, found in by_decision.items():
        share = sum(r is not None and r["in_slice"] for r in found) / len(found)
        assert 0.235 <= share <= 0.365, (d, share)  # Binomial(1000, 0.3): 4.5 standard deviations
    counts = store.slice_counts()
    assert sum(c["n"] for c in counts.values()) == sum(r["in_slice"] for r in rows.values())
    assert all(counts[d]["n"] > 0 and counts[d]["labelled"] == 0 for d in counts)
    store.close()


def test_slice_lists_members_of_every_decision_and_labels_count_once(store, tmp_path):
    keeper = ImageKeeper(LocalImageStore(tmp_path / "img"), keep_accepted=1.0, retention_every_s=float("inf"))
    decisions = ["review", "unknown", "accept", "accept"]
    ids = _predictions(store, decisions)
    keeper.keep(store, ids, decisions, [b"r", b"u", b"a", b"b"])
    assert [r["id"] for r in store.review_queue(sample=True)] == ids
    assert [r["id"] for r in store.review_queue()] == ids[:2]  # the queue: queued decisions only
    store.record_label(ids[0], "dog", reviewer="ann")  # labelled from the queue: it leaves both lists
    assert [r["id"] for r in store.review_queue(sample=True)] == ids[1:]
    assert [r["id"] for r in store.review_queue()] == ids[1:2]
    assert store.slice_counts() == {"accept": {"n": 2, "labelled": 0, "unlabelled_evicted": 0},
                                    "review": {"n": 1, "labelled": 1, "unlabelled_evicted": 0},
                                    "unknown": {"n": 1, "labelled": 0, "unlabelled_evicted": 0}}


def test_retention_evicts_only_unlabelled_accepted_slice_images(store, tmp_path):
    images = LocalImageStore(tmp_path / "img")
    keeper = ImageKeeper(images, keep_accepted=1.0, max_bytes=0, retention_every_s=float("inf"))
    decisions = ["review", "unknown", "accept", "accept"]
    ids = _predictions(store, decisions)
    keeper.keep(store, ids, decisions, [b"review", b"unknown", b"labelled", b"plain"])
    assert all(r["in_slice"] for r in store.kept_images())  # all four in the slice
    store.record_label(ids[2], "dog", reviewer="ann")
    assert keeper.enforce_retention(store) == [ids[3]]  # a 0-byte budget: still only the unlabelled accepted one
    assert {r["prediction_id"] for r in store.kept_images() if r["evicted"] is None} == set(ids[:3])
    assert store.slice_counts()["accept"] == {"n": 2, "labelled": 1, "unlabelled_evicted": 1}
    assert [r["id"] for r in store.review_queue(sample=True)] == ids[:2]  # evicted: no image to show


def test_old_database_gets_the_column_and_keeps_its_samples_in_the_slice(store, tmp_path):
    ids = _predictions(store, ["accept", "review", "accept", "unknown"])
    # rows as the version before the column wrote them (it sampled accepted predictions only, reason "sample")
    store.add_kept_images([{"prediction_id": i, "sha256": f"{i:064x}", "reason": reason, "content_type": "image/jpeg",
                            "size": 1} for i, reason in zip(ids, ["sample", "review", "sample", "unknown"])])
    with store.engine.begin() as conn:  # back to that version's table
        conn.execute(text("DROP INDEX ix_kept_images_in_slice"))
        conn.execute(text("ALTER TABLE kept_images DROP COLUMN in_slice"))
    assert "in_slice" not in {c["name"] for c in inspect(store.engine).get_columns("kept_images")}
    reopened = Store(store.url)
    try:
        assert "in_slice" in {c["name"] for c in inspect(reopened.engine).get_columns("kept_images")}
        assert "ix_kept_images_in_slice" in {ix["name"] for ix in inspect(reopened.engine).get_indexes("kept_images")}
        with reopened.engine.connect() as conn:  # the backfill wrote the flag itself
            flags = dict(conn.execute(select(KeptImage.prediction_id, KeptImage.in_slice)).all())
        assert flags == {ids[0]: True, ids[1]: False, ids[2]: True, ids[3]: False}
        assert [r["id"] for r in reopened.review_queue(sample=True)] == [ids[0], ids[2]]
        # a replica still on the old version writes a "sample" row without the flag: still a member
        more = _predictions(reopened, ["accept"])
        with reopened.engine.begin() as conn:
            conn.execute(text("INSERT INTO kept_images (prediction_id, created, sha256, reason, content_type, size) "
                              "VALUES (:p, CURRENT_TIMESTAMP, :s, 'sample', 'image/jpeg', 1)"),
                         {"p": more[0], "s": "f" * 64})
        with reopened.engine.connect() as conn:
            members = set(conn.scalars(select(KeptImage.prediction_id).where(IN_SLICE)))
        assert members == {ids[0], ids[2], more[0]}
    finally:
        reopened.close()
    again = Store(store.url)  # opening it again changes nothing
    assert again.slice_counts()["accept"]["n"] == 3
    again.close()
