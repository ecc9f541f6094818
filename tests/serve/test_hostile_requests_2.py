"""More hostile requests, found by attacking a running service: each answers a 4xx with one line naming the
problem, never a 500 and never a 200 that quietly used part of what was sent."""
from __future__ import annotations

import pytest
from serve_tiny import encode, keyed_service, make_bundle, one_line, photo, serving


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from sightline.storage.store import Store

    with keyed_service(tmp_path_factory.mktemp("hostile2")) as (client, keys, url):
        store = Store(url)
        yield client, keys, store
        store.close()


JPEG = encode(photo(0, 40, 32), "JPEG")


def _part(name: bytes) -> bytes:
    return b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + name + b'"\r\n\r\n' + JPEG


@pytest.mark.parametrize("body", [
    _part(b"one.jpg") + b"\r\n" + _part(b"two.jpg"),  # cut in the second image
    _part(b"one.jpg") + b"\r\n" + _part(b"two.jpg") + b"\r\n--b",  # cut inside the close delimiter
    _part(b"one.jpg") + b'\r\n--b\r\nContent-Disposition: form-data; name="fi',  # cut in the second part's header
    _part(b"one.jpg") + b"\r\n--b\r\n",  # no close delimiter at all
])
def test_a_multipart_body_cut_off_is_refused_not_half_used(service, body):
    """The parser stops at the end of the bytes and Starlette keeps the parts finished so far: two images were sent,
    the second cut off, and the answer was 200 with one prediction (the second silently dropped)."""
    client, keys, store = service
    before = store.count_predictions()
    r = client.post("/v1/predict", content=body,
                    headers={"X-API-Key": keys["predict"], "Content-Type": "multipart/form-data; boundary=b"})
    one_line(r, 400, "POST /v1/predict", "ends before its closing boundary line ('--b--')", "send the whole request")
    assert store.count_predictions() == before


