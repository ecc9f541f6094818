"""/readyz says whether the database takes writes, not only whether it answers a read: a replica whose SQLite file
is write-locked by another process (or whose PostgreSQL is read-only) answers every predict with a 503, and a load
balancer should send its traffic elsewhere."""
from __future__ import annotations

import sqlite3
import time

from serve_tiny import make_bundle, open_store, serving


def test_ready_is_503_while_another_process_holds_the_write_lock(tmp_path):
    """It read `SELECT 1` only: 200 'ready' while every predict waited 30 s and answered 503."""
    bundle = make_bundle(tmp_path)
    db = tmp_path / "db.sqlite"
    with serving(bundle, database_url=f"sqlite:///{db}") as c:
        assert c.get("/readyz").json()["checks"] == {"model": True, "database": True, "database_writable": True}
        other = sqlite3.connect(db, isolation_level=None)  # another process's writer, mid-transaction
        try:
            other.execute("BEGIN IMMEDIATE")
            t0 = time.monotonic()
            r = c.get("/readyz")
            assert time.monotonic() - t0 < 2  # a probe's timeout, not the writes' 30 s
            assert r.status_code == 503, r.text
            assert r.json()["status"] == "not ready"
            assert r.json()["checks"] == {"model": True, "database": True, "database_writable": False}
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert c.get("/readyz").status_code == 200
        assert c.head("/readyz").status_code == 200


def test_writable_reads_postgresql_read_only_without_writing(tmp_path):
    """PostgreSQL: a standby or default_transaction_read_only refuses every INSERT; writers never lock it out."""
    from sqlalchemy import event

    with open_store("postgresql", tmp_path) as store:
        assert store.writable()

        def read_only(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("SET default_transaction_read_only = on")
            cur.close()
            dbapi_conn.commit()  # a SET in a transaction rolled back is undone

        event.listen(store.engine, "connect", read_only)
        store.engine.dispose()
        assert store.ping() and not store.writable()
        event.remove(store.engine, "connect", read_only)
        store.engine.dispose()


def test_writable_waits_for_this_process_s_own_writer(tmp_path):
    """This process's own writes (serialised by the store's lock) are waited for, not taken as another writer."""
    import threading

    with open_store("sqlite", tmp_path) as store:
        got = []
        with store.writing():
            t = threading.Thread(target=lambda: got.append(store.writable()))
            t.start()
            time.sleep(0.1)
        t.join()
        assert got == [True]
