"""Alert acknowledgement by a person, through the API (POST /v1/monitor/alerts/{name}/ack) and the dashboard's
form: the key's name is recorded (never a client field), the acknowledgement survives a restart and is dropped when
the alert clears; unknown names, quiet alerts, a second acknowledgement, missing roles and forged forms are refused
in one line with nothing written. The dashboard's class mix chart and confusion table over plain HTTP; the confidence
histogram per block of predictions; the model serving now with the registry alias's moves (the serving version
marked, a move the service has not followed flagged) or, without a registry, the bundle and the process start; the
shadow-mode summary matching GET /v1/shadow, absent without --shadow."""
from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import CLASSES, make_bundle, serving

from sightline.monitor.alerts import AlertState
from sightline.storage.store import Store


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("dash"))


def _count(store: Store, name: str, verdicts, model=None) -> None:
    """Count windows in alert `name` the way the monitor does (one locked read-modify-write each), as `model`'s."""
    for significant in verdicts:
        def change(current):
            state = AlertState.from_json(current) if current else AlertState(name=name)
            state.update(window_id=(state.last_window or 0) + 1, significant=significant)
            return state.to_json()

        store.update_alert(name, change, model=model)


def _profiled(bundle, tmp_path):
    """A copy of the bundle with a reference profile from random arrays of its feature width, and its fingerprint:
    served with monitoring on, the alerts counted with that fingerprint are the serving model's."""
    import shutil

    from sightline.bundle import load_bundle
    from sightline.inference import open_engine
    from sightline.monitor.reference import build_reference
    from sightline.serve.monitoring import profile_fingerprint

    folder = tmp_path / "profiled"
    shutil.copytree(bundle, folder, ignore=shutil.ignore_patterns("sightline.db*"))
    with open_engine(load_bundle(folder), backend="onnx", threads=1) as engine:
        width = engine.run(np.zeros((1, 3, 32, 32), dtype=np.float32)).features.shape[1]
    rng = np.random.default_rng(0)
    build_reference(rng.normal(size=(40, 3)), rng.normal(size=(40, width)), classes=CLASSES).save(folder)
    return folder, profile_fingerprint(folder)


def _signin(c, key: str) -> str:
    page = c.get("/ui/signin")
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    assert c.post("/ui/signin", data={"key": key, "csrf": csrf}).status_code == 303
    return c.get("/ui/dashboard").text.split('name="csrf" value="')[1].split('"')[0]


