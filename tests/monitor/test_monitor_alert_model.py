"""An alert row records the model whose windows raised it (profile fingerprint, name, version), and `sightline
monitor BUNDLE` attributes an alert to the bundle exactly when that fingerprint is the bundle's profile: a champion
and a challenger (or two services) on one database no longer both own the alert. Rows written before the columns
(fingerprint NULL) keep the old rule, and a database made before them opens, gains them, and still reads its alerts.
Each test on SQLite and PostgreSQL (a schema of its own; skipped with the reason when it is not reachable)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import CLASSES, fresh_database, make_bundle

from sightline.monitor.alerts import AlertState
from sightline.storage.store import Store

OTHER = "0123456789abcdef"  # the challenger's profile fingerprint


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """A fresh database: a SQLite file, or a schema of its own in SIGHTLINE_TEST_DATABASE_URL's database."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def no_plots(monkeypatch):
    """The page without its matplotlib plots (about a second a report): these tests read its text."""
    from sightline.monitor import report

    monkeypatch.setattr(report, "plots", lambda r: {})


def _count(significant: bool):
    def change(current, significant=significant):
        state = AlertState.from_json(current) if current else AlertState(name="drift")
        state.update(window_id=state.sequence * 10 + (state.last_window or 0) + 1, significant=significant)
        return state.to_json()

    return change


def _bundle(tmp_path):
    """Bundle "pets" 2 with a reference profile from random arrays (never compared here); its fingerprint."""
    from sightline.monitor.reference import build_reference
    from sightline.serve.monitoring import profile_fingerprint

    folder = make_bundle(tmp_path, version="2")
    rng = np.random.default_rng(0)
    build_reference(rng.normal(size=(40, 3)), rng.normal(size=(40, 8)), classes=CLASSES).save(folder)
    return folder, profile_fingerprint(folder)


def _store_predictions(store, version, profile, n=3, components=7):
    rows = [{"request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "pets",
             "model_version": version, "label": "cat", "confidence": 0.5, "top_k": [], "decision": "review",
             "latency_ms": 1.0} for i in range(n)]
    signals = [{"profile": profile, "projected": np.zeros(components, np.float16).tobytes(),
                "probabilities": np.full(3, 1 / 3, np.float32).tobytes(), "ood_score": 0.1, "unknown": False,
                "image_stats": {}} for _ in rows]
    store.add_predictions(rows, signals)


def test_the_model_that_raised_an_alert_keeps_it_until_it_clears(url):
    store = Store(url)
    try:
        champion = {"profile": "a" * 16, "name": "pets", "version": "2"}
        challenger = {"profile": OTHER, "name": "pets", "version": "1"}
        store.update_alert("drift", _count(True), model=champion)
        assert [(r["profile"], r["model"]) for r in store.alert_rows()] == [("a" * 16, {"name": "pets",
                                                                                         "version": "2"})]
        store.update_alert("drift", _count(True), model=champion)  # raised by the champion
        store.update_alert("drift", _count(True), model=challenger)  # counted in the challenger's own row
        store.update_alert("drift", _count(True), profile="a" * 16)  # a person's ack, a delivered event: no model
        assert store.alert_states("a" * 16)["drift"]["active"] is True  # still the champion's, still raised
        store.update_alert("drift", _count(False), model=challenger)
        store.update_alert("drift", _count(False), model=challenger)  # the challenger's windows never clear it
        assert store.alert_states("a" * 16)["drift"]["active"] is True
        assert store.alert_states(OTHER)["drift"]["active"] is False
        assert {r["profile"]: r["model"] for r in store.alert_rows()} == {
            "a" * 16: {"name": "pets", "version": "2"}, OTHER: {"name": "pets", "version": "1"}}
    finally:
        store.close()


