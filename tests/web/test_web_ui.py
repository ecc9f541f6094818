"""The web app at /ui: signed session cookies, CSRF, the Content-Security-Policy, the review queue's order
(uncertainty, then k-center diversity on the stored features), and keyboard labelling in a real browser
(Playwright driving Debian's Chromium; skipped with the reason when either is missing)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import CLASSES, encode, make_bundle, make_bundle_with_classes, photo, predict, serving

from sightline.storage.store import Store
from sightline.serve.web.queue import k_center_greedy, ordered_queue
from sightline.serve.web.session import SessionSigner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from in_chromium import chromium, chromium_page  # noqa: F401 (chromium: the module's browser fixture)


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
    # the session module's clock only: replacing time.time itself moves every thread's clock
    from types import SimpleNamespace

    from sightline.serve.web import session

    monkeypatch.setattr(session, "time", SimpleNamespace(time=lambda: 1e12))
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
        # another reviewer labelled it meanwhile: the page says so (the API's advice, `"override": true`, is not
        # something the page can send)
        (pid,) = store.add_predictions([{
            "request_id": "r", "filename": "x.jpg", "input_sha256": "0" * 64, "model_name": "m", "model_version": "1",
            "label": "cat", "confidence": 0.3, "top_k": [], "decision": "review", "latency_ms": 1.0}])
        store.record_label(pid, "dog", reviewer="bob")
        r = c.post("/ui/label", json={"id": pid, "label": "cat"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 409 and r.json()["detail"] == (f"prediction {pid} was labelled 'dog' by bob meanwhile; "
                                                               "reload the queue to see it.")
        assert (secret := (tmp_path / "session_secret")).is_file() and secret.stat().st_mode & 0o077 == 0
        store.revoke_key("ann")  # revoking the key ends its browser sessions (key_cache_s=0 here)
        assert c.get("/ui/review", follow_redirects=False).status_code == 303
        assert c.post("/ui/label", json={"id": 1, "label": "cat"}, headers={"X-CSRF-Token": csrf}).status_code == 401
        c.post("/ui/signout", data={"csrf": csrf})
        assert c.get("/ui/review", follow_redirects=False).status_code == 303
        assert c.get("/ui/dashboard", follow_redirects=False).headers["location"] == "/ui/signin"
    store.close()


def test_a_reviewers_heatmaps_count_in_the_keys_rate_limit(bundle, tmp_path):
    """/ui/cam runs the model once per picture; a signed-in reviewer could ask for as many as it liked, where the
    same key's API requests are limited. It takes a token from the key's bucket like any API request (429 and
    Retry-After past it); the kept image itself, no model run, is not counted."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    client_key, reviewer = store.create_key("client"), store.create_key("ann", ["review"])
    with serving(bundle, database_url=store.url, image_store=tmp_path / "kept", rate_limit_per_minute=3) as c:
        r = c.post("/v1/predict", files=[("file", ("a.jpg", encode(photo(0))))], headers={"X-API-Key": client_key})
        (pid,) = [p["id"] for p in r.json()["predictions"]]  # queued for review (review_confidence 0.99): kept
        assert _signin(c, reviewer).status_code == 303
        shown = [c.get(f"/ui/cam/{pid}.png") for _ in range(3)]
        assert all(r.status_code == 200 and r.headers["content-type"] == "image/png" for r in shown)
        r = c.get(f"/ui/cam/{pid}.png")
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 20 and "rate limit of 3" in r.text
        assert c.get(f"/ui/image/{pid}").status_code == 200
        assert c.get("/v1/review", headers={"X-API-Key": reviewer}).status_code == 429  # the one bucket of the key
    store.close()


