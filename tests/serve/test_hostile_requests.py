"""Hostile requests the service answers with one line naming the field and a 4xx, never a 500 or a list of
pydantic records: ids beyond a database integer, malformed JSON, missing or mistyped fields, queries out of
range, an empty upload."""
from __future__ import annotations

import pytest
from serve_tiny import encode, keyed_service, make_bundle, one_line, open_store, photo, serving, tls

HUGE = "99999999999999999999999"  # above 2**63 - 1: overflowed in the database driver (500) before
BIG = str(2**31)  # above the 32-bit id column of PostgreSQL: overflowed there (500) before


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with keyed_service(tmp_path_factory.mktemp("hostile"), max_images_per_request=2) as (client, keys, url):
        client.database_url = url  # for the tests that read what was stored
        yield client, keys


@pytest.mark.parametrize("path", [f"/v1/review/{HUGE}", "/v1/review/-1", "/v1/review/0", "/v1/review/abc"])
def test_label_with_an_impossible_id_is_422_naming_it(service, path):
    client, keys = service
    r = client.post(path, json={"label": "cat"}, headers={"X-API-Key": keys["review"]})
    one_line(r, 422, "prediction_id")


def test_kept_image_with_a_huge_id_is_422_not_500(service):
    client, keys = service
    r = client.get(f"/v1/review/{HUGE}/image", headers={"X-API-Key": keys["review"]})
    one_line(r, 422, "prediction_id", "<= 2147483647")


def test_the_service_still_answers_after_a_huge_id(service):
    client, keys = service
    client.post(f"/v1/review/{HUGE}", json={"label": "cat"}, headers={"X-API-Key": keys["review"]})
    assert client.post("/v1/review/999999", json={"label": "cat"},
                       headers={"X-API-Key": keys["review"]}).status_code == 404


@pytest.mark.parametrize("path, body, words", [
    ("/v1/review/1", b'{"label": ', ()),
    # FastAPI answered these two 400 "There was an error parsing the body", naming neither the problem nor the fix
    ("/v1/review/1", b'{"label": "\xff\xfe"}', ("not UTF-8",)),
    ("/v1/monitor/alerts/x/ack", b"[" * 100_000 + b"]" * 100_000, ("nested too deeply",)),
])
def test_malformed_json_says_so_in_one_line(service, path, body, words):
    client, keys = service
    r = client.post(path, content=body, headers={"X-API-Key": keys["review"], "Content-Type": "application/json"})
    one_line(r, 422, path, "not valid JSON", "JSON object", *words)


@pytest.mark.parametrize("body, words", [
    ({"label": 5}, ("body.label=5", "must be text")),
    ({"label": "cat", "override": "maybe"}, ("body.override", "true or false")),
    ([1, 2], ("body", "mapping")),
])
def test_mistyped_json_fields_are_named(service, body, words):
    client, keys = service
    r = client.post("/v1/review/1", json=body, headers={"X-API-Key": keys["review"]})
    one_line(r, 422, *words)


@pytest.mark.parametrize("content_type, shown", [
    ("text/plain; charset=utf-8", "Content-Type: 'text/plain'"), (None, "no Content-Type"),
    ("application/x-www-form-urlencoded", "Content-Type: 'application/x-www-form-urlencoded'"),
])
def test_a_json_body_with_another_content_type_says_to_send_the_header(service, content_type, shown):
    """The body was right and the header was not: the answer said "body must be a mapping of key: value"."""
    client, keys = service
    headers = {"X-API-Key": keys["review"], **({"Content-Type": content_type} if content_type else {})}
    r = client.post("/v1/review/1", content=b'{"label": "cat"}', headers=headers)
    one_line(r, 422, "POST /v1/review/1", "Content-Type: application/json", shown)