def test_the_service_monitor_records_its_model_and_v1_monitor_shows_it(url, tmp_path):
    from sightline.monitor.reference import load_reference
    from sightline.serve.metrics import ServiceMetrics
    from sightline.serve.monitoring import Monitor, Observer, acknowledge_alert
    from sightline.serve.settings import Settings

    folder, fp = _bundle(tmp_path)
    store = Store(url)
    try:
        settings = Settings(bundle=folder, database_url=url, monitor_consecutive=2, monitor_calendar="")
        monitor = Monitor(store=store, observer=Observer(load_reference(folder), fp), settings=settings,
                          metrics=ServiceMetrics(), model={"name": "pets", "version": "2", "registry_version": "v3"})
        for key in (5, 9):
            monitor._count("drift", {"kind": "block", "key": key, "n": 4, "significant": True, "tests": {}})
        status = monitor.status()
        assert status["open_alerts"] == ["drift"]
        assert status["alerts"][0]["profile"] == fp and status["alerts"][0]["model"] == {"name": "pets",
                                                                                          "version": "2"}
        acked = acknowledge_alert(store, "drift", profile=fp, by="bob")
        assert acked["acknowledged"]["by"] == "bob" and acked["profile"] == fp  # the ack keeps the model
    finally:
        store.close()


@pytest.fixture
def champion_and_challenger(tmp_path, url):
    """Bundle "pets" 2 (the champion) whose predictions are stored, a challenger "pets" 1 whose predictions are
    stored against another profile, and alert "drift" raised by the challenger's windows."""
    folder, fp = _bundle(tmp_path)
    store = Store(url)
    try:
        _store_predictions(store, "2", fp)
        _store_predictions(store, "1", OTHER)
        for _ in range(2):
            store.update_alert("drift", _count(True), model={"profile": OTHER, "name": "pets", "version": "1"})
        store.update_alert("drift_day", _count(True), model={"profile": fp, "name": "pets", "version": "2"})
    finally:
        store.close()
    return folder, fp


def test_an_alert_is_the_bundles_exactly_when_its_profile_is(champion_and_challenger, url, run_cli, tmp_path,
                                                              no_plots):
    folder, fp = champion_and_challenger
    out_dir = tmp_path / "r"
    code, cap = run_cli(["monitor", str(folder), "--database", url, "--out", str(out_dir)])
    out = " ".join(cap.out.split())
    assert code == 0, cap.err
    assert "alert raised: drift" not in out  # the bundle's predictions are stored, but the alert is not its own
    assert (f"the service's alert drift is raised (since window 2) by another model, pets 1 (profile {OTHER}), not "
            f"by this bundle (profile {fp})") in out
    page = (out_dir / "monitor.html").read_text()
    assert '<tr class=""><td>drift</td>' in page and f"<td>pets 1 (profile {OTHER})</td>" in page
    assert "About another model" not in page  # the bundle's predictions are there

    code, cap = run_cli(["monitor", str(folder), "--database", url, "--out", str(out_dir), "--json"])
    report = json.loads(cap.out)
    drift, day = report["alerts"]["drift"], report["alerts"]["drift_day"]
    assert code == 0 and report["bundle_match"]["matched"] is True
    assert drift["about_this_bundle"] is False and drift["attributed_by"] == "profile"
    assert drift["profile"] == OTHER and drift["model"] == {"name": "pets", "version": "1"}
    assert day["about_this_bundle"] is True and day["profile"] == fp and day["active"] is False


def test_the_bundle_of_the_alerts_profile_owns_it(champion_and_challenger, url, run_cli, tmp_path, no_plots):
    """The same database, the alert now raised by the bundle's own windows: highlighted as its alert."""
    folder, fp = champion_and_challenger
    store = Store(url)
    try:
        for _ in range(2):
            store.update_alert("drift", _count(False), model={"profile": OTHER, "name": "pets", "version": "1"})
        for _ in range(2):
            store.update_alert("drift", _count(True), model={"profile": fp, "name": "pets", "version": "2"})
    finally:
        store.close()
    code, cap = run_cli(["monitor", str(folder), "--database", url, "--out", str(tmp_path / "r")])
    assert code == 0 and "alert raised: drift (since window" in " ".join(cap.out.split())
    page = (tmp_path / "r" / "monitor.html").read_text()
    assert '<tr class="sig"><td>drift</td>' in page and "<td>this bundle</td>" in page
