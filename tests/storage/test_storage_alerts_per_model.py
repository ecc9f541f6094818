"""Alert state is kept per (name, profile): each model counts its own windows into its own rows, replicas of one
model share them. A monitor_alerts made the old way (keyed by name alone, with or without the profile / model
columns, rows in it) is upgraded as Store opens it: every row kept, a row that recorded no model gets NO_PROFILE,
twice is a no-op, two processes opening it at once upgrade it once. SQLite and PostgreSQL (a schema of its own;
skipped with the reason when it is not reachable)."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import fresh_database

from sightline.monitor.alerts import AlertState
from sightline.storage.store import NO_PROFILE, Store

A, B = "a" * 16, "b" * 16


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _count(significant: bool):
    def change(current):
        state = AlertState.from_json(current) if current else AlertState(name="drift")
        state.update(window_id=(state.last_window or 0) + 1, significant=significant)
        return state.to_json()

    return change


def _old_table(url: str, *, model_columns: bool, others: bool = True) -> dict:
    """A database whose monitor_alerts an earlier version made (primary key `name`), with a raised alert in it (with
    `others`, the other tables as now: two stores opening it race on the alerts' upgrade only; without, the alerts'
    table alone); the alert's state."""
    from sightline.storage.store import Base

    engine = sa.create_engine(url)
    if others:
        Base.metadata.create_all(engine, tables=[t for t in Base.metadata.sorted_tables if t.name != "monitor_alerts"])
    stamp = "TIMESTAMP WITH TIME ZONE" if engine.dialect.name == "postgresql" else "DATETIME"
    extra = ", profile VARCHAR(16), model_name VARCHAR(200), model_version VARCHAR(100)" if model_columns else ""
    state = AlertState(name="drift", active=True, fired_at=2, last_window=2, significant_streak=2, sequence=1)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE monitor_alerts (name VARCHAR(64) NOT NULL PRIMARY KEY, "
                             f"state JSON NOT NULL, updated {stamp} NOT NULL{extra})"))
        conn.execute(sa.text("INSERT INTO monitor_alerts (name, state, updated) VALUES (:n, :s, CURRENT_TIMESTAMP)"),
                     {"n": "drift", "s": json.dumps(state.to_json())})
        if model_columns:  # a row written since the columns came: it names its model
            conn.execute(sa.text("INSERT INTO monitor_alerts VALUES ('drift_day', :s, CURRENT_TIMESTAMP, :p, "
                                 "'pets', '2')"), {"s": json.dumps({"name": "drift_day"}), "p": A})
    engine.dispose()
    return state.to_json()


def test_an_alerts_table_alone_from_before_the_columns_opens_and_its_row_is_never_counted_into(url):
    """monitor_alerts made without profile / model_name / model_version, and no other table (an earlier version):
    Store adds them, the alert reads as before, and a model counting windows counts into a row of its own."""
    old = _old_table(url, model_columns=False, others=False)
    for _ in range(2):  # the second open finds the columns there
        store = Store(url)
        try:
            assert store.alert_states() == {"drift": old}
            assert [(r["name"], r["profile"], r["model"]) for r in store.alert_rows()] == [("drift", None, None)]
        finally:
            store.close()
    store = Store(url)
    try:
        store.update_alert("drift", _count(False), model={"profile": A, "name": "pets", "version": "1"})
        # still raised and not counted into: who raised it is not known, the model counts in a row of its own
        assert store.alert_states()["drift"] == old
        assert store.alert_states(A)["drift"]["clean_streak"] == 1
    finally:
        store.close()


def _key(store: Store) -> list[str]:
    return sa.inspect(store.engine).get_pk_constraint("monitor_alerts")["constrained_columns"]


def test_each_model_counts_its_own_rows_and_replicas_share_them(url):
    store = Store(url)
    try:
        for model in ({"profile": A, "name": "pets", "version": "2"}, {"profile": B, "name": "pets", "version": "1"},
                      {"profile": A, "name": "pets", "version": "2"}):  # the third: a replica of the first
            store.update_alert("drift", _count(True), model=model)
        assert store.alert_states(A)["drift"]["last_window"] == 2 and store.alert_states(A)["drift"]["active"]
        assert store.alert_states(B)["drift"]["last_window"] == 1 and not store.alert_states(B)["drift"]["active"]
        assert store.alert_states() == {}  # no row without a model
        assert [(r["name"], r["profile"]) for r in store.alert_rows()] == [("drift", A), ("drift", B)]
    finally:
        store.close()


@pytest.mark.parametrize("model_columns", [False, True], ids=["before-columns", "with-columns"])
def test_an_old_table_is_upgraded_on_open_keeping_every_row(url, model_columns):
    old = _old_table(url, model_columns=model_columns)
    for _ in range(2):  # the second open finds it done
        store = Store(url)
        try:
            assert _key(store) == ["name", "profile"]
            rows = {r["name"]: r for r in store.alert_rows()}
            assert rows["drift"]["profile"] is None and rows["drift"]["state"] == old  # kept, "not recorded"
            assert store.alert_states(NO_PROFILE) == {"drift": old}
            if model_columns:
                assert rows["drift_day"]["profile"] == A and rows["drift_day"]["model"] == {"name": "pets",
                                                                                            "version": "2"}
        finally:
            store.close()
    store = Store(url)
    try:  # a model counts into a row of its own; the old row is shown, never counted into
        store.update_alert("drift", _count(False), model={"profile": B, "name": "pets", "version": "1"})
        assert store.alert_states(NO_PROFILE)["drift"] == old and store.alert_states(B)["drift"]["last_window"] == 1
    finally:
        store.close()


def test_two_processes_opening_an_old_database_at_once_upgrade_it_once(url):
    old = _old_table(url, model_columns=True)
    errors, stores = [], []

    def open_it():
        try:
            stores.append(Store(url))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(2)]  # two Store objects: two engines, as processes
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == [] and len(stores) == 2
        assert _key(stores[0]) == ["name", "profile"]
        assert stores[1].alert_states() == {"drift": old} and len(stores[1].alert_rows()) == 2
    finally:
        for s in stores:
            s.close()


def test_stores_opening_a_new_database_at_once_all_open_it(url):
    """Replicas starting together (or a CLI command beside the service) on a new database: each Store creates the
    tables; the losers of the race on CREATE TABLE failed ("table api_keys already exists", "database is locked";
    on PostgreSQL an IntegrityError traceback on a duplicate pg_type row), four stores at once every time."""
    errors: list[str] = []
    barrier = threading.Barrier(4)

    def open_it() -> None:
        try:
            barrier.wait()
            Store(url).close()
        except Exception as exc:  # noqa: BLE001 - any failure is what the test reports
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    store = Store(url)
    try:
        assert _key(store) == ["name", "profile"] and store.alert_rows() == []
    finally:
        store.close()
