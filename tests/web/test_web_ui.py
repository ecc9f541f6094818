"""The web app at /ui: signed session cookies, CSRF, the Content-Security-Policy, the review queue's order
(uncertainty, then k-center diversity on the stored features), and keyboard labelling in a real browser
(Playwright driving Debian's Chromium; skipped with the reason when either is missing)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import CLASSES, encode, make_bundle, photo, predict, serving

from sightline.storage.store import Store
from sightline.serve.web.queue import k_center_greedy, ordered_queue
from sightline.serve.web.session import SessionSigner

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("web"))


def _signin(c, key: str):
    page = c.get("/ui/signin")
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    return c.post("/ui/signin", data={"key": key, "csrf": csrf})


def test_session_cookie_signed_and_expiring(monkeypatch):
    signer = SessionSigner(b"k" * 32, max_age_s=60)
    cookie = signer.sign({"name": "ann", "csrf": "t"})
    assert signer.verify(cookie)["name"] == "ann"
    body, mac = cookie.split(".")
    assert signer.verify(body[:-2] + "xx." + mac) is None  # tampered payload
    assert SessionSigner(b"other" * 8).verify(cookie) is None  # another secret
    monkeypatch.setattr(time, "time", lambda: 1e12)
    assert signer.verify(cookie) is None  # expired


def test_signin_csrf_csp_and_redirects(bundle, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    client_key, reviewer = store.create_key("client"), store.create_key("ann", ["review"])
    with serving(bundle, database_url=store.url, image_store=tmp_path / "kept") as c:
        r = c.get("/ui/review", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/signin"
        page = c.get("/ui/signin")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "content-security-policy" not in c.get("/health").headers  # the API keeps its own headers
        assert c.post("/ui/signin", data={"key": reviewer, "csrf": "forged"}).status_code == 400
        assert _signin(c, client_key).status_code == 403  # predict role only
        assert _signin(c, "sl_wrong").status_code == 401
        r = _signin(c, reviewer)
        assert r.status_code == 303 and r.headers["location"] == "/ui/review"
        set_cookie = r.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie and "path=/ui" in set_cookie
        review = c.get("/ui/review")
        assert review.status_code == 200 and "Nothing to review" in review.text
        assert c.post("/ui/label", json={"id": 1, "label": "cat"}).status_code == 403  # no CSRF header
        csrf = review.text.split('name="csrf-token" content="')[1].split('"')[0]
        assert c.post("/ui/label", json={"id": 999, "label": "cat"}, headers={"X-CSRF-Token": csrf}).status_code == 404
        assert (secret := (tmp_path / "session_secret")).is_file() and secret.stat().st_mode & 0o077 == 0
        store.revoke_key("ann")  # revoking the key ends its browser sessions (key_cache_s=0 here)
        assert c.get("/ui/review", follow_redirects=False).status_code == 303
        assert c.post("/ui/label", json={"id": 1, "label": "cat"}, headers={"X-CSRF-Token": csrf}).status_code == 401
        c.post("/ui/signout", data={"csrf": csrf})
        assert c.get("/ui/review", follow_redirects=False).status_code == 303
        assert c.get("/ui/dashboard", follow_redirects=False).headers["location"] == "/ui/signin"
    store.close()


def test_dashboard_data_histogram_filters_and_measured_accuracy(tmp_path):
    from sightline.serve.web.routes import dashboard_data

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    confs = [0.05, 0.15, 0.55, 0.95, 1.0]
    ids = store.add_predictions([{
        "request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "m", "model_version": "1",
        "label": "cat", "confidence": c, "top_k": [], "decision": "accept" if c > 0.5 else "review",
        "latency_ms": 1.0} for i, c in enumerate(confs)])
    store.add_kept_images([{"prediction_id": i, "sha256": f"{i:064x}", "reason": "sample",
                            "content_type": "image/jpeg", "size": 1} for i in ids[2:]])
    store.record_label(ids[2], "cat", reviewer="ann")
    store.record_label(ids[3], "dog", reviewer="ann")
    store.record_label(ids[4], "unknown", reviewer="ann")  # not a class: left out of accuracy
    data = dashboard_data(store)
    assert [b["count"] for b in data["histogram"]] == [1, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert data["measured"] == {"n": 2, "accuracy": 0.5}
    assert [r["id"] for r in dashboard_data(store, decision="review")["recent"]] == ids[:2][::-1]
    assert [r["id"] for r in dashboard_data(store, low=0.8, high=1.0)["recent"]] == ids[3:][::-1]
    store.close()


def test_queue_most_uncertain_first_and_diverse(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    rng = np.random.default_rng(0)
    rows, signals = [], []
    for i in range(40):
        p1 = 0.45 + 0.005 * i  # margin 0.01 * i: later ones are surer
        probs = np.array([p1, 0.9 - p1, 0.1], dtype=np.float32)
        rows.append({"request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "m",
                     "model_version": "1", "label": "cat", "confidence": p1,
                     "top_k": [{"label": "cat", "confidence": p1}], "decision": "review", "latency_ms": 1.0})
        # the 20 most uncertain are near-duplicates of one image; the other 20 are spread out
        feat = (np.ones(8) + 1e-3 * rng.normal(size=8)) if i < 20 else rng.normal(size=8) * 5
        signals.append({"profile": "p", "projected": feat.astype(np.float16).tobytes(),
                        "probabilities": probs.tobytes(), "ood_score": 0.1, "unknown": False, "image_stats": {}})
    store.add_predictions(rows, signals)
    picked = ordered_queue(store, limit=10, pool=4)
    names = [p["filename"] for p in picked]
    assert names[0] == "0.jpg"  # the most uncertain leads
    assert sum(int(n.split(".")[0]) < 20 for n in names) <= 2  # the duplicates do not fill the batch
    margins = [p["margin"] for p in picked]
    assert margins == sorted(margins)
    assert k_center_greedy(np.zeros((3, 2)), 3) == [0, 1, 2]  # only duplicates: each once
    store.close()


def test_label_twenty_with_the_keyboard_in_chromium(bundle, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    client_key, reviewer = store.create_key("client"), store.create_key("ann", ["review"])
    with serving(bundle, database_url=store.url, image_store=tmp_path / "kept", keep_accepted=0.0) as c:
        ids = []
        for start in range(0, 24, 8):
            answer = predict(c, client_key, [encode(photo(100 + start + i)) for i in range(8)]).json()
            ids += [p["id"] for p in answer["predictions"]]
        assert len(ids) == 24
        base = str(c.base_url).rstrip("/")
        errors: list[str] = []
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/ui/review")
            assert page.url.endswith("/ui/signin")  # no session: sign in first
            page.fill("input[name=key]", reviewer)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/ui/review")
            assert page.locator("li.item").count() == 24
            # the focused item's CAM overlay (a failed image load would also be a console error)
            cam_src = page.wait_for_selector("#focus-cam[src$='.png']").get_attribute("src")
            cam = page.request.get(base + cam_src)
            assert cam.status == 200 and cam.headers["content-type"] == "image/png" and cam.body()[:4] == b"\x89PNG"
            expected = {}
            for n in range(20):
                key = str(n % len(CLASSES) + 1) if n % 5 else "u"
                item = page.locator("li.item.current")
                pid = int(item.get_attribute("data-id"))
                page.keyboard.press(key)
                page.wait_for_selector(f"li.item.done[data-id='{pid}']")  # string predicates: CSP forbids eval
                expected[pid] = CLASSES[int(key) - 1] if key != "u" else "unknown"
            last = pid
            page.keyboard.press("z")
            page.wait_for_selector(f"li.item.current[data-id='{last}']:not(.done)")
            page.keyboard.press("s")  # skip: the focus moves on, nothing stored
            page.wait_for_selector(f"li.item.current:not([data-id='{last}'])")
            page.goto(f"{base}/ui/dashboard?decision=review")  # the dashboard renders with this data
            assert page.locator("#histogram rect").count() == 10
            assert page.locator("ol.recent li.item").count() == 24
            assert page.locator("ol.recent img.thumb").count() == 24
            page.goto(f"{base}/ui/dashboard?decision=accept")
            assert page.locator("ol.recent li.item").count() == 0
            page.click("button:has-text('Sign out')")
            page.wait_for_url(f"{base}/ui/signin")
            page.goto(f"{base}/ui/dashboard")
            assert page.url.endswith("/ui/signin")
            browser.close()
        assert errors == []
    del expected[last]
    labelled = {i: store.get_prediction(i)["reviewed_label"] for i in ids}
    assert {i: v for i, v in labelled.items() if v is not None} == expected
    assert all(store.get_prediction(i)["reviewer"] == "ann" for i in expected)
    history = store.label_history()
    assert len(history) == 21 and history[-1]["prediction_id"] == last and history[-1]["new_label"] == ""
    store.close()


def test_static_whitelist(bundle, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with serving(bundle, database_url=store.url) as c:
        assert c.get("/ui/static/review.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/ui/static/..%2Fsession.py").status_code == 404
    store.close()
