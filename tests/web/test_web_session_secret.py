"""The web app's session secret file: an empty or damaged one, or two processes creating it at once, must never
leave a server signing sessions with a guessable key."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import make_bundle, serving

from sightline.serve.web.session import SECRET_FILE, load_secret
from sightline.storage.store import Store


def _forged(secret: bytes, key_id: int, name: str) -> str:
    """A session cookie as the server makes them, signed with `secret`."""
    body = base64.urlsafe_b64encode(json.dumps({"key_id": key_id, "name": name, "csrf": "x",
                                                "exp": int(time.time()) + 3600}).encode()).rstrip(b"=").decode()
    mac = base64.urlsafe_b64encode(hmac.new(secret, body.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    return f"{body}.{mac}"


@pytest.mark.parametrize("content", ["", "\n", "not hex at all", "ab" * 4])
def test_a_damaged_secret_file_is_replaced_never_used(tmp_path, monkeypatch, content):
    """An empty session_secret (a crash or a full disk between creating the file and writing it) was read as the
    empty key: anyone could sign a session cookie for any reviewer. A file that is not hex made every /ui page a
    500. Both are replaced by a new secret (owner-only), and a cookie signed with the empty key is refused."""
    monkeypatch.delenv("SIGHTLINE_SESSION_SECRET", raising=False)
    bundle = make_bundle(tmp_path)
    (tmp_path / SECRET_FILE).write_text(content)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_key("ann", ["review"])
    ann_id = store.list_keys()[0]["id"]
    with serving(bundle, database_url=store.url) as c:
        r = c.get("/ui/review", headers={"Cookie": f"sl_session={_forged(b'', ann_id, 'ann')}"},
                  follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/signin", r.text[:200]
        assert c.get("/ui/signin").status_code == 200
    secret = (tmp_path / SECRET_FILE).read_text().strip()
    assert len(bytes.fromhex(secret)) == 32 and (tmp_path / SECRET_FILE).stat().st_mode & 0o077 == 0
    assert load_secret(tmp_path) == bytes.fromhex(secret)  # kept from now on
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left behind
    store.close()


def test_processes_creating_the_secret_at_once_all_read_one_whole_secret(tmp_path, monkeypatch):
    """Replicas sharing a folder start together: one created the file and wrote it after; another read it in
    between (the empty key) or failed on the existing file (a 500). Every caller now gets the same 32 bytes."""
    monkeypatch.delenv("SIGHTLINE_SESSION_SECRET", raising=False)
    got: list[bytes] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def one() -> None:
        start.wait()
        try:
            got.append(load_secret(tmp_path))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(got) == 8 and len(set(got)) == 1 and len(got[0]) == 32
