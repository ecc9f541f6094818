"""Alert acknowledgement by a person, through the API (POST /v1/monitor/alerts/{name}/ack) and the dashboard's
form: the key's name is recorded (never a client field), the acknowledgement survives a restart and is dropped when
the alert clears; unknown names, quiet alerts, a second acknowledgement, missing roles and forged forms are refused
in one line with nothing written. The dashboard's class mix chart and confusion table over plain HTTP."""
from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import CLASSES, make_bundle, serving

from sightline.monitor.alerts import AlertState
from sightline.storage.store import Store


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("dash"))


def _count(store: Store, name: str, verdicts) -> None:
    """Count windows in alert `name` the way the monitor does (one locked read-modify-write each)."""
    for significant in verdicts:
        def change(current):
            state = AlertState.from_json(current) if current else AlertState(name=name)
            state.update(window_id=(state.last_window or 0) + 1, significant=significant)
            return state.to_json()

        store.update_alert(name, change)


def _signin(c, key: str) -> str:
    page = c.get("/ui/signin")
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    assert c.post("/ui/signin", data={"key": key, "csrf": csrf}).status_code == 303
    return c.get("/ui/dashboard").text.split('name="csrf" value="')[1].split('"')[0]


def test_acknowledge_through_the_api_persists_across_a_restart_and_ends_when_the_alert_clears(bundle, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    client, ann, bob = store.create_key("client"), store.create_key("ann", ["review"]), store.create_key("bob", ["review"])
    _count(store, "drift", [True, True])  # raised
    _count(store, "drift_hour", [True, True])
    _count(store, "drift_day", [True])  # one significant window: not raised
    before = store.alert_states()
    url = "/v1/monitor/alerts/{}/ack"
    with serving(bundle, database_url=store.url) as c:
        assert c.post(url.format("drift")).status_code == 401
        r = c.post(url.format("drift"), headers={"X-API-Key": client})
        assert r.status_code == 403 and "'review' role" in r.json()["detail"]
        r = c.post(url.format("nope"), headers={"X-API-Key": ann})
        assert r.status_code == 404 and r.json()["detail"] == "no alert named 'nope'; GET /v1/monitor lists the alerts."
        r = c.post(url.format("drift_day"), headers={"X-API-Key": ann})
        assert r.status_code == 409 and "not raised" in r.json()["detail"]
        r = c.post(url.format("drift_hour"), headers={"X-API-Key": ann}, json={"note": "x" * 501})
        assert r.status_code == 400 and "\n" not in r.json()["detail"] and "500" in r.json()["detail"]
        assert store.alert_states() == before  # nothing written by a refusal, no row for the unknown name
        t0 = datetime.now(timezone.utc)
        r = c.post(url.format("drift"), headers={"X-API-Key": ann}, json={"note": " seen ", "by": "mallory"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == "drift" and body["active"] is True
        ack = body["acknowledged"]
        assert ack["by"] == "ann" and ack["note"] == "seen"  # the key's name; the body's 'by' is ignored
        assert t0 - timedelta(seconds=2) <= datetime.fromisoformat(ack["at"]) <= datetime.now(timezone.utc)
        r = c.post(url.format("drift"), headers={"X-API-Key": bob})
        assert r.status_code == 409 and "acknowledged already by ann" in r.json()["detail"]
        r = c.post(url.format("drift_hour"), headers={"X-API-Key": bob})  # no body: no note
        assert r.status_code == 200 and r.json()["acknowledged"]["note"] == ""
    assert store.alert_states()["drift"]["acknowledged"] == ack
    with serving(bundle, database_url=store.url) as c:  # a restart keeps it
        csrf = _signin(c, bob)
        dash = c.get("/ui/dashboard").text
        assert f"acknowledged by ann at {ack['at']}</span>: <q>seen</q>" in dash
        assert 'action="/ui/alerts/drift/ack"' not in dash and 'action="/ui/alerts/drift_day/ack"' not in dash
        _count(store, "drift", [False, False])  # the monitor clears it: the acknowledgement goes with it
        assert store.alert_states()["drift"]["acknowledged"] is None
        dash = c.get("/ui/dashboard").text
        row = dash.split('data-alert="drift"')[1].split("</tr>")[0]
        assert "<td>cleared</td>" in row and "acknowledged by" not in row
        _count(store, "drift", [True, True])  # raised again: a person must look again
        assert 'action="/ui/alerts/drift/ack"' in c.get("/ui/dashboard").text
        assert c.post("/ui/alerts/drift/ack", data={"note": "n"}).status_code == 403  # no CSRF token
        assert c.post("/ui/alerts/drift/ack", data={"csrf": "forged"}).status_code == 403
        assert store.alert_states()["drift"]["acknowledged"] is None
        r = c.post("/ui/alerts/drift/ack", data={"csrf": csrf, "note": "on it", "by": "mallory"},
                   follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/dashboard#alerts"
        assert store.alert_states()["drift"]["acknowledged"]["by"] == "bob"
        assert store.alert_states()["drift"]["acknowledged"]["note"] == "on it"
        r = c.post("/ui/alerts/drift/ack", data={"csrf": csrf})
        assert r.status_code == 409 and r.text == (f"alert 'drift' was acknowledged already by bob at "
                                                   f"{store.alert_states()['drift']['acknowledged']['at']}.")
        assert c.post("/ui/alerts/gone/ack", data={"csrf": csrf}).status_code == 404
        c.cookies.clear()
        r = c.post("/ui/alerts/drift_day/ack", data={"csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/signin"
    assert store.alert_states()["drift_day"]["acknowledged"] is None
    store.close()


def test_dashboard_class_mix_and_confusion_over_http(bundle, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ann = store.create_key("ann", ["review"])
    predicted = ["cat"] * 6 + ["dog"] * 3 + ["fox"]
    ids = store.add_predictions([{
        "request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "pets",
        "model_version": "1", "label": p, "confidence": 0.8, "top_k": [], "decision": "accept", "latency_ms": 1.0}
        for i, p in enumerate(predicted)])
    store.add_kept_images([{"prediction_id": i, "sha256": f"{i:064x}", "reason": "sample",
                            "content_type": "image/jpeg", "size": 1} for i in ids[:2] + ids[6:8]])
    for i, label in zip(ids[:2] + ids[6:8], ["cat", "fox", "dog", "dog"]):
        store.record_label(i, label, reviewer="ann")
    with serving(bundle, database_url=store.url, monitor_window=4, monitor_min_window=2) as c:
        _signin(c, ann)
        dash = c.get("/ui/dashboard").text
    svg = dash.split('<svg id="classmix"')[1].split("</svg>")[0]
    bars = svg.split("<g ")[1:]
    assert len(bars) == 3  # blocks of 4: 1-4, 5-8, 9-10 (still filling)
    assert "1-4 (4 predictions): cat 100 %" in bars[0] and "5-8 (4 predictions): cat 50 %, dog 50 %" in bars[1]
    assert 'class="partial"' in bars[2] and "9-10 (2 predictions, still filling): dog 50 %, fox 50 %" in bars[2]
    assert bars[1].count('<rect class="c0"') == 1 and bars[1].count('<rect class="c1"') == 1
    table = dash.split('<table id="confusion"')[1].split("</table>")[0]
    cells = [[cell.split(">")[-1] for cell in row.split("</td>")[:-1]] for row in table.split("<tr>")[2:]]
    assert cells == [["1", "0", "0"], ["0", "2", "0"], ["1", "0", "0"]]  # rows: reviewer cat, dog, fox
    assert '<p class="big">75.0 %</p>' in dash
    assert "<tr><td>fox</td><td>1</td><td>0</td><td>0</td><td>0</td><td>1</td><td>-</td><td>0.0 %</td></tr>" in dash
    assert "No alert has been raised." in dash
    store.close()


def test_an_existing_database_gets_the_queue_and_dashboard_indexes(tmp_path):
    from sqlalchemy import inspect, text

    from sightline.serve.web.queue import candidates

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with store.engine.begin() as conn:  # as a database made before these indexes were declared
        conn.execute(text("DROP INDEX ix_predictions_queue"))
        conn.execute(text("DROP INDEX ix_predictions_label"))
    store.close()
    store = Store(store.url)
    names = {ix["name"] for ix in inspect(store.engine).get_indexes("predictions")}
    assert {"ix_predictions_queue", "ix_predictions_label"} <= names
    Store(store.url).close()  # opening again: a no-op, no error
    with store.engine.connect() as conn:
        sql = str(candidates(limit=200).compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True}))
        plan = " ".join(r[-1] for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
    assert "ix_predictions_queue" in plan and "TEMP B-TREE" not in plan, plan  # read in order, no sort
    store.close()