def test_acknowledge_through_the_api_persists_across_a_restart_and_ends_when_the_alert_clears(bundle, tmp_path):
    served, fp = _profiled(bundle, tmp_path)  # the ack API acts on the serving model's alerts
    own = {"profile": fp, "name": "pets", "version": "1"}
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    client, ann, bob = store.create_key("client"), store.create_key("ann", ["review"]), store.create_key("bob", ["review"])
    _count(store, "drift", [True, True], own)  # raised
    _count(store, "drift_hour", [True, True], own)
    _count(store, "drift_day", [True], own)  # one significant window: not raised
    _count(store, "drift", [True], {**own, "profile": "0123456789abcdef"})  # another model's drift: untouched here
    other = store.alert_states("0123456789abcdef")
    url = "/v1/monitor/alerts/{}/ack"
    monitored = {"database_url": store.url, "monitor": True, "monitor_calendar": ""}
    with serving(served, **monitored) as c:
        deadline = time.monotonic() + 30  # the monitor delivers the fired events once it starts: then compare
        while any(st["pending"] for st in store.alert_states(fp).values()) and time.monotonic() < deadline:
            time.sleep(0.02)
        before = store.alert_states(fp)
        assert c.post(url.format("drift")).status_code == 401
        r = c.post(url.format("drift"), headers={"X-API-Key": client})
        assert r.status_code == 403 and "'review' role" in r.json()["detail"]
        r = c.post(url.format("nope"), headers={"X-API-Key": ann})
        assert r.status_code == 404 and r.json()["detail"] == (f"no alert named 'nope' of this model (profile {fp}); "
                                                               "GET /v1/monitor lists the alerts.")
        r = c.post(url.format("drift_day"), headers={"X-API-Key": ann})
        assert r.status_code == 409 and "not raised" in r.json()["detail"]
        r = c.post(url.format("drift_hour"), headers={"X-API-Key": ann}, json={"note": "x" * 501})
        assert r.status_code == 400 and "\n" not in r.json()["detail"] and "500" in r.json()["detail"]
        assert store.alert_states(fp) == before  # nothing written by a refusal, no row for the unknown name
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
    assert store.alert_states(fp)["drift"]["acknowledged"] == ack
    assert store.alert_states("0123456789abcdef") == other  # the other model's alert of that name is untouched
    with serving(served, **monitored) as c:  # a restart keeps it
        csrf = _signin(c, bob)
        dash = c.get("/ui/dashboard").text
        assert f"acknowledged by ann at {ack['at']}</span>: <q>seen</q>" in dash
        assert 'action="/ui/alerts/drift/ack"' not in dash and 'action="/ui/alerts/drift_day/ack"' not in dash
        _count(store, "drift", [False, False], own)  # the monitor clears it: the acknowledgement goes with it
        assert store.alert_states(fp)["drift"]["acknowledged"] is None
        dash = c.get("/ui/dashboard").text
        row = dash.split('data-alert="drift"')[1].split("</tr>")[0]
        assert "<td>cleared</td>" in row and "acknowledged by" not in row
        _count(store, "drift", [True, True], own)  # raised again: a person must look again
        assert 'action="/ui/alerts/drift/ack"' in c.get("/ui/dashboard").text
        assert c.post("/ui/alerts/drift/ack", data={"note": "n"}).status_code == 403  # no CSRF token
        assert c.post("/ui/alerts/drift/ack", data={"csrf": "forged"}).status_code == 403
        assert store.alert_states(fp)["drift"]["acknowledged"] is None
        r = c.post("/ui/alerts/drift/ack", data={"csrf": csrf, "note": "on it", "by": "mallory", "profile": fp},
                   follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/dashboard#alerts"
        assert store.alert_states(fp)["drift"]["acknowledged"]["by"] == "bob"
        assert store.alert_states(fp)["drift"]["acknowledged"]["note"] == "on it"
        r = c.post("/ui/alerts/drift/ack", data={"csrf": csrf, "profile": fp})
        assert r.status_code == 409 and r.text == (f"alert 'drift' was acknowledged already by bob at "
                                                   f"{store.alert_states(fp)['drift']['acknowledged']['at']}.")
        assert c.post("/ui/alerts/gone/ack", data={"csrf": csrf}).status_code == 404
        c.cookies.clear()
        r = c.post("/ui/alerts/drift_day/ack", data={"csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/signin"
    assert store.alert_states(fp)["drift_day"]["acknowledged"] is None
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
    now = dash.split('<p class="serving">')[1].split("</p>")[0]
    assert now.startswith("pets 1") and "process started 20" in now and "registry" not in now
    assert 'id="moves"' not in dash and 'id="shadow' not in dash  # no registry, no shadow mode
    panels = dash.split('<svg id="confidence"')[1].split("</svg>")[0].split("<g ")[1:]
    assert [p.split('data-block="')[1].split('"')[0] for p in panels] == ["1-4", "5-8", "9-10"]
    assert 'class="partial"' in panels[2] and 'class="block"' in panels[0]
    assert "0.8-0.9: 4 (100 %)" in panels[0] and "0.8-0.9: 2 (100 %)" in panels[2]
    store.close()


def test_confidence_histogram_per_block_shares_one_scale(tmp_path):
    from sightline.serve.web.dashboard import dashboard_data

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    confs = [0.95, 0.95, 0.95, 0.35] + [0.35, 0.35, 0.15, 0.95] + [0.55, 1.0] + [0.05]
    store.add_predictions([{
        "request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "pets",
        "model_version": "1", "label": "cat", "confidence": c, "top_k": [], "decision": "accept",
        "latency_ms": 1.0} for i, c in enumerate(confs)])
    conf = dashboard_data(store, window=4, blocks=3)["confidence"]
    assert conf["size"] == 4 and len(conf["bins"]) == 10 and conf["bins"][3] == {"low": 0.3, "high": 0.4}
    assert [b["label"] for b in conf["blocks"]] == ["1-4", "5-8", "9-11"]  # the first block fell out of 3
    assert [b["partial"] for b in conf["blocks"]] == [False, False, True]
    counts = [[bar["count"] for bar in b["bars"]] for b in conf["blocks"]]
    assert counts == [[0, 0, 0, 1, 0, 0, 0, 0, 0, 3], [0, 1, 0, 2, 0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]]
    # one scale: the largest share anywhere (3 of 4 in block 1-4) is 100, so block 5-8's 2 of 4 is 66.67
    assert conf["blocks"][0]["bars"][9]["height"] == 100 and conf["blocks"][1]["bars"][3]["height"] == 66.67
    assert conf["blocks"][2]["bars"][0]["share"] == pytest.approx(1 / 3)
    assert conf["blocks"][1]["mean"] == pytest.approx(np.mean(confs[4:8]))
    assert [b["label"] for b in dashboard_data(store, window=4, blocks=1)["confidence"]["blocks"]] == ["9-11"]
    store.close()
    empty = Store(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    assert dashboard_data(empty, window=4)["confidence"]["blocks"] == []
    empty.close()


def test_dashboard_registry_moves_and_shadow_summary(tmp_path, caplog):
    """serve --registry (champion v1) --shadow challenger (v2): the dashboard lists the champion's moves with the
    serving one marked, follows a promote, flags a move to a version that cannot be served, and summarises shadow
    mode as GET /v1/shadow does, with both models' accuracy on reviewer-labelled shadowed items."""
    import logging
    import time

    import httpx
    from serve_tiny import encode, more_polls, photo, started, tls

    from sightline.loop.registry import Registry
    from sightline.serve.app import create_app
    from sightline.serve.settings import Settings
    from sightline.storage.shadow import ShadowLog

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    registry = Registry(url, root=tmp_path / "registry")
    registry.add(make_bundle(tmp_path, seed=0, version="1", folder="b1"), alias="champion", reason="first one")
    registry.add(make_bundle(tmp_path, seed=1, version="2", folder="b2"), alias="challenger")
    store = Store(url)
    ann, client = store.create_key("ann", ["review"]), store.create_key("client")
    settings = Settings(registry=tmp_path / "registry", database_url=url, shadow="challenger", shadow_sample=1.0,
                        registry_poll_s=0.02, rate_limit_per_minute=0, key_cache_s=0, batch_max_wait_ms=5, threads=1,
                        monitor=False)  # a poll reads the aliases: 0.2 ms of CPU
    app = create_app(settings)
    try:
        with started(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, verify=tls()) as c:
            watcher = app.state.sightline.watcher
            for i in range(4):
                r = c.post("/v1/predict", files=[("file", (f"{i}.jpg", encode(photo(i, 40, 32))))],
                           headers={"X-API-Key": client})
                assert r.status_code == 200, r.text
            deadline = time.time() + 60
            while (s := c.get("/v1/shadow", headers={"X-API-Key": ann}).json())["since_start"].get("scored", 0) < 4:
                assert time.time() < deadline, s
                time.sleep(0.02)
            rows = ShadowLog(store).rows()
            assert len(rows) == 4
            store.record_label(rows[0]["prediction_id"], rows[0]["champion_label"], reviewer="ann")
            store.record_label(rows[1]["prediction_id"], rows[1]["label"], reviewer="ann")
            s = c.get("/v1/shadow", headers={"X-API-Key": ann}).json()
            _signin(c, ann)
            dash = c.get("/ui/dashboard").text
            assert 'id="shadow"' in dash and s["challenger"]["version"] in dash.split('id="shadow"')[1]
            lab = s["stored"]["labelled"]
            assert lab["n"] == 2
            acc = dash.split('id="shadow-accuracy">')[1].split("</td>")[0]
            assert acc == (f"2: champion {100 * lab['champion_accuracy']:.1f} %, "
                           f"challenger {100 * lab['challenger_accuracy']:.1f} %")
            agree = sum(r["label"] == r["champion_label"] for r in rows) / 4
            assert dash.split('id="shadow-agreement">')[1].startswith(f"{100 * agree:.1f} % same label")
            assert "4 shadowed predictions" in dash and "scored 4" in dash
            assert f" from {s['stored']['first'][:19]}" in dash  # seconds, as the API's ISO time
            store.record_label(rows[2]["prediction_id"], rows[2]["label"], reviewer="ann")
            again = c.get("/ui/dashboard").text  # live: the label just given counts
            assert again.split('id="shadow-accuracy">')[1].startswith("3: ") and "As of " in again
            assert c.get("/v1/shadow", headers={"X-API-Key": ann}).json()["stored"]["labelled"]["n"] == 3
            now = dash.split('<p class="serving">')[1].split("</p>")[0]
            assert now.startswith("pets 1 · registry v1") and "<b>champion</b>" in now

            def moves(page: str) -> list[str]:
                table = page.split('<table id="moves"')[1].split("</table>")[0]
                return [row.split(">")[0] for row in table.split("<tr class=")[1:]]

            assert moves(dash) == ['"current" data-move="1"']
            assert "first one" in dash and "is not serving" not in dash
            registry.promote("v2", alias="champion", reason="better on production")
            deadline = time.time() + 15
            while c.get("/v1/model").json()["registry"]["version"] != "v2":
                assert time.time() < deadline, "no switch to v2"
                time.sleep(0.02)
            dash = c.get("/ui/dashboard").text
            assert moves(dash) == ['"current" data-move="3"', '"past" data-move="1"']  # move 2: the challenger's
            row = dash.split('data-move="3"')[1].split("</tr>")[0]
            assert "<td>v1</td><td>v2 <span class=\"now\">serving</span></td><td>pets 2</td>" in row
            assert "better on production" in row and "1 switch since start" in dash
            with caplog.at_level(logging.ERROR, logger="sightline.serve"):
                registry.add(make_bundle(tmp_path, seed=2, version="3", folder="b3", onnx=False), alias="champion")
                deadline = time.time() + 15
                while not any("v3" in r.getMessage() and "cannot be served" in r.getMessage() for r in caplog.records):
                    assert time.time() < deadline, "the watcher did not refuse v3"
                    time.sleep(0.01)
                more_polls(watcher, 3)  # a few polls after it refused v3 (no ONNX file): v2 keeps serving
            dash = c.get("/ui/dashboard").text
            assert "The alias champion points to v3, which is not serving" in dash
            assert moves(dash)[:2] == ['"past" data-move="4"', '"current" data-move="3"']
            _sections_in_chromium(str(c.base_url).rstrip("/"), ann)
    finally:
        registry.close()
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


def _sections_in_chromium(base: str, key: str) -> None:
    """The dashboard with a registry and shadow mode in Debian's Chromium: the sections render, no console error
    (the strict CSP reports inline styles or scripts as errors). Skips (after the HTTP checks) without Chromium."""
    from in_chromium import chromium_page

    with chromium_page() as (page, errors):
        page.goto(f"{base}/ui/signin")
        page.fill("input[name=key]", key)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/ui/review")
        page.goto(f"{base}/ui/dashboard")
        assert page.locator("#moves tr.current").count() == 1
        assert "v2 serving" in page.locator("#moves tr.current").inner_text()
        assert page.locator("#shadow-summary").is_visible()
        assert page.locator("#shadow-accuracy").inner_text().startswith(("2: champion", "3: champion"))
        assert page.locator("#confidence rect.bar").count() == 10  # 4 predictions: one block of 500
    assert errors == []


def test_the_alerts_table_says_which_model_raised_each(bundle, tmp_path):
    """An alert row records the model whose windows raised it; the dashboard showed none of it, so with a champion
    and a challenger (or several models) on one database nobody could tell whose drift it was."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    ann = store.create_key("ann", ["review"])
    _count(store, "drift_day", [True, True])  # counted before alerts recorded a model: "not recorded"
    _count(store, "drift_hour", [True, True, False, False, True, True])  # fired at 2, cleared at 4, fired again at 6
    other = {"profile": "0123456789abcdef", "name": "pets", "version": "7"}
    for significant in (True, True):
        def change(current, significant=significant):
            state = AlertState.from_json(current) if current else AlertState(name="drift")
            state.update(window_id=(state.last_window or 0) + 1, significant=significant)
            return state.to_json()

        store.update_alert("drift", change, model=other)
    with serving(bundle, database_url=store.url) as c:
        _signin(c, ann)
        dash = c.get("/ui/dashboard").text
    cell = {name: dash.split(f'data-alert="{name}"')[1].split('class="raised-by">')[1].split("</td>")[0]
            for name in ("drift", "drift_day")}
    assert cell == {"drift": "pets 7 (profile 0123456789abcdef)", "drift_day": "not recorded"}
    # raised again: the row read "fired at window 6, cleared at window 4", the last clearing, before this firing
    row = dash.split('data-alert="drift_hour"')[1].split("</tr>")[0]
    cells = [c.split("</td>")[0].strip() for c in row.split("<td")[1:]]
    assert cells[:2] == ['>drift_hour', '>raised'] and cells[3:5] == [">6", ">"]
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_ack_form_naming_no_possible_alert_is_404_in_one_line(bundle, tmp_path, kind):
    """The ack form carries the row's profile; a tampered one (a NUL byte: PostgreSQL refuses it in a query, a 500
    before; 5,000 characters, echoed whole) or an alert name no alert can have is 404 in one short line."""
    from serve_tiny import fresh_database

    from sightline.serve.monitoring import UnknownAlertError, acknowledge_alert

    with fresh_database(kind, tmp_path) as url:
        store = Store(url)
        ann = store.create_key("ann", ["review"])
        with serving(bundle, database_url=store.url) as c:
            csrf = _signin(c, ann)
            for name, profile in (("drift", "\x00"), ("drift", "x" * 5000), ("dr\x00ift", ""), ("d" * 500, "")):
                r = c.post(f"/ui/alerts/{name.replace(chr(0), '%00')}/ack", data={"csrf": csrf, "profile": profile},
                           follow_redirects=False)
                assert r.status_code == 404 and "\n" not in r.text and len(r.text) < 200, r.text
            assert c.get("/ui/dashboard").status_code == 200  # still serving
        with pytest.raises(UnknownAlertError, match="GET /v1/monitor lists the alerts"):
            acknowledge_alert(store, "drift", profile="\x00", by="ann")
        assert store.alert_rows() == []  # nothing written
        store.close()
