"""What uvicorn's httptools protocol lets through: a request head of any size (a 20 MB header was accumulated and
answered), a head trickled byte by byte, and a body that stalls, each holding a connection as long as the client
liked. `sightline serve` runs uvicorn with serve.protocol's options; the body's idle timeout is the app's."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest
from serve_tiny import encode, make_bundle, photo, quick_uvicorn_stops


@contextmanager
def served(bundle, **overrides):
    """uvicorn with the options `sightline serve` passes (serve.protocol.uvicorn_options); yields the port."""
    import uvicorn

    from sightline.serve.app import create_app
    from sightline.serve.protocol import uvicorn_options
    from sightline.serve.settings import Settings

    quick_uvicorn_stops()  # as serve_tiny's servers
    settings = Settings(bundle=bundle, **{"rate_limit_per_minute": 0, "threads": 1, "monitor": False,
                                          "require_api_key": False, **overrides})
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning",
                                           **uvicorn_options(settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.005)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _exchange(port: int, parts, *, pause_s: float = 0.0, read_s: float = 5.0) -> bytes:
    """Send `parts` (pausing between them), then read until the server closes or `read_s` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as s:
        try:
            for i, part in enumerate(parts):
                time.sleep(pause_s if i else 0.0)
                s.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return got


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("heads"))


def test_a_huge_header_is_431_and_closed_before_it_is_all_read(bundle):
    with served(bundle, max_header_bytes=4096) as port:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 18)
        got = _exchange(port, [head[i:i + 65536] for i in range(0, len(head), 65536)])
        assert got.startswith(b"HTTP/1.1 431 "), got[:200]
        assert b"above 4096 bytes" in got and b"connection: close" in got.lower()
        # a head under the cap is answered, several requests on one connection too
        ok = _exchange(port, [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Small: " + b"a" * 3000 + b"\r\n\r\n"
                              b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
        assert ok.count(b"HTTP/1.1 200 OK") == 2, ok[:300]


def test_a_head_trickled_slowly_is_408_and_closed(bundle):
    # the head never completes, so nothing has to arrive in time: a 0.1 s timeout, the client still trickling past it
    with served(bundle, head_timeout_s=0.1) as port:
        t0 = time.monotonic()
        got = _exchange(port, [b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 1\r\n"],
                        pause_s=0.05)
        assert got.startswith(b"HTTP/1.1 408 "), got[:200]
        assert b"within 0.1 s" in got and time.monotonic() - t0 < 3
        assert _exchange(port, [], read_s=3).startswith(b"HTTP/1.1 408 ")  # a connection that sends nothing


def test_a_stalled_body_is_408_and_closed(bundle):
    jpeg = encode(photo(0, 40, 32))
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + jpeg + b"\r\n--b--\r\n"
    head = (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: %d\r\n\r\n" % len(part))
    # 0.25 s: the pause under it below leaves the same 0.2 s of slack as 0.1 s under 0.3 s did
    with served(bundle, body_idle_timeout_s=0.25) as port:
        t0 = time.monotonic()
        got = _exchange(port, [head + part[:100]], read_s=5)  # the rest never comes
        assert got.startswith(b"HTTP/1.1 408 "), got[:300]
        assert b"no part of the request body arrived for 0.25 s" in got and b"connection: close" in got.lower()
        assert time.monotonic() - t0 < 3
        again = head.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
        ok = _exchange(port, [again + part[:100], part[100:]], pause_s=0.05)  # a pause under the timeout is fine
        assert b"HTTP/1.1 200 OK" in ok, ok[:300]
