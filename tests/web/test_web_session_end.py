"""Signing out of the web app ends the session in the database, for every replica sharing it: a copy of the signed
cookie stops working at once, not when it expires (up to 8 h later)."""
from __future__ import annotations

import sys
from contextlib import closing
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import fresh_database, make_bundle, serving, tls

from sightline.storage.store import Store


def _sign_in(base_url, key: str) -> tuple[httpx.Client, str, str]:
    """A browser signed in with `key`: (client, its session cookie, its CSRF token)."""
    web = httpx.Client(base_url=base_url, timeout=30, verify=tls())
    page = web.get("/ui/signin")
    web.post("/ui/signin", data={"key": key, "csrf": page.text.split('name="csrf" value="')[1].split('"')[0]})
    review = web.get("/ui/review")
    assert review.status_code == 200, review.text[:200]
    return web, web.cookies["sl_session"], review.text.split('name="csrf-token" content="')[1].split('"')[0]


def _page_with(base_url, cookie: str) -> httpx.Response:
    """/ui/review with only this cookie (a copy of it, in another browser)."""
    return httpx.get(f"{base_url}/ui/review", headers={"Cookie": f"sl_session={cookie}"}, timeout=30, verify=tls())


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_copied_cookie_stops_working_on_every_replica_after_sign_out(tmp_path, kind):
    """Sign-out only deleted the cookie in the browser: a copy of it (a shared machine, a proxy log) signed its
    holder in as the reviewer for up to 8 h after. Two replicas on one database: signing out on one ends the
    session on both; revoking the key ends the others."""
    bundle = make_bundle(tmp_path)
    with fresh_database(kind, tmp_path) as url:
        store = Store(url)
        key = store.create_key("ann", ["review"])
        try:
            with serving(bundle, database_url=url) as a, serving(bundle, database_url=url) as b:
                web, cookie, csrf = _sign_in(a.base_url, key)
                with closing(web):
                    assert _page_with(b.base_url, cookie).status_code == 200  # the replicas share the session
                    assert web.post("/ui/signout", data={"csrf": csrf}).status_code == 303  # to the sign-in page
                for replica in (a, b):
                    r = _page_with(replica.base_url, cookie)
                    assert r.status_code == 303 and r.headers["location"] == "/ui/signin", r.text[:200]
                    r = replica.get("/ui/signin", headers={"Cookie": f"sl_session={cookie}"}, follow_redirects=False)
                    assert r.status_code == 200  # the form, not a redirect to the review page and back
                web, cookie, _ = _sign_in(b.base_url, key)
                with closing(web):
                    assert _page_with(a.base_url, cookie).status_code == 200
                    assert store.revoke_key("ann") == 1
                    assert _page_with(a.base_url, cookie).headers.get("location") == "/ui/signin"
                    assert web.get("/ui/review").headers.get("location") == "/ui/signin"
        finally:
            store.close()


def test_a_cookie_signed_before_sessions_had_rows_is_not_a_session(tmp_path, monkeypatch):
    """A cookie without a session id (made by the version before, or forged with a leaked secret) cannot be
    ended, so it is no session: its holder signs in again."""
    from sightline.serve.web.session import SessionSigner

    secret = "0123456789abcdef" * 4
    monkeypatch.setenv("SIGHTLINE_SESSION_SECRET", secret)
    bundle = make_bundle(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    key = store.create_key("ann", ["review"])
    key_id = store.list_keys()[0]["id"]
    old = SessionSigner(secret.encode()).sign({"key_id": key_id, "name": "ann", "csrf": "x"})
    with serving(bundle, database_url=url) as c:
        r = c.get("/ui/review", headers={"Cookie": f"sl_session={old}"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/ui/signin"
        web, _, _ = _sign_in(c.base_url, key)  # the same secret signs working sessions
        web.close()
    store.close()
