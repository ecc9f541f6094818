"""`sightline monitor` on a bundle none of whose predictions the database holds (another model, another version)
says so in one line naming the bundle given and the models stored, and shows the service's raised alert as not this
bundle's (text, monitor.json, monitor.html); a bundle whose version the predictions name, or one served from a
registry ("2+v3.<hash>"), still owns them. Exit code 0 either way, and --json only gains fields."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import CLASSES, make_bundle

from sightline.bundle import load_bundle
from sightline.monitor.alerts import AlertState
from sightline.monitor.report import bundle_match
from sightline.storage.store import Store


@pytest.fixture
def served_v1(tmp_path):
    """Bundle "pets" 2 with a reference profile (random arrays: never compared here), and a database holding 3
    predictions of "pets" 1, monitored with another profile, and the drift alert that model raised."""
    from sightline.monitor.reference import build_reference

    folder = make_bundle(tmp_path, version="2")
    rng = np.random.default_rng(0)
    build_reference(rng.normal(size=(40, 3)), rng.normal(size=(40, 8)), classes=CLASSES).save(folder)
    store = Store(f"sqlite:///{tmp_path / 'sightline.db'}")
    rows = [{"request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "pets",
             "model_version": "1", "label": "cat", "confidence": 0.5, "top_k": [], "decision": "review",
             "latency_ms": 1.0} for i in range(3)]
    signals = [{"profile": "0123456789abcdef", "projected": np.zeros(4, np.float16).tobytes(),
                "probabilities": np.full(3, 1 / 3, np.float32).tobytes(), "ood_score": 0.1, "unknown": False,
                "image_stats": {}} for _ in rows]
    store.add_predictions(rows, signals)
    for window in (1, 2):  # two significant windows in a row: raised
        def change(current, window=window):
            state = AlertState.from_json(current) if current else AlertState(name="drift")
            state.update(window_id=window, significant=True)
            return state.to_json()

        store.update_alert("drift", change)
    store.close()
    return folder, store.url


def test_a_bundle_the_database_never_served_is_named_and_the_alert_is_not_its_own(served_v1, run_cli, tmp_path):
    folder, url = served_v1
    code, cap = run_cli(["monitor", str(folder), "--database", url, "--out", str(tmp_path / "r")])
    out = " ".join(cap.out.split())
    assert code == 0, cap.err
    assert "no prediction in the database is from the bundle given (pets 2, profile " in out
    assert "it holds pets 1 (3 predictions); pass the bundle the service served" in out
    assert "alert raised:" not in out
    assert "the service's alert drift is raised (since window 2), not by this bundle's predictions" in out
    page = (tmp_path / "r" / "monitor.html").read_text()
    assert "About another model: no prediction in the database is from this bundle." in page
    assert "it holds pets 1 (3 predictions)" in page and '<tr class=""><td>drift</td>' in page  # not highlighted

    code, cap = run_cli(["monitor", str(folder), "--database", url, "--out", str(tmp_path / "r"), "--json"])
    report = json.loads(cap.out)
    assert code == 0 and report["n_predictions"] == 3 and report["n_monitored"] == 0
    assert report["alerts"]["drift"]["active"] is True  # the service's state, as before; only marked
    assert report["alerts"]["drift"]["about_this_bundle"] is False
    match = report["bundle_match"]
    assert match["matched"] is False and match["n_matching"] == match["n_profile"] == 0
    assert match["models"] == [{"name": "pets", "version": "1", "n": 3}]
    assert report["messages"][0] == match["message"] and len(report["messages"]) == 2  # + the profile's own note

    bundle = load_bundle(folder)  # the same database, the bundle of the version it served: its alert again
    bundle.version = "1"
    bundle.write_json()
    code, cap = run_cli(["monitor", str(folder), "--database", url, "--out", str(tmp_path / "r")])
    out = " ".join(cap.out.split())
    assert code == 0 and "alert raised: drift (since window 2)" in out
    assert "no prediction in the database is from" not in out
    assert '<tr class="sig"><td>drift</td>' in (tmp_path / "r" / "monitor.html").read_text()


def test_match_by_version_registry_version_or_profile():
    models = [{"name": "pets", "version": "2+v3.0123456789ab", "n": 4}, {"name": "cars", "version": "2", "n": 9}]
    pets2 = {"name": "pets", "version": "2"}
    assert bundle_match(pets2, "f" * 16, models, 0)["n_matching"] == 4  # served from a registry
    assert bundle_match({"name": "pets", "version": "20"}, "f" * 16, models, 0)["matched"] is False  # not a prefix
    assert bundle_match({"name": "pets", "version": "20"}, "f" * 16, models, 1)["matched"] is True  # its profile
    many = [{"name": "m", "version": str(v), "n": 10 - v} for v in range(7)]
    line = bundle_match(pets2, "f" * 16, many, 0)["message"]
    assert "m 0 (10 predictions), m 1 (9 predictions)" in line and "m 4 (6 predictions) and 2 more;" in line
    assert "\n" not in line
    assert bundle_match(pets2, "f" * 16, [], 0)["message"] is None  # an empty database says so elsewhere


def test_names_and_paths_with_brackets_print_as_they_are(served_v1, run_cli, tmp_path):
    """Model names, the notes that quote them and the report's paths are the user's text, not rich markup: '[/]'
    in a stored model name was a MarkupError traceback, and a folder 'r [v2]' printed as 'r '."""
    folder, url = served_v1
    store = Store(url)
    store.add_predictions([{"request_id": "r", "filename": "x.jpg", "input_sha256": "0" * 64, "model_name": "pets[/]",
                            "model_version": "[bold]9", "label": "cat", "confidence": 0.5, "top_k": [],
                            "decision": "review", "latency_ms": 1.0}])
    store.close()
    out_dir = tmp_path / "r [v2]"
    code, cap = run_cli(["monitor", str(folder), "--database", url, "--out", str(out_dir)])
    out = "".join(cap.out.split())
    assert code == 0 and "Traceback" not in cap.err, cap.err
    assert "pets[/][bold]9(1predictions)" in out and "".join(str(out_dir / "monitor.json").split()) in out
