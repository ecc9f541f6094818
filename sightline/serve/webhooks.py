"""Signed webhooks per the Standard Webhooks specification (https://www.standardwebhooks.com), for alert events.

Every request carries `webhook-id` (the event id: the same on every retry, so receivers drop duplicates),
`webhook-timestamp` (Unix seconds, fresh on each attempt) and `webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">` keyed with the secret's bytes (the secret is `whsec_` + base64). A 2xx answer is
success; anything else, or no answer, is retried with exponential backoff (base, 2 x base, 4 x base, ...).

The request is sent with the standard library (urllib, in a worker thread), so the service needs no HTTP client
package; redirects are not followed (a redirected POST would lose its body) and count as failures.

Example:
    >>> key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    >>> ok = await deliver("https://ops.example/hooks", key, "drift-1", {"type": "sightline.alert.fired"})
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import anyio

from sightline.errors import UserInputError

__all__ = ["SECRET_PREFIX", "parse_secret", "sign", "signed_headers", "post", "deliver"]

SECRET_PREFIX = "whsec_"
log = logging.getLogger("sightline.alerts")


def parse_secret(secret: str) -> bytes:
    """The signing key of a `whsec_<base64>` secret; UserInputError naming the setting when it is malformed."""
    if not secret.startswith(SECRET_PREFIX):
        raise UserInputError("SIGHTLINE_ALERT_WEBHOOK_SECRET must start with 'whsec_' followed by base64 "
                             "(e.g. whsec_ + `openssl rand -base64 32`)")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise UserInputError("SIGHTLINE_ALERT_WEBHOOK_SECRET: the part after 'whsec_' is not valid base64") from None
    if len(key) < 16:
        raise UserInputError(f"SIGHTLINE_ALERT_WEBHOOK_SECRET holds {len(key)} bytes; use at least 16 (24-64 "
                             "recommended)")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>`."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def signed_headers(key: bytes, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sign(key, msg_id, ts, body),
            "content-type": "application/json"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(url: str, body: bytes, headers: dict[str, str], *, timeout_s: float = 10.0) -> int:
    """POST `body`; the HTTP status (3xx included, not followed). Raises OSError (URLError, timeouts) when no
    answer came."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


async def deliver(
    url: str,
    key: bytes,
    msg_id: str,
    payload: dict[str, Any],
    *,
    attempts: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 10.0,
    stop: Callable[[], bool] | None = None,
) -> bool:
    """POST `payload` (JSON) to `url`, signed, up to `attempts` times; True on a 2xx answer. Waits backoff_s x
    2^i between attempts; `stop()` True ends the retries early (shutdown). Network errors are logged and
    retried, never raised."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    for attempt in range(attempts):
        headers = signed_headers(key, msg_id, body)  # a fresh timestamp per attempt: receivers check its age
        try:
            status = await anyio.to_thread.run_sync(lambda: post(url, body, headers, timeout_s=timeout_s))
            if 200 <= status < 300:
                return True
            problem = f"HTTP {status}"
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        last = attempt == attempts - 1
        log.warning("webhook %s attempt %d/%d to %s failed (%s)%s", msg_id, attempt + 1, attempts, url, problem,
                    "; kept in the outbox for the next monitor run" if last else "; retrying")
        if last or (stop is not None and stop()):
            return False
        await asyncio.sleep(backoff_s * 2 ** attempt)
    return False
