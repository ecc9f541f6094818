"""A predict request is stored whole or not at all: its prediction rows and its kept-image rows in one transaction,
so a 503 stored nothing (and its retry stores it once) and a 200 stored everything."""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager

import pytest
from serve_tiny import encode, fresh_database, make_bundle, photo, predict, serving

JPEG = encode(photo(3, 40, 32), "JPEG")


@contextmanager
def kept_images_insert_fails():
    """Every INSERT INTO kept_images fails as a database locked by another writer does (any engine)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.exc import OperationalError

    def fail(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO KEPT_IMAGES"):
            raise OperationalError(statement, parameters, sqlite3.OperationalError("database is locked"))

    event.listen(Engine, "before_cursor_execute", fail)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", fail)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_503_stores_nothing_and_its_retry_stores_once(tmp_path, kind):
    """The kept-image rows were written in a second transaction: when it failed (the database locked or gone
    between the two), the client got a 503 for predictions already stored, and its retry stored them twice."""
    from sightline.storage.store import Store

    bundle = make_bundle(tmp_path)
    with fresh_database(kind, tmp_path) as url:
        store = Store(url)
        key = store.create_key("p", ["predict"])
        try:
            with serving(bundle, database_url=url, keep_accepted=1.0, image_store=tmp_path / "images") as client:
                with kept_images_insert_fails():
                    r = predict(client, key, [JPEG, JPEG])
                assert r.status_code == 503, r.text
                assert "locked" in r.json()["detail"]
                assert store.count_predictions() == 0  # the 503 is honest: nothing of the request was stored
                assert store.kept_images() == []
                r = predict(client, key, [JPEG, JPEG])  # the client's retry
                assert r.status_code == 200, r.text
                ids = [p["id"] for p in r.json()["predictions"]]
                assert store.count_predictions() == 2
                assert sorted(k["prediction_id"] for k in store.kept_images()) == sorted(ids)
        finally:
            store.close()
