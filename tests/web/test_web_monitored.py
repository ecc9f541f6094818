"""The web app on a bundle with a reference profile: the queue is ordered with the stored signals (OOD score on
each item) and the dashboard shows the monitor's windows with their p-values and the alpha threshold."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from test_serve_monitor import (
    WINDOW,
    _predict,
    _settings,
    build_profiled_bundle,
    calm,
    serving,
)


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("webmon") / "bundle"
    build_profiled_bundle(folder)
    return folder


def test_queue_and_dashboard_with_monitoring(profiled, tmp_path):
    settings = _settings(profiled, f"sqlite:///{tmp_path / 'db.sqlite'}", image_store=tmp_path / "kept")
    with serving(settings) as (client, app, key):
        answers = _predict(client, [calm(7000 + i) for i in range(WINDOW)])
        assert {a["decision"] for a in answers} <= {"review", "unknown"}
        app.state.sightline.monitor.run_once()
        client.headers.pop("X-API-Key")
        page = client.get("/ui/signin")
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        assert client.post("/ui/signin", data={"key": key, "csrf": csrf}).status_code == 303
        review = client.get("/ui/review")
        assert review.status_code == 200
        assert review.text.count('class="item"') == WINDOW  # fewer than 50: every queued item
        assert review.text.count("OOD score") == WINDOW  # from the stored signals
        dash = client.get("/ui/dashboard")
        assert dash.status_code == 200
        assert "Latest drift windows (threshold α = 0.05)" in dash.text
        status = client.get("/v1/monitor", headers={"X-API-Key": key}).json()
        recent = status["windows"]["recent"]
        assert "<td>recent</td><td>30</td>" in dash.text
        for name, test in recent["tests"].items():  # every test's p-value, as /v1/monitor reports it
            assert f"{name} {test['p_value']:.3g}" in dash.text
        est = recent["expected_accuracy"]
        assert f"{100 * est['expected_accuracy']:.1f} % [{100 * est['low']:.1f}, {100 * est['high']:.1f}]" in dash.text
        assert "Open alerts: none" in dash.text
        block = status["windows"]["block"]
        assert dash.text.count("<circle ") == 1 and f"p = {block['p_value']:.3g}" in dash.text  # one block so far
        # the class mix of that block beside the reference profile's (the predicted classes' shares)
        mix = dash.text.split('<svg id="classmix"')[1].split("</svg>")[0]
        assert mix.count("<g ") == 2 and 'class="ref"' in mix and "the last bar is the reference profile" in dash.text
        shares = ", ".join(f"{c} {100 * s:.0f} %" for c, s in recent["class_mix"].items() if s > 0)
        assert f"1-{WINDOW} ({WINDOW} predictions): {shares}</title>" in mix
        # the alert counted that clean block: listed, not raised, so there is nothing to acknowledge
        assert [(a["name"], a["active"], a["acknowledged"]) for a in status["alerts"]] == [("drift", False, None)]
        r = client.post("/v1/monitor/alerts/drift/ack", headers={"X-API-Key": key})
        assert r.status_code == 409 and r.json()["detail"] == "alert 'drift' is not raised; there is nothing to acknowledge."
        assert 'action="/ui/alerts/drift/ack"' not in dash.text