@pytest.mark.parametrize("query, words", [
    ("limit=0", ("query.limit", ">= 1")), ("limit=100000", ("query.limit", "<= 500")),
    ("limit=abc", ("query.limit", "whole number")), ("offset=-1", ("query.offset", ">= 0")),
    ("slice=bogus", ("query.slice", "'queue' or 'random'")),
    (f"offset={HUGE}", ("query.offset", "<= 2147483647")),
])
def test_queries_out_of_range_are_named(service, query, words):
    client, keys = service
    one_line(client.get(f"/v1/review?{query}", headers={"X-API-Key": keys["review"]}), 422, *words)


@pytest.mark.parametrize("kwargs", [
    {"files": [("image", ("a.jpg", b"x"))]},  # the wrong form field
    {"json": {"file": "x"}},  # JSON instead of multipart
    {"content": b"\xff\xd8", "headers": {"Content-Type": "image/jpeg"}},  # a raw body
    {},
])
def test_predict_without_the_file_field_names_it(service, kwargs):
    client, keys = service
    headers = {"X-API-Key": keys["predict"], **kwargs.pop("headers", {})}
    one_line(client.post("/v1/predict", headers=headers, **kwargs), 422, "body.file", "missing")


def test_an_empty_upload_says_it_is_empty(service):
    client, keys = service
    r = client.post("/v1/predict", files=[("file", ("a.jpg", b""))], headers={"X-API-Key": keys["predict"]})
    one_line(r, 415, "a.jpg", "empty (0 bytes)")


def test_too_many_files_is_413_and_a_good_one_still_works(service):
    client, keys = service
    jpeg = encode(photo(0, 40, 32), "JPEG")
    r = client.post("/v1/predict", files=[("file", (f"{i}.jpg", jpeg)) for i in range(3)],
                    headers={"X-API-Key": keys["predict"]})
    one_line(r, 413, "limit is 2")
    ok = client.post("/v1/predict", files=[("file", ("a.jpg", jpeg))], headers={"X-API-Key": keys["predict"]})
    assert ok.status_code == 200


@pytest.mark.parametrize("kwargs", [
    {"files": [("file", ("x" * 5000 + ".jpg", b"\xff\xd8"))]},  # a part header line over python-multipart's 4 KB
    {"content": b"--other\r\nno headers here", "headers": {"Content-Type": "multipart/form-data; boundary=b"}},
])
def test_a_multipart_body_that_cannot_be_parsed_says_what_to_send(service, kwargs):
    """Starlette answered both with a bare "Invalid multipart data."."""
    client, keys = service
    headers = {"X-API-Key": keys["predict"], **kwargs.pop("headers", {})}
    one_line(client.post("/v1/predict", headers=headers, **kwargs), 400, "/v1/predict", "cannot be parsed",
              "4 KB", "filename")
    ok = client.post("/v1/predict", files=[("file", ("a.jpg", encode(photo(0, 40, 32), "JPEG")))],
                     headers={"X-API-Key": keys["predict"]})
    assert ok.status_code == 200


@pytest.mark.parametrize("part", [("", b"\xff\xd8\xff\xe0 jpeg bytes"), None])
def test_a_file_field_sent_as_text_says_so_without_echoing_it(service, part):
    """A multipart part without a filename arrives as a text field; the answer quoted its bytes back."""
    client, keys = service
    kwargs = {"files": [("file", part)]} if part else {"data": {"file": "abc"}}
    detail = one_line(client.post("/v1/predict", headers={"X-API-Key": keys["predict"]}, **kwargs), 422,
                       "form field 'file' must be a file upload")
    assert "jpeg bytes" not in detail and "abc" not in detail


@pytest.mark.parametrize("method, path, body", [
    ("post", "/ui/label", {"id": int(HUGE), "label": "cat"}),
    ("post", "/ui/undo", {"id": int(HUGE)}),
    ("get", f"/ui/image/{HUGE}", None),
    ("get", f"/ui/cam/{HUGE}.png", None),
])
def test_web_app_ids_beyond_a_database_integer_are_422(service, method, path, body):
    """Signed in, these reached the database driver with the id and overflowed (500)."""
    client, _ = service
    kwargs = {"json": body} if body is not None else {}
    one_line(getattr(client, method)(path, **kwargs), 422, "<= 2147483647")


