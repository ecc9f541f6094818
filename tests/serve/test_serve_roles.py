"""Roles and label history: keys carry predict / review / admin (sightline/serve/store.py, the `keys` commands),
the server checks key, role and rate limit from the headers before reading a body (serve/deps.py KeyGate), the
reviewer of a label is the key's name, and a labelled item changes only with "override", every change kept.
Store-level checks run on SQLite and on PostgreSQL (a schema of its own; skipped with the reason when
unreachable); the HTTP checks against uvicorn on SQLite."""
from __future__ import annotations

import json
import socket

import pytest
from serve_tiny import CLASSES, encode, make_bundle, open_store, photo, predict, serving

from sightline.storage.store import (
    LEGACY_ROLES,
    ApiKey,
    LabelConflictError,
    Store,
    parse_roles,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    with open_store(request.param, tmp_path) as s:
        yield s


def _prediction(store: Store) -> int:
    return store.add_predictions([{
        "request_id": "r", "filename": "a.jpg", "input_sha256": "0" * 64, "model_name": "m", "model_version": "1",
        "label": "cat", "confidence": 0.4, "top_k": [], "decision": "review", "latency_ms": 1.0,
    }])[0]


def test_roles_stored_and_legacy_keys_keep_predict_and_review(store):
    assert store.verify_key(store.create_key("client")).roles == {"predict"}
    assert store.verify_key(store.create_key("ops", ["review", "admin"])).roles == {"review", "admin"}
    # a key made before roles existed has no role rows: it keeps what every key could do then
    from sqlalchemy.orm import Session

    with Session(store.engine) as session, session.begin():
        session.add(ApiKey(name="old", lookup="sl_oldkey12", key_hash="0" * 64))
    listed = {r["name"]: r["roles"] for r in store.list_keys()}
    assert listed == {"client": ["predict"], "ops": ["admin", "review"], "old": sorted(LEGACY_ROLES)}
    assert LEGACY_ROLES == {"predict", "review"}


def test_parse_roles():
    assert parse_roles(None) == ("predict",) and parse_roles([]) == ("predict",)
    assert parse_roles(["review,admin", "review", " Predict "]) == ("review", "admin", "predict")
    with pytest.raises(Exception, match="role 'root' does not exist; use predict, review, admin"):
        parse_roles(["review,root"])


def test_label_refused_twice_without_override_and_every_change_kept(store):
    pid = _prediction(store)
    assert store.record_label(pid, "dog", reviewer="ann")["reviewed_label"] == "dog"
    with pytest.raises(LabelConflictError, match=f"prediction {pid} is already labelled 'dog' by ann"):
        store.record_label(pid, "fox", reviewer="bob")
    assert store.get_prediction(pid)["reviewed_label"] == "dog"  # unchanged
    row = store.record_label(pid, "fox", reviewer="bob", override=True)
    assert (row["reviewed_label"], row["reviewer"]) == ("fox", "bob")
    history = store.label_history(pid)
    assert [(h["old_label"], h["new_label"], h["reviewer"], h["old_reviewer"]) for h in history] == [
        (None, "dog", "ann", None), ("dog", "fox", "bob", "ann")]
    assert history[0]["changed"] <= history[1]["changed"]
    assert store.record_label(pid + 1000, "dog", reviewer="ann") is None and len(store.label_history()) == 2


def test_undo_gives_back_the_label_and_its_reviewer_before_the_undoers_change(store):
    """ann labels dog, bob overrides with fox, bob undoes: dog is ann's label again (the undo recorded bob as the
    reviewer of ann's label). Nobody undoes another's change, an undo is not undone, and a first label undone
    leaves the item unlabelled; every step stays in the history."""
    pid = _prediction(store)
    store.record_label(pid, "dog", reviewer="ann")
    first = store.get_prediction(pid)["reviewed"]
    store.record_label(pid, "fox", reviewer="bob", override=True)
    with pytest.raises(LabelConflictError, match=f"nothing of yours to undo on prediction {pid}"):
        store.undo_label(pid, reviewer="ann")
    row = store.undo_label(pid, reviewer="bob")
    assert (row["reviewed_label"], row["reviewer"], row["reviewed"]) == ("dog", "ann", first)
    with pytest.raises(LabelConflictError):  # an undo is not undone in turn (that would be a redo)
        store.undo_label(pid, reviewer="bob")
    assert [(h["new_label"], h["reviewer"], h["old_reviewer"]) for h in store.label_history(pid)] == [
        ("dog", "ann", None), ("fox", "bob", "ann"), ("dog", "bob", "bob")]
    other = _prediction(store)
    store.record_label(other, "cat", reviewer="ann")
    assert store.undo_label(other, reviewer="ann")["reviewed_label"] is None  # a first label undone: unlabelled
    with pytest.raises(LabelConflictError):
        store.undo_label(other, reviewer="ann")
    assert store.undo_label(pid + 1000, reviewer="ann") is None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    bundle = make_bundle(tmp_path_factory.mktemp("roles"))
    store = Store(f"sqlite:///{bundle / 'sightline.db'}")
    keys = {"client": store.create_key("client"), "reviewer": store.create_key("ann", ["review"]),
            "both": store.create_key("bea", ["predict", "review"]), "admin": store.create_key("root", ["admin"])}
    with serving(bundle) as client:
        yield {"client": client, "keys": keys, "store": store}
    store.close()


def test_missing_role_is_403_and_no_key_401(server):
    c, keys = server["client"], server["keys"]
    blob = encode(photo(1))
    assert predict(c, keys["client"], [blob]).status_code == 200
    for path in ("/v1/review", "/v1/monitor"):
        r = c.get(path, headers={"X-API-Key": keys["client"]})
        assert r.status_code == 403, path
        assert r.json()["detail"] == ("the API key 'client' lacks the 'review' role (it has predict); an admin can "
                                      "create one with `sightline keys create NAME --role review`.")
        assert c.get(path).status_code == 401
        assert c.get(path, headers={"X-API-Key": "sl_" + "x" * 43}).status_code == 401
    assert c.post("/v1/review/1", json={"label": "dog"}, headers={"X-API-Key": keys["client"]}).status_code == 403
    assert c.get("/v1/review/1/image", headers={"X-API-Key": keys["client"]}).status_code == 403
    r = predict(c, keys["reviewer"], [blob])  # review only: may not predict
    assert r.status_code == 403 and "lacks the 'predict' role" in r.json()["detail"]
    assert predict(c, keys["admin"], [blob]).status_code == 403  # admin is not a superset
    assert c.get("/v1/review", headers={"X-API-Key": keys["reviewer"]}).status_code == 200
    assert c.get("/v1/monitor", headers={"X-API-Key": keys["reviewer"]}).status_code == 200


def test_key_and_role_checked_before_the_body_is_read(server):
    """Headers announce a 1 MB upload that never comes: the answer must not wait for it."""
    port = int(str(server["client"].base_url).rsplit(":", 1)[1].strip("/"))
    for key, expected in ((None, b"401"), (server["keys"]["reviewer"], b"403")):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            head = ("POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                    "Content-Type: multipart/form-data; boundary=b\r\n")
            if key:
                head += f"X-API-Key: {key}\r\n"
            sock.sendall((head + "\r\n--b\r\n").encode())
            answer = sock.recv(4096)  # socket.timeout (a failure) if the server waits for the body
            assert answer.split(b" ", 2)[1] == expected, answer


def test_reviewer_is_the_key_name_and_labels_need_override(server):
    c, keys, store = server["client"], server["keys"], server["store"]
    h = {"X-API-Key": keys["both"]}
    pid = predict(c, keys["both"], [encode(photo(2))]).json()["predictions"][0]["id"]
    r = c.post(f"/v1/review/{pid}", json={"label": "dog", "reviewer": "somebody-else"}, headers=h)
    assert r.status_code == 200 and r.json()["reviewer"] == "bea" and r.json()["reviewed_label"] == "dog"
    r = c.post(f"/v1/review/{pid}", json={"label": "fox"}, headers={"X-API-Key": keys["reviewer"]})
    assert r.status_code == 409 and r.json()["detail"] == (
        f"prediction {pid} is already labelled 'dog' by bea; send \"override\": true to change it (the change is "
        "kept in the label history).")
    assert store.get_prediction(pid)["reviewed_label"] == "dog"
    r = c.post(f"/v1/review/{pid}", json={"label": "fox", "override": True}, headers={"X-API-Key": keys["reviewer"]})
    assert r.status_code == 200 and (r.json()["reviewed_label"], r.json()["reviewer"]) == ("fox", "ann")
    assert [(x["old_label"], x["new_label"], x["reviewer"]) for x in store.label_history(pid)] == [
        (None, "dog", "bea"), ("dog", "fox", "ann")]
    r = c.post(f"/v1/review/{pid}", json={"label": "wolf", "override": True}, headers=h)
    assert r.status_code == 422 and r.json()["detail"] == (
        f"label 'wolf' is not one of the model's classes or 'unknown': {[*CLASSES, 'unknown']}.")
    assert c.post("/v1/review/999999", json={"label": "dog"}, headers=h).status_code == 404
    other = predict(c, keys["both"], [encode(photo(3))]).json()["predictions"][0]["id"]
    r = c.post(f"/v1/review/{other}", json={"label": "unknown"}, headers=h)  # not a valid item
    assert r.status_code == 200 and r.json()["reviewed_label"] == "unknown"
    assert len(store.label_history(pid)) == 2


def test_keys_create_with_roles(tmp_path, run_cli):
    url = f"sqlite:///{tmp_path / 'k.db'}"

    code, out = run_cli(["keys", "create", "ops", "--role", "review", "--role", "admin", "--database-url", url, "--json"])
    assert code == 0 and json.loads(out.out)["roles"] == ["review", "admin"]
    code, out = run_cli(["keys", "create", "app", "--role", "predict,review", "--database-url", url, "--json"])
    assert code == 0 and json.loads(out.out)["roles"] == ["predict", "review"]
    code, out = run_cli(["keys", "create", "plain", "--database-url", url, "--json"])
    assert code == 0 and json.loads(out.out)["roles"] == ["predict"]
    code, out = run_cli(["keys", "create", "bad", "--role", "superuser", "--database-url", url])
    assert code == 2 and "role 'superuser' does not exist" in out.err and len(out.err.strip().splitlines()) == 1
    code, out = run_cli(["keys", "list", "--database-url", url, "--json"])
    assert [(k["name"], k["roles"]) for k in json.loads(out.out)] == [
        ("ops", ["admin", "review"]), ("app", ["predict", "review"]), ("plain", ["predict"])]


def test_a_database_from_before_roles_gets_the_new_tables_and_its_keys_keep_their_rights(tmp_path):
    from sqlalchemy import create_engine, insert, inspect

    from sightline.storage.store import Base, PredictionRecord, hash_key

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine, tables=[ApiKey.__table__, PredictionRecord.__table__])  # the old schema
    key = "sl_" + "k" * 43
    with engine.begin() as conn:
        conn.execute(insert(ApiKey), [{"name": "old-client", "lookup": key[:11], "key_hash": hash_key(key)}])
    engine.dispose()
    store = Store(url)  # create_all adds the side tables; nothing is altered
    assert {"api_key_roles", "label_history", "kept_images"} <= set(inspect(store.engine).get_table_names())
    assert store.verify_key(key).roles == {"predict", "review"}
    store.close()
