"""Signed session cookies for the web app (HMAC-SHA256, standard library only).

A cookie is `base64url(json payload) + "." + base64url(hmac)`; the payload holds the key's id and name, its
roles, a CSRF token and an expiry (unix seconds). The secret is `SIGHTLINE_SESSION_SECRET`, or a random one
generated once and kept (mode 0600) in the data folder beside the database, so sessions survive a restart.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

__all__ = ["COOKIE", "CSRF_COOKIE", "SessionSigner", "load_secret", "same_token"]

COOKIE = "sl_session"
CSRF_COOKIE = "sl_csrf"  # before sign-in: double-submit token for the sign-in form
SECRET_FILE = "session_secret"


def load_secret(folder: Path | None) -> bytes:
    """SIGHTLINE_SESSION_SECRET, else `folder/session_secret` (created with 32 random bytes when missing); without
    a folder, a secret of this process only (logged: sessions end when it stops)."""
    env = os.environ.get("SIGHTLINE_SESSION_SECRET")
    if env:
        return env.encode()
    if folder is None:
        logging.getLogger("sightline.serve").warning(
            "web app sessions end when this process stops: no local folder keeps a session secret (a server database "
            "and a registry at a URL); set SIGHTLINE_SESSION_SECRET, the same on every replica.")
        return secrets.token_bytes(32)
    path = folder / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret.hex().encode())
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return secret


def same_token(presented: object, expected: object) -> bool:
    """Constant-time equality of two tokens as text. `hmac.compare_digest` raises TypeError on a str with any
    non-ASCII character, and a cookie, a form field or a header is whatever the client sent: compare UTF-8 bytes
    (surrogatepass: JSON can carry a lone surrogate), so a forged token is a mismatch, never a 500."""
    return hmac.compare_digest(str(presented).encode("utf-8", "surrogatepass"),
                               str(expected).encode("utf-8", "surrogatepass"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    def __init__(self, secret: bytes, max_age_s: float = 8 * 3600) -> None:
        self.secret = secret
        self.max_age_s = max_age_s

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self.secret, body.encode(), hashlib.sha256).digest())

    def sign(self, payload: dict[str, Any]) -> str:
        body = _b64(json.dumps({**payload, "exp": int(time.time() + self.max_age_s)},
                               separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def verify(self, cookie: str | None) -> dict[str, Any] | None:
        """The payload of a cookie this server signed and that has not expired; None otherwise."""
        if not cookie or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        if not same_token(mac, self._mac(body)):
            return None
        try:
            payload = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(payload, dict) or payload.get("exp", 0) < time.time():
            return None
        return payload