def test_a_whole_body_streamed_in_small_chunks_is_answered(service):
    """The close delimiter split across the chunks of a chunked upload (no Content-Length) is still found."""
    client, keys, store = service
    body = _part(b"one.jpg") + b"\r\n" + _part(b"two.jpg") + b"\r\n--b--\r\n"

    def chunks():
        for i in range(0, len(body), 3):
            yield body[i:i + 3]

    before = store.count_predictions()
    r = client.post("/v1/predict", content=chunks(),
                    headers={"X-API-Key": keys["predict"], "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 200, r.text
    assert [p["filename"] for p in r.json()["predictions"]] == ["one.jpg", "two.jpg"]
    assert store.count_predictions() == before + 2
    # an empty multipart body is not cut off: it names the missing field, as before
    r = client.post("/v1/predict", content=b"",
                    headers={"X-API-Key": keys["predict"], "Content-Type": "multipart/form-data; boundary=b"})
    one_line(r, 422, "body.file is missing")


def test_a_json_number_of_thousands_of_digits_says_so(service):
    """Python refuses to read an integer of over 4,300 digits: the answer was 'it cannot be read (ValueError)'."""
    client, keys, _ = service
    r = client.post("/v1/review/1", content=b'{"label": "cat", "override": ' + b"9" * 5000 + b"}",
                    headers={"X-API-Key": keys["review"], "Content-Type": "application/json"})
    one_line(r, 422, "POST /v1/review/1", "not valid JSON", "a number in it has over 4,300 digits")


def test_an_alert_name_is_quoted_short_with_monitoring_off(service):
    """Without a reference profile the acknowledge route quoted the whole name: 5,000 characters in one line."""
    client, keys, _ = service
    detail = one_line(client.post("/v1/monitor/alerts/" + "a" * 5000 + "/ack", headers={"X-API-Key": keys["review"]}),
                       404, "no alert named 'aaaa", "(5,000 characters)")
    assert len(detail) < 400, detail


@pytest.mark.parametrize("route, why, state", [
    ("predict", "database is locked", "the database is locked by another writer"),
    ("label", "database is locked", "the database is locked by another writer"),
    ("predict", "QueuePool limit of size 5 overflow 10 reached", "every database connection is busy"),
    ("predict", 'connection to server at "10.1.2.3", port 5432 failed: Connection refused',
     "the database cannot be reached"),
])
def test_a_database_that_is_locked_or_down_is_503_not_a_plain_500(service, monkeypatch, route, why, state):
    """SQLite locked past its busy timeout by another process (or PostgreSQL restarting, or every pooled connection
    busy) made every request a plain-text 500 'Internal Server Error' with a traceback in the log; it is a JSON 503
    with Retry-After that says which, without the driver's words (they name the database's host and port: the log
    has them)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    from sightline.storage.store import Store

    client, keys, _ = service

    def locked(*args, **kwargs):
        if why.startswith("QueuePool"):
            raise PoolTimeoutError(f"{why}, connection timed out, timeout 30.00")
        raise OperationalError("INSERT INTO predictions ...", {}, sqlite3.OperationalError(why))

    monkeypatch.setattr(Store, "add_predictions" if route == "predict" else "record_label", locked)
    if route == "predict":
        r = client.post("/v1/predict", files=[("file", ("a.jpg", JPEG))], headers={"X-API-Key": keys["predict"]})
    else:
        r = client.post("/v1/review/1", json={"label": "cat"}, headers={"X-API-Key": keys["review"]})
    one_line(r, 503, f"{state}; the request was not completed, retry it later.")
    assert "10.1.2.3" not in r.text and "5432" not in r.text
    assert r.headers["retry-after"] == "5"
    monkeypatch.undo()  # and the service answers again once the database does
    ok = client.post("/v1/predict", files=[("file", ("a.jpg", JPEG))], headers={"X-API-Key": keys["predict"]})
    assert ok.status_code == 200, ok.text


def test_a_wrong_method_or_path_says_what_to_use(service):
    """The router's own refusals were 'Method Not Allowed' and 'Not Found', naming neither the request nor the fix."""
    client, keys, _ = service
    r = client.get("/v1/predict", headers={"X-API-Key": keys["predict"]})
    one_line(r, 405, "GET /v1/predict: this route does not take GET; use POST.")
    assert r.headers["allow"] == "POST"
    one_line(client.delete("/healthz"), 405, "DELETE /healthz", "use GET")
    # load balancers and uptime checkers probe with HEAD: the health routes answer it as GET does, without a body
    for path in ("/healthz", "/readyz"):
        head = client.head(path)
        assert head.status_code == 200 and head.content == b"", (path, head.status_code, head.text)
    one_line(client.get("/v2/predict"), 404, "GET /v2/predict: no such route", "/openapi.json")
    # a route's own 404 keeps its words
    one_line(client.post("/v1/review/999999", json={"label": "cat"}, headers={"X-API-Key": keys["review"]}), 404,
              "no prediction with id 999999")


@pytest.mark.parametrize("field", ["files", "image", "file[]"])
def test_an_upload_under_another_field_name_is_refused_not_dropped(service, field):
    """Two images as `file` and a third as `files` (a typo, or a client library's array convention) answered 200
    with two predictions: the third image was dropped without a word. Text fields beside them are still ignored."""
    client, keys, store = service
    before = store.count_predictions()
    r = client.post("/v1/predict", files=[("file", ("a.jpg", JPEG)), (field, ("c.jpg", JPEG)), ("file", ("b.jpg", JPEG))],
                    headers={"X-API-Key": keys["predict"]})
    one_line(r, 422, "the upload 'c.jpg' is in form field", repr(field), "send every image as a `file` field")
    assert store.count_predictions() == before
    r = client.post("/v1/predict", files=[("file", ("a.jpg", JPEG))], data={"note": "a text field"},
                    headers={"X-API-Key": keys["predict"]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text


def test_a_database_down_while_checking_a_key_is_503_not_a_plain_500(service, monkeypatch):
    """The key gate reads the key before any route runs (a middleware, outside the app's error handlers): with the
    database locked or down there, every request with a key not yet cached was a plain-text 500."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from sightline.storage.store import Store

    client, keys, _ = service

    def down(*args, **kwargs):
        raise OperationalError("SELECT api_keys ...", {}, sqlite3.OperationalError("unable to open database file"))

    monkeypatch.setattr(Store, "verify_key", down)
    r = client.get("/v1/review", headers={"X-API-Key": keys["review"]})
    one_line(r, 503, "the database cannot be reached; the request was not completed, retry it later.")
    assert r.headers["retry-after"] == "5"
    r = client.post("/v1/predict", files=[("file", ("a.jpg", JPEG))], headers={"X-API-Key": keys["predict"]})
    one_line(r, 503, "the database cannot be reached")
    monkeypatch.undo()
    assert client.get("/v1/review", headers={"X-API-Key": keys["review"]}).status_code == 200


def test_a_decomposed_label_names_its_class(tmp_path):
    """A class 'café' labelled as 'cafe' + U+0301 (typed so, or read from a macOS folder name) was refused with
    "label 'café' is not one of ['café', ...]", the two looking the same. It is that class, stored as the model
    spells it, from the API and the web app alike."""
    import unicodedata

    from sightline.bundle import load_bundle
    from sightline.storage.store import Store

    folder = make_bundle(tmp_path)
    bundle = load_bundle(folder)
    bundle.classes = ["café", "dog", "fox"]
    bundle.write_json()
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    key = store.create_key("ann", ["predict", "review"])
    decomposed = unicodedata.normalize("NFD", "café")
    assert decomposed != "café"
    with serving(folder, database_url=store.url) as client:
        answer = client.post("/v1/predict", files=[("file", (f"{i}.jpg", JPEG)) for i in range(2)],
                             headers={"X-API-Key": key})
        first, second = (p["id"] for p in answer.json()["predictions"])
        r = client.post(f"/v1/review/{first}", json={"label": decomposed}, headers={"X-API-Key": key})
        assert r.status_code == 200 and r.json()["reviewed_label"] == "café", r.text
        page = client.get("/ui/signin")
        client.post("/ui/signin", data={"key": key, "csrf": page.text.split('name="csrf" value="')[1].split('"')[0]})
        csrf = client.get("/ui/review").text.split('name="csrf-token" content="')[1].split('"')[0]
        r = client.post("/ui/label", json={"id": second, "label": decomposed}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200 and r.json()["label"] == "café", r.text
        one_line(client.post(f"/v1/review/{first}", json={"label": "cafe", "override": True},
                              headers={"X-API-Key": key}), 422, "'cafe' is not one of")
    assert [store.get_prediction(i)["reviewed_label"] for i in (first, second)] == ["café", "café"]
    store.close()
