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

__all__ = ["COOKIE", "CSRF_COOKIE", "SessionSigner", "load_secret", "same_token", "check_secret_env",
           "MIN_SECRET_CHARS"]

COOKIE = "sl_session"
CSRF_COOKIE = "sl_csrf"  # before sign-in: double-submit token for the sign-in form
SECRET_FILE = "session_secret"
log = logging.getLogger("sightline.serve")
SECRET_BYTES = 32  # a new secret's length
_MIN_SECRET_BYTES = 16  # a kept secret shorter than this (an empty file, a few bytes) is damaged, never used
# SIGHTLINE_SESSION_SECRET is used as given (its UTF-8 bytes): 32 characters of a random hex or base64 string carry
# 128 bits or more. "secret" or "changeme" signs sessions anyone can forge for any reviewer by guessing it.
MIN_SECRET_CHARS = 32
_MIN_DISTINCT_CHARS = 8  # "aaaa..." or "abababab..." is long, and as guessable as a short one
ENV_SECRET = "SIGHTLINE_SESSION_SECRET"


def check_secret_env() -> None:
    """Refuse a SIGHTLINE_SESSION_SECRET too short or too repetitive to be safe (UserInputError, one line, saying
    how to make one); an unset or empty one is fine (the kept secret file is used)."""
    from sightline.errors import UserInputError

    env = os.environ.get(ENV_SECRET)
    if not env:
        return
    if len(env) < MIN_SECRET_CHARS or len(set(env)) < _MIN_DISTINCT_CHARS:
        why = (f"is {len(env)} characters long" if len(env) < MIN_SECRET_CHARS
               else f"repeats {len(set(env))} distinct characters")
        raise UserInputError(
            f"{ENV_SECRET} {why}: anyone who guesses it can sign in as any reviewer; use at least "
            f"{MIN_SECRET_CHARS} random characters, the same on every replica, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_hex(32))'` (or unset it to use a generated one).")


def load_secret(folder: Path | None) -> bytes:
    """SIGHTLINE_SESSION_SECRET, else `folder/session_secret` (created with 32 random bytes when missing); without
    a folder, a secret of this process only (logged: sessions end when it stops).

    The file is written whole before it appears under its name (a private temporary file, then a hard link), so a
    process reading it never sees it half written, and of several processes creating it at once one wins and all
    use its secret. A damaged file (empty after a crash or a full disk, not hex, under 16 bytes) is replaced with a
    new secret and a warning: read as it was, an empty file was the empty HMAC key, with which anyone could sign a
    session for any reviewer."""
    env = os.environ.get(ENV_SECRET)
    if env:
        check_secret_env()  # never sign with a guessable secret, whoever started the app
        return env.encode()
    if folder is None:
        log.warning(
            "web app sessions end when this process stops: no local folder keeps a session secret (a server database "
            "and a registry at a URL); set SIGHTLINE_SESSION_SECRET, the same on every replica.")
        return secrets.token_bytes(SECRET_BYTES)
    path = folder / SECRET_FILE
    for _ in range(3):  # another process may replace a damaged file meanwhile: read again what is there then
        secret, damaged = _read_secret(path)
        if secret is not None:
            return secret
        # a missing file is created only if it is still missing (another process's, made since, is kept)
        _write_secret(path, replace=damaged)
    raise RuntimeError(f"{path}: the session secret could not be read back after writing it")  # pragma: no cover


def _read_secret(path: Path) -> tuple[bytes | None, bool]:
    """(the kept secret, False); (None, False) when the file is missing; (None, True) when it is damaged (logged)."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None, False
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) >= _MIN_SECRET_BYTES:
        return secret, False
    log.warning("%s is damaged (%s); a new session secret replaces it, and browser sessions signed before end.",
                path, "empty" if not text else f"not a hex secret of at least {_MIN_SECRET_BYTES} bytes")
    return None, True


def _write_secret(path: Path, *, replace: bool) -> None:
    """A new secret at `path`, owner-only (0600), whole or not at all. Without `replace` an existing file (another
    process's, written whole) is kept."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{SECRET_FILE}-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_bytes(SECRET_BYTES).hex())
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails when the name exists: the first process to get there wins
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links
                if not path.exists():
                    os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


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
