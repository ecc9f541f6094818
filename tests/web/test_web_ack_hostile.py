"""An acknowledgement note that is not text: refused in one line with nothing written, on SQLite and PostgreSQL,
and the monitor's answers and the dashboard keep working."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import fresh_database, make_bundle, serving
from test_web_dashboard import _count, _profiled, _signin

from sightline.storage.store import Store


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("ackhostile"))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_note_with_half_a_surrogate_pair_is_refused_and_nothing_breaks(bundle, tmp_path, kind):
    """JSON can carry "\\ud800" (half of a UTF-16 surrogate pair): the note was stored with the alert, the ack
    answered 500, and from then on every GET /v1/monitor and every dashboard load was a 500 too."""
    served, fp = _profiled(bundle, tmp_path)
    with fresh_database(kind, tmp_path) as url:
        store = Store(url)
        ann = store.create_key("ann", ["review"])
        _count(store, "drift", [True, True], {"profile": fp, "name": "pets", "version": "1"})  # raised
        with serving(served, database_url=store.url, monitor=True, monitor_calendar="") as c:
            before = store.alert_states(fp)["drift"].get("acknowledged")
            r = c.post("/v1/monitor/alerts/drift/ack", content=b'{"note": "seen \\ud800 it"}',
                       headers={"X-API-Key": ann, "Content-Type": "application/json"})
            assert r.status_code == 400, r.text
            detail = r.json()["detail"]
            assert "\n" not in detail and "character 6" in detail and "UTF-8 text" in detail, detail
            assert store.alert_states(fp)["drift"].get("acknowledged") == before is None  # nothing written
            assert c.get("/v1/monitor", headers={"X-API-Key": ann}).status_code == 200
            _signin(c, ann)
            assert c.get("/ui/dashboard").status_code == 200
            r = c.post("/v1/monitor/alerts/drift/ack", json={"note": "seen é"}, headers={"X-API-Key": ann})
            assert r.status_code == 200 and r.json()["acknowledged"]["note"] == "seen é", r.text
        store.close()


def test_a_note_stored_before_the_check_is_shown_not_a_500(bundle, tmp_path):
    """A database that already holds such a note (written before it was refused): every GET /v1/monitor and every
    dashboard load was a 500. The half pair is shown as U+FFFD."""
    from sightline.monitor.alerts import AlertState

    served, fp = _profiled(bundle, tmp_path)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ann = store.create_key("ann", ["review"])
    _count(store, "drift", [True, True], {"profile": fp, "name": "pets", "version": "1"})

    def acknowledged(current):
        state = AlertState.from_json(current)
        state.acknowledged = {"by": "ann", "at": "2026-01-01T00:00:00+00:00", "note": "seen \ud800 it"}
        return state.to_json()

    store.update_alert("drift", acknowledged, profile=fp)
    with serving(served, database_url=store.url, monitor=True, monitor_calendar="") as c:
        r = c.get("/v1/monitor", headers={"X-API-Key": ann})
        assert r.status_code == 200, r.text
        assert [a["acknowledged"]["note"] for a in r.json()["alerts"] if a["name"] == "drift"] == ["seen \ufffd it"]
        _signin(c, ann)
        page = c.get("/ui/dashboard")
        assert page.status_code == 200 and "seen \ufffd it" in page.text
    store.close()