@pytest.mark.parametrize("kwargs, status, words", [
    # Starlette's own cap (1,000 parts) answered 400 naming 1,000 as the limit: the service's limit is 2 here
    ({"files": [("file", (f"{i}.png", b"x")) for i in range(1001)]}, 413, ("over 1,000 files", "limit is 2")),
    ({"files": [("file", ("a.png", b"x"))], "data": {"note": "x" * 1_100_000}}, 400, ("exceeded maximum size",)),
    ({"files": [("file", ("a.png", b"x"))], "data": {f"f{i}": "x" for i in range(1001)}}, 400, ("too many fields",)),
    ({"content": b"x", "headers": {"Content-Type": "multipart/form-data"}}, 400, ("missing boundary",)),
])
def test_multipart_refused_by_the_parser_is_one_line_naming_the_fix(service, kwargs, status, words):
    client, keys = service
    headers = {"X-API-Key": keys["predict"], **kwargs.pop("headers", {})}
    detail = one_line(client.post("/v1/predict", headers=headers, **kwargs), status, "POST /v1/predict", *words)
    assert status == 413 or "multipart/form-data" in detail


@pytest.mark.parametrize("kwargs", [{"data": {f"f{i}": "x" for i in range(1001)}}, {"data": {"key": "k" * 1_100_000}}])
def test_a_web_form_refused_by_the_parser_is_not_told_to_send_images(service, kwargs):
    """The web app's forms got /v1/predict's advice ("only the file field(s), each image as a file upload")."""
    client, _ = service
    detail = one_line(client.post("/ui/signin", **kwargs), 400, "POST /ui/signin", "the form's own fields")
    assert "image" not in detail and "file" not in detail


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_bundle_with_a_long_name_and_version_still_stores_its_answers(tmp_path, kind):
    """model.json name over 200 and version over 100 characters (the columns' widths): on PostgreSQL every predict
    answered 500 and stored nothing; now the row keeps their first 200 / 100 characters, as it does the filename's.
    A filename with a NUL byte is stored (and answered) with U+FFFD in its place."""
    from sqlalchemy import text

    from sightline.bundle import load_bundle

    folder = make_bundle(tmp_path, folder="long")
    bundle = load_bundle(folder)
    bundle.name, bundle.version = "n" * 250, "v" * 150
    bundle.write_json()
    with open_store(kind, tmp_path) as store:
        key = store.create_key("p", ["predict", "review"])
        with serving(folder, database_url=store.url) as client:
            r = client.post("/v1/predict", files=[("file", ("a.jpg", encode(photo(0, 40, 32), "JPEG")))],
                            headers={"X-API-Key": key})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == {"name": "n" * 250, "version": "v" * 150}
            # a NUL in a filename (a raw multipart header; httpx would escape it): on PostgreSQL the INSERT failed,
            # a 500 for this request and every other one stored in the same transaction, nothing kept
            jpeg = encode(photo(0, 40, 32), "JPEG")
            r = client.post("/v1/predict", content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="a'
                            b'\x00b.jpg"\r\nContent-Type: image/jpeg\r\n\r\n' + jpeg + b"\r\n--b--\r\n",
                            headers={"X-API-Key": key, "Content-Type": "multipart/form-data; boundary=b"})
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0]["filename"] == "a\ufffdb.jpg"
            # an id PostgreSQL's 32-bit column cannot hold: a 500 there before
            for r in (client.post(f"/v1/review/{BIG}", json={"label": "cat"}, headers={"X-API-Key": key}),
                      client.get(f"/v1/review/{BIG}/image", headers={"X-API-Key": key})):
                one_line(r, 422, "prediction_id", "<= 2147483647")
        with store.engine.connect() as conn:
            rows = conn.execute(text("SELECT model_name, model_version, filename FROM predictions ORDER BY id")).all()
        assert [tuple(row) for row in rows] == [("n" * 200, "v" * 100, "a.jpg"), ("n" * 200, "v" * 100, "a\ufffdb.jpg")]


