"""The review page shows at most 50 items and says how many wait in all ("50 of 59 waiting; ... reload for the
next"), so a reviewer who labels the 50 does not take the queue for done; with everything on the page it adds
nothing. The count is one COUNT with the queue's own filter (SQLite reads it from ix_predictions_queue alone) and
agrees with the store's own list of the queue and of the random slice, on SQLite and PostgreSQL."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from sqlalchemy import event, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import make_bundle, open_store, serving

from sightline.storage.store import Store


def _add(store: Store, decisions: list[str]) -> list[int]:
    rows = [{"request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "pets",
             "model_version": "1", "label": "cat", "confidence": 0.3 + i / 1000,
             "top_k": [{"label": "cat", "confidence": 0.3 + i / 1000}], "decision": d, "latency_ms": 1.0}
            for i, d in enumerate(decisions)]
    return store.add_predictions(rows)


def _keep(store: Store, ids: list[int], *, in_slice: bool = True, evicted: bool = False) -> None:
    from datetime import datetime, timezone

    store.add_kept_images([{"prediction_id": i, "sha256": "0" * 64, "reason": "review", "content_type": "image/jpeg",
                            "size": 1, "in_slice": in_slice, "evicted": datetime.now(timezone.utc) if evicted else None}
                           for i in ids])


def _text(page: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def test_the_review_page_says_how_many_wait_beyond_the_fifty_shown(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ann = store.create_key("ann", ["review"])
    ids = _add(store, ["review"] * 57 + ["unknown"] * 5 + ["accept"] * 6)
    for pid in ids[:3]:  # labelled: no longer waiting
        store.record_label(pid, "cat", reviewer="ann")
    _keep(store, ids[-4:])  # the random slice: 4 accepted predictions, all on its page
    with serving(make_bundle(tmp_path), database_url=store.url) as c:
        page = c.get("/ui/signin")
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        assert c.post("/ui/signin", data={"key": ann, "csrf": csrf}).status_code == 303
        full = c.get("/ui/review")
        sample = c.get("/ui/review", params={"slice": "random"}).text
        for pid in ids[3:52]:  # a reviewer labels the 50 shown, less one, then reloads
            store.record_label(pid, "cat", reviewer="ann")
        rest = c.get("/ui/review").text
    assert full.status_code == 200 and full.text.count('<li class="item"') == 50
    assert "50 of 59 waiting; label these, then reload for the next." in _text(full.text)
    assert "script-src 'self'" in full.headers["content-security-policy"]  # unchanged: nothing inline
    assert "style=" not in full.text and not re.search(r"<script(?![^>]*\bsrc=)", full.text)
    assert sample.count('<li class="item"') == 4 and 'id="queue-count"' not in sample
    assert rest.count('<li class="item"') == 10 and "(10 shown" in rest and 'id="queue-count"' not in rest
    store.close()


def test_the_count_follows_the_labels_given_on_the_page_in_chromium(tmp_path):
    """The count was the one the page was loaded with: labelling 50 items still read '50 of 59 waiting'."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from in_chromium import chromium_page

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ann = store.create_key("ann", ["review"])
    _add(store, ["review"] * 59)
    with serving(make_bundle(tmp_path), database_url=store.url) as c, chromium_page() as (page, errors):
        base = str(c.base_url).rstrip("/")
        page.goto(f"{base}/ui/signin")
        page.fill("input[name=key]", ann)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/ui/review")
        count = page.locator("#queue-count")
        assert " ".join(count.inner_text().split()) == "50 of 59 waiting; label these, then reload for the next."
        for _ in range(2):
            pid = page.locator("li.item.current").get_attribute("data-id")
            page.keyboard.press("1")
            page.wait_for_selector(f"li.item.done[data-id='{pid}']")
        assert count.inner_text() == "48 of 57 waiting; label these, then reload for the next."
        page.keyboard.press("z")
        page.wait_for_selector(f"li.item.current[data-id='{pid}']:not(.done)")
        assert count.inner_text() == "49 of 58 waiting; label these, then reload for the next."
        assert errors == []
    assert store.review_count() == 58
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_review_count_is_what_the_store_lists(kind, tmp_path):
    with open_store(kind, tmp_path) as store:
        ids = _add(store, ["review", "unknown", "accept"] * 4)
        store.record_label(ids[0], "cat", reviewer="ann")  # a labelled review and a labelled accepted prediction
        store.record_label(ids[2], "cat", reviewer="ann")
        _keep(store, ids[:6])  # in the slice, two of them labelled
        _keep(store, ids[6:8], evicted=True)  # in the slice, the image gone: not on the page
        _keep(store, ids[8:10], in_slice=False)  # kept for review only
        seen: list[str] = []

        def record(conn, cursor, statement, *args) -> None:
            seen.append(statement)

        event.listen(store.engine, "before_cursor_execute", record)
        assert store.review_count() == 7
        event.remove(store.engine, "before_cursor_execute", record)
        assert len(store.review_queue(limit=500)) == 7
        assert store.review_count(sample=True) == len(store.review_queue(limit=500, sample=True)) == 4
        if kind == "sqlite":  # one pass over the partial index, not over the table
            with store.engine.connect() as conn:
                plan = " ".join(r[-1] for r in conn.execute(text(f"EXPLAIN QUERY PLAN {seen[-1]}")))
            assert len(seen) == 1 and "ix_predictions_queue" in plan, (seen, plan)
