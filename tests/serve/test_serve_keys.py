"""API keys: the store keeps only their hashes and revokes them (sightline/serve/store.py), the server's cache of
verified keys forgets them after its TTL (sightline/serve/state.py), and the `sightline keys` commands."""
from __future__ import annotations

import json
import types

import pytest

from sightline.storage.store import ApiKeyInfo, Store, hash_key


def test_store_keys_hashed_and_revocable(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    key = store.create_key("ci")
    assert key.startswith("sl_") and len(key) > 40
    raw = b"".join(f.read_bytes() for f in tmp_path.glob("db.sqlite*"))  # WAL mode: rows may sit in -wal
    assert key.encode() not in raw and hash_key(key).encode() in raw  # only the hash is stored
    assert store.verify_key(key).name == "ci"
    assert store.verify_key(key[:-2] + "zz") is None and store.verify_key("nope") is None
    assert store.revoke_key("ci") == 1 and store.verify_key(key) is None
    store.close()


def test_key_cache_trusts_a_verified_key_for_its_ttl_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from sightline.serve import state

    now = [500.0]
    monkeypatch.setattr(state, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    alice = ApiKeyInfo(id=1, name="alice")
    cache = state.KeyCache(ttl_s=30.0)
    cache.put("h-alice", alice)
    now[0] += 29.9
    assert cache.get("h-alice") == alice and cache.get("h-bob") is None
    now[0] += 0.2  # past the TTL: the next request reads the database again, so a revocation takes effect
    assert cache.get("h-alice") is None
    off = state.KeyCache(ttl_s=0.0)  # 0: every request is checked in the database
    off.put("h-alice", alice)
    assert off.get("h-alice") is None


def test_keys_commands(tmp_path, run_cli):
    url = f"sqlite:///{tmp_path / 'k.db'}"

    code, out = run_cli(["keys", "create", "ops", "--database-url", url, "--json"])
    assert code == 0
    key = json.loads(out.out)["key"]
    code, out = run_cli(["keys", "list", "--database-url", url, "--json"])
    listed = json.loads(out.out)
    assert code == 0 and listed[0]["name"] == "ops" and key not in out.out and listed[0]["revoked"] is None
    assert run_cli(["keys", "revoke", "ops", "--database-url", url])[0] == 0
    code, out = run_cli(["keys", "revoke", "ops", "--database-url", url])
    assert code == 2 and "no active key" in out.err
    code, out = run_cli(["keys", "create", "x"])  # no bundle, no URL: one-line error
    assert code == 2 and "SIGHTLINE_DATABASE_URL" in out.err


def test_an_address_presenting_made_up_keys_is_slowed_before_the_database(tmp_path, monkeypatch):
    """Every unknown key cost a database read, so anyone could keep the database busy with made-up keys, through the
    API or the web sign-in form. Past failed_keys_per_minute unknown keys from one address, its keys not verified
    yet get 429 with Retry-After and no read; a key verified before (in the key cache) still works."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve_tiny import encode, keyed_service, photo

    reads: list[str] = []
    verify = Store.verify_key
    monkeypatch.setattr(Store, "verify_key", lambda self, key: (reads.append(key), verify(self, key))[1])
    with keyed_service(tmp_path, failed_keys_per_minute=3, key_cache_s=60) as (c, keys, _):
        assert c.get("/v1/review", headers={"X-API-Key": keys["review"]}).status_code == 200
        for i in range(3):
            assert c.get("/v1/review", headers={"X-API-Key": f"sl_madeup{i}"}).status_code == 401
        assert len(reads) == 4
        r = c.get("/v1/review", headers={"X-API-Key": "sl_madeup3"})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 20  # a token every 60 / 3 s
        assert "too many unknown or revoked API keys from this address" in r.json()["detail"]
        assert c.get("/v1/review", headers={"X-API-Key": keys["review"]}).status_code == 200  # cached: unaffected
        r = c.post("/v1/predict", files=[("file", ("a.jpg", encode(photo(0))))], headers={"X-API-Key": keys["predict"]})
        assert r.status_code == 429  # not verified yet: it waits like any other key from this address
        page = c.get("/ui/signin")
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        r = c.post("/ui/signin", data={"key": "sl_madeup4", "csrf": csrf})
        assert r.status_code == 429 and "Too many unknown keys from this address" in r.text
        assert len(reads) == 4  # none of the refused ones reached the database
