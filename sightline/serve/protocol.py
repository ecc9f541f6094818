"""The HTTP/1.1 protocol `sightline serve` runs uvicorn with: its httptools protocol with a cap on a request's head
(request line and headers) and a time limit for receiving it.

uvicorn's httptools protocol (the one `uvicorn[standard]` picks) caps neither: a 20 MB header was accumulated in
memory and answered, and a client trickling a head byte by byte held its connection for as long as it liked
(`timeout_keep_alive` only covers the wait between requests). h11 has `h11_max_incomplete_event_size`, at the
cost of a pure-Python parser on every request. Here the bytes received while a head is incomplete are counted at
each read (so at most one read, 64 KiB, past the cap is ever held) and a head over `max_head_bytes` is answered
431 and the connection closed; a head not complete `head_timeout_s` after the connection opened, or after the
first byte of a request on a kept-alive connection, is answered 408 and closed. The body's own pace is the app's
(`BodyLimitMiddleware`: 408 when no chunk arrives for `body_idle_timeout_s`).

Without httptools (uvicorn without its extras) the same cap is h11's `h11_max_incomplete_event_size`.
"""
from __future__ import annotations

import json
from typing import Any

__all__ = ["uvicorn_options"]


def _answer(status: int, reason: bytes, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, reason, len(body))) + body


def _limited_httptools(max_head_bytes: int, head_timeout_s: float) -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    too_large = _answer(431, b"Request Header Fields Too Large",
                        f"the request line and headers are above {max_head_bytes} bytes; send fewer or shorter "
                        "headers (a cookie or a token that grew?).")
    too_slow = _answer(408, b"Request Timeout",
                       f"the request line and headers did not arrive within {head_timeout_s:g} s; send the request "
                       "again.")

    class HeadLimitedHttpTools(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            self._head_open, self._head_bytes, self._head_timer = True, 0, None
            super().connection_made(transport)
            self._start_head_timer()  # a connection that sends nothing at all is closed too

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._head_open:
                self._head_bytes += len(data)
                self._start_head_timer()
            super().data_received(data)
            # still in the head after this read (a head completed in it reset the count): every byte counted since
            # the request began is head
            if self._head_open and self._head_bytes > max_head_bytes:
                self._refuse(too_large)

        def on_headers_complete(self) -> None:
            self._head_open, self._head_bytes = False, 0
            self._stop_head_timer()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_open, self._head_bytes = True, 0  # the next request's head; its timer starts with its bytes

        def _start_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout_s, self._head_too_slow)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_too_slow(self) -> None:
            self._head_timer = None
            if self._head_open and (self.cycle is None or self.cycle.response_complete):
                self._refuse(too_slow)

        def _refuse(self, answer: bytes) -> None:
            self._stop_head_timer()
            self._head_open = False
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

    return HeadLimitedHttpTools


def uvicorn_options(settings: Any) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config that apply the head cap and timeout of `settings`
    (max_header_bytes, head_timeout_s) and its limit_concurrency."""
    options: dict[str, Any] = {"limit_concurrency": settings.limit_concurrency}
    try:
        import httptools  # noqa: F401 - uvicorn's own choice when it is installed
    except ImportError:
        options.update(http="h11", h11_max_incomplete_event_size=settings.max_header_bytes)
        return options
    options["http"] = _limited_httptools(settings.max_header_bytes, settings.head_timeout_s)
    return options