def _signed_in(client, key: str):
    """A second client on the service, signed in to the web app with `key`; returns (client, its CSRF token)."""
    import httpx

    web = httpx.Client(base_url=client.base_url, timeout=30, verify=tls())
    page = web.get("/ui/signin")
    web.post("/ui/signin", data={"key": key, "csrf": page.text.split('name="csrf" value="')[1].split('"')[0]})
    review = web.get("/ui/review")
    return web, review.text.split('name="csrf-token" content="')[1].split('"')[0]


def test_tokens_with_characters_beyond_ascii_are_refused_not_500(service):
    """hmac.compare_digest raises TypeError on a str with a non-ASCII character: a CSRF form field or header, or a
    session cookie's signature, with one answered 500 with a traceback on every form and page of the web app."""
    client, keys = service
    r = client.post("/ui/signin", data={"key": keys["review"], "csrf": "é"}, headers={"Cookie": "sl_csrf=abc"})
    assert r.status_code == 400 and "The form expired" in r.text
    r = client.get("/ui/review", headers={"Cookie": "sl_session=abc.dé".encode()}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/signin"
    web, csrf = _signed_in(client, keys["review"])
    try:
        assert web.post("/ui/label", json={"id": 1, "label": "cat"}, headers={"X-CSRF-Token": "é".encode("latin-1")}
                        ).status_code == 403
        assert web.post("/ui/alerts/x/ack", data={"csrf": "é"}).status_code == 403
        assert web.post("/ui/signout", data={"csrf": "ü"}).status_code == 403
        assert web.get("/ui/review").status_code == 200  # still signed in
    finally:
        web.close()


def test_a_long_label_is_quoted_short(service):
    """A 100,000-character label came back whole in the one-line 422, from the API and the web app."""
    client, keys = service
    detail = one_line(client.post("/v1/review/1", json={"label": "x" * 100_000},
                                   headers={"X-API-Key": keys["review"]}), 422, "'xxxx", "(100,000 characters)")
    assert len(detail) < 300, detail
    web, csrf = _signed_in(client, keys["review"])
    try:
        r = web.post("/ui/label", json={"id": 1, "label": "y" * 100_000}, headers={"X-CSRF-Token": csrf})
        assert len(one_line(r, 422, "'yyyy", "(100,000 characters)")) < 300
    finally:
        web.close()


@pytest.mark.parametrize("given, kept", [
    (None, False), ("req-42_a.b", True), ("x" * 33, False), ("two words", False), ("id\u00e9", False),
])
def test_every_answer_has_a_request_id_and_predictions_store_it(service, given, kept):
    """DESIGN.md's HTTP API: X-Request-ID on every answer (none had one). A caller's id is kept when it is short and
    plain; the predictions of the request are stored with the id the answer names."""
    client, keys = service
    headers = {} if given is None else {"X-Request-ID": given.encode("latin-1")}
    jpeg = encode(photo(0, 40, 32), "JPEG")
    predict = {**headers, "X-API-Key": keys["predict"]}
    answers = [client.get("/healthz", headers=headers), client.get("/v1/review", headers=headers),  # 200, 401
               client.post("/v1/predict", files=[("file", (f"{i}.jpg", jpeg)) for i in range(3)], headers=predict),
               client.post("/v1/predict", files=[("file", ("a.jpg", jpeg))], headers=predict)]
    assert [r.status_code for r in answers] == [200, 401, 413, 200]
    ids = [r.headers["x-request-id"] for r in answers]
    assert all(ids) and (ids == [given] * 4 if kept else len(set(ids)) == 4 and given not in ids)
    from sightline.storage.store import Store

    store = Store(client.database_url)
    try:
        assert store.get_prediction(answers[-1].json()["predictions"][0]["id"])["request_id"] == ids[-1]
    finally:
        store.close()