def test_dashboard_data_histogram_filters_and_measured_accuracy(tmp_path):
    from sklearn.metrics import confusion_matrix

    from sightline.serve.web.dashboard import dashboard_data

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    confs = [0.05, 0.15, 0.55, 0.95, 1.0, 0.6, 0.7]
    predicted = ["cat", "cat", "cat", "cat", "cat", "dog", "fox"]
    ids = store.add_predictions([{
        "request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "m", "model_version": "1",
        "label": p, "confidence": c, "top_k": [], "decision": "accept" if c > 0.5 else "review",
        "latency_ms": 1.0} for i, (c, p) in enumerate(zip(confs, predicted))])
    store.add_kept_images([{"prediction_id": i, "sha256": f"{i:064x}", "reason": "sample",
                            "content_type": "image/jpeg", "size": 1} for i in ids[2:]])
    truth = {ids[2]: "cat", ids[3]: "dog", ids[4]: "unknown", ids[5]: "dog", ids[6]: "dog"}
    for i, label in truth.items():
        store.record_label(i, label, reviewer="ann")
    store.record_label(ids[0], "fox", reviewer="ann")  # the review queue, not the random slice: left out
    data = dashboard_data(store, classes=CLASSES)
    (block,) = data["confidence"]["blocks"]  # 7 predictions: one block of the default 500 (SIGHTLINE_MONITOR_WINDOW), still filling
    assert [b["count"] for b in block["bars"]] == [1, 1, 0, 0, 0, 1, 1, 1, 0, 2] and block["partial"]
    m = data["measured"]
    kept = [i for i in ids[2:] if truth[i] != "unknown"]  # 'unknown' labels are counted apart
    y_true, y_pred = [truth[i] for i in kept], [predicted[ids.index(i)] for i in kept]
    assert m["n"] == 4 and m["accuracy"] == 0.5 and m["unknown_labels"] == 1
    assert m["low"] < 0.5 < m["high"]
    assert m["classes"] == CLASSES and m["confusion"] == confusion_matrix(y_true, y_pred, labels=CLASSES).tolist()
    per = {c["name"]: c for c in m["per_class"]}
    assert (per["dog"]["fn"], per["dog"]["fp"], per["dog"]["recall"]) == (2, 0, 1 / 3)
    assert (per["cat"]["fp"], per["cat"]["precision"]) == (1, 0.5) and per["fox"]["fp"] == 1
    mean = np.mean([confs[ids.index(i)] for i in kept])  # label-free: mean calibrated confidence, same items
    assert m["estimate"]["expected_accuracy"] == pytest.approx(mean)
    assert m["estimate"]["low"] < mean < m["estimate"]["high"]
    assert [r["id"] for r in dashboard_data(store, decision="review")["recent"]] == ids[:2][::-1]
    assert [r["id"] for r in dashboard_data(store, low=0.8, high=1.0)["recent"]] == [ids[4], ids[3]]
    assert [r["id"] for r in dashboard_data(store, label="dog")["recent"]] == [ids[5]]
    store.close()
    store = Store(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    empty = dashboard_data(store, classes=CLASSES)["measured"]
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["estimate"]["expected_accuracy"] is None
    store.close()


def test_class_mix_blocks_keep_their_predictions(tmp_path):
    from sightline.serve.web.dashboard import class_mix_history

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    labels = ["cat"] * 10 + ["dog"] * 5 + ["fox"] * 5 + ["cat", "dog", "dog", "old"]  # 'old': a former class
    store.add_predictions([{
        "request_id": "r", "filename": "x.jpg", "input_sha256": "0" * 64, "model_name": "m", "model_version": "1",
        "label": label, "confidence": 0.9, "top_k": [], "decision": "accept", "latency_ms": 1.0} for label in labels])
    mix = class_mix_history(store, CLASSES, size=10, blocks=2, reference={"cat": 0.5, "dog": 0.25, "fox": 0.25})
    assert [b["label"] for b in mix["bars"]] == ["11-20", "21-24", "reference"]
    assert [b["partial"] for b in mix["bars"]] == [False, True, False]
    shares = [{s["name"]: s["share"] for s in b["segments"]} for b in mix["bars"]]
    assert shares == [{"dog": 0.5, "fox": 0.5}, {"cat": 0.25, "dog": 0.5, "old": 0.25},
                      {"cat": 0.5, "dog": 0.25, "fox": 0.25}]
    for bar in mix["bars"]:  # stacked to the full height, without gaps
        seg = bar["segments"]
        assert seg[0]["y"] == 0 and sum(s["height"] for s in seg) == pytest.approx(100)
        assert all(a["y"] + a["height"] == pytest.approx(b["y"]) for a, b in zip(seg, seg[1:]))
    assert [(x["name"], x["colour"]) for x in mix["legend"]] == [("cat", "c0"), ("dog", "c1"), ("fox", "c2"),
                                                                 ("old", "c3")]
    assert [b["label"] for b in class_mix_history(store, CLASSES, size=8)["bars"]] == ["1-8", "9-16", "17-24"]
    store.close()
    store = Store(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    assert class_mix_history(store, CLASSES, size=10)["bars"] == []
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


@pytest.mark.slow  # Chromium, three pages: ~7 s of wall for the file, so it is queued first, not last
def test_label_twenty_with_the_keyboard_in_chromium(bundle, tmp_path, chromium):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    client_key, reviewer = store.create_key("client"), store.create_key("ann", ["review"])
    with serving(bundle, database_url=store.url, image_store=tmp_path / "kept", keep_accepted=0.0) as c:
        ids = []
        for start in range(0, 24, 8):
            answer = predict(c, client_key, [encode(photo(100 + start + i)) for i in range(8)]).json()
            ids += [p["id"] for p in answer["predictions"]]
        assert len(ids) == 24
        seeded = _seed_slice_and_alert(store)
        base = str(c.base_url).rstrip("/")
        with chromium_page(chromium) as (page, errors):
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
            # confidence per block: 28 predictions, one block of 500 still filling, the same 10 bins
            assert page.locator("#confidence g.partial").count() == 1
            assert page.locator("#confidence rect.bar").count() == 10
            assert page.locator("p.serving").inner_text().startswith("pets 1")  # no registry: the bundle
            assert page.locator("#moves").count() == 0 and page.locator("#shadow").count() == 0
            assert page.locator("ol.recent li.item").count() == 24
            assert page.locator("ol.recent img.thumb").count() == 24
            page.goto(f"{base}/ui/dashboard?decision=accept")
            assert page.locator("ol.recent li.item").count() == len(seeded)
            # class mix: 28 predictions, one block still filling (500 a block), one rect per class predicted
            assert page.locator("#classmix g.partial").count() == 1
            assert page.locator("#classmix g rect").count() == len({r["label"] for r in _predicted(store)})
            assert page.locator("#classmix text").all_text_contents() == CLASSES
            # the confusion of the labelled random slice ('unknown' labels apart) and the estimate beside it
            assert page.locator("#confusion tr").count() == 1 + len(CLASSES)
            assert [page.locator("#confusion td.diag").nth(i).inner_text() for i in range(3)] == ["1", "1", "0"]
            assert page.locator("#measured .big").inner_text() == "66.7 %"
            assert "%" in page.locator("#slice-estimate").inner_text()
            # acknowledge the raised alert; the quiet one has no form
            assert page.locator("tr[data-alert='drift_day'] form").count() == 0
            page.fill("tr[data-alert='drift'] input[name=note]", "seen; checking the camera")
            page.click("tr[data-alert='drift'] button:has-text('Acknowledge')")
            page.wait_for_selector("tr[data-alert='drift'] span.ack:has-text('acknowledged by ann')")
            assert "checking the camera" in page.locator("tr[data-alert='drift']").inner_text()
            assert page.locator("tr[data-alert='drift'] form").count() == 0
            page.click("button:has-text('Sign out')")
            page.wait_for_url(f"{base}/ui/signin")
            page.goto(f"{base}/ui/dashboard")
            assert page.url.endswith("/ui/signin")
        assert errors == []
    del expected[last]
    labelled = {i: store.get_prediction(i)["reviewed_label"] for i in ids}
    assert {i: v for i, v in labelled.items() if v is not None} == expected
    assert all(store.get_prediction(i)["reviewer"] == "ann" for i in expected)
    history = store.label_history()
    assert len(history) == 21 + len(seeded)
    assert [h for h in history if h["prediction_id"] == last][-1]["new_label"] == ""
    ack = store.alert_states()["drift"]["acknowledged"]
    assert ack["by"] == "ann" and ack["note"] == "seen; checking the camera" and ack["at"].endswith("+00:00")
    assert store.alert_states()["drift_day"]["acknowledged"] is None
    store.close()


def _predicted(store):
    return [store.get_prediction(i) for i in range(1, store.count_predictions() + 1)]


def _seed_slice_and_alert(store) -> list[int]:
    """Four accepted predictions of the random slice labelled by a reviewer (their images evicted, so the page
    asks for none), an alert 'drift' raised by two significant windows and 'drift_day' seen once, as the monitor
    writes them; returns the predictions' ids."""
    from sightline.monitor.alerts import AlertState

    predicted, truth = ["cat", "cat", "dog", "fox"], ["cat", "dog", "dog", "unknown"]
    ids = store.add_predictions([{
        "request_id": "r", "filename": f"s{i}.jpg", "input_sha256": "0" * 64, "model_name": "pets",
        "model_version": "1", "label": p, "confidence": 0.9, "top_k": [{"label": p, "confidence": 0.9}],
        "decision": "accept", "latency_ms": 1.0} for i, p in enumerate(predicted)])
    store.add_kept_images([{"prediction_id": i, "sha256": f"{i:064x}", "reason": "sample",
                            "content_type": "image/jpeg", "size": 1} for i in ids])
    store.mark_evicted(ids)
    for i, label in zip(ids, truth):
        store.record_label(i, label, reviewer="carl")
    for name, verdicts in (("drift", [True, True]), ("drift_day", [True])):
        def change(current, name=name, verdicts=verdicts):
            state = AlertState(name=name)
            for w, significant in enumerate(verdicts, start=1):
                state.update(window_id=w, significant=significant)
            return state.to_json()

        store.update_alert(name, change)
    return ids


def test_static_whitelist(bundle, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with serving(bundle, database_url=store.url) as c:
        assert c.get("/ui/static/review.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/ui/static/..%2Fsession.py").status_code == 404
    store.close()


def test_classes_past_the_ninth_key_have_a_button_and_markup_in_names_stays_text(tmp_path, chromium):
    """Keys 1-9 label with the first nine classes; a tenth class had no key and no button, so a reviewer could not
    give it on the page at all (the key line ended at the ninth). Class names and file names holding markup show
    as text: no dialog, no console error under the strict CSP."""
    classes = [f"c{i}" for i in range(1, 10)] + ["<img src=x onerror=alert(1)>", "שלום \"q'"]
    bundle = make_bundle_with_classes(tmp_path, classes)  # the shared export with an 11-class head, not a new export
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    client_key, reviewer = store.create_key("client"), store.create_key("ann", ["review"])
    with serving(bundle, database_url=store.url, image_store=tmp_path / "kept") as c:
        r = c.post("/v1/predict", files=[("file", ("<img src=x onerror=alert(2)>.jpg", encode(photo(i))))
                                         for i in range(2)], headers={"X-API-Key": client_key})
        ids = [p["id"] for p in r.json()["predictions"]]
        base = str(c.base_url).rstrip("/")
        with chromium_page(chromium) as (page, errors):
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"{base}/ui/signin")
            page.fill("input[name=key]", reviewer)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/ui/review")
            for name in classes[9:]:
                pid = int(page.locator("li.item.current").get_attribute("data-id"))
                page.locator("button.label-button", has_text=name).click()
                page.wait_for_selector(f"li.item.done[data-id='{pid}']")
                assert store.get_prediction(pid)["reviewed_label"] == name
            assert "<img src=x onerror=alert(2)>.jpg" in page.locator("#focus-details").inner_text()
        assert errors == [] and dialogs == []
    assert sorted(store.get_prediction(i)["reviewed_label"] for i in ids) == sorted(classes[9:])
    store.close()


def test_a_number_key_past_the_class_count_says_so(bundle, tmp_path, chromium):
    """With three classes, key 5 did nothing and said nothing: a reviewer who meant a class saw no answer."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    client_key, reviewer = store.create_key("client"), store.create_key("ann", ["review"])
    with serving(bundle, database_url=store.url, image_store=tmp_path / "kept") as c:
        (pid,) = [p["id"] for p in predict(c, client_key, [encode(photo(1))]).json()["predictions"]]
        base = str(c.base_url).rstrip("/")
        with chromium_page(chromium) as (page, errors):
            page.goto(f"{base}/ui/signin")
            page.fill("input[name=key]", reviewer)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/ui/review")
            page.keyboard.press("5")
            page.wait_for_selector("#status:has-text('no class on key 5')")
            assert page.locator("li.item.done").count() == 0
        assert errors == []
    assert store.get_prediction(pid)["reviewed_label"] is None
    store.close()
