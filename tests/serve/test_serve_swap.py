"""Hot swap (`serve --registry`): uvicorn on 127.0.0.1 serving the registry's champion while a stream of concurrent
requests runs; a promote and a rollback switch the model with no failed request, every answer names its version,
and a promoted version without an ONNX file is logged once while the old model keeps serving."""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from serve_tiny import encode, make_bundle, more_polls, photo, started, tls


def _bundle(root: Path, seed: int, version: str, *, onnx: bool = True) -> Path:
    return make_bundle(root, seed=seed, version=version, folder=f"b{version}", onnx=onnx)


@contextmanager
def _registry_serving(registry_root: Path, url: str, **overrides):
    """uvicorn on a free loopback port serving the registry's champion (alias polled every 0.1 s); yields the URL
    and the app."""
    from sightline.serve.app import create_app
    from sightline.serve.settings import Settings

    settings = Settings(registry=registry_root, database_url=url, **{
        "registry_poll_s": 0.1, "rate_limit_per_minute": 0, "key_cache_s": 0, "batch_max_wait_ms": 5, "threads": 1,
        "monitor": False, **overrides})
    app = create_app(settings)
    with started(app) as port:
        yield f"http://127.0.0.1:{port}", app


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory):
    """Three registry versions (v1 champion, v2 other weights, v3 without model.onnx) and the service."""
    from sightline.loop.registry import Registry
    from sightline.storage.store import Store

    root = tmp_path_factory.mktemp("swap")
    url = f"sqlite:///{root / 'sightline.db'}"
    registry = Registry(url, root=root / "registry")
    registry.add(_bundle(root, 0, "1"), alias="champion")
    registry.add(_bundle(root, 1, "2"))
    registry.add(_bundle(root, 2, "3", onnx=False))
    store = Store(url)
    key = store.create_key("client")
    store.close()
    try:
        with _registry_serving(root / "registry", url) as (base, app):
            yield base, key, registry, url, app
    finally:
        registry.close()


@contextmanager
def _stream(base: str, key: str, clients: int = 6):
    """`clients` threads posting one image each in a loop; yields the list of (sent, answered, status, version)."""
    results: list[tuple[float, float, int, str | None]] = []
    stop = threading.Event()
    blob = encode(photo(3, 40, 32))

    def client() -> None:
        with httpx.Client(base_url=base, timeout=60, verify=tls()) as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post("/v1/predict", files=[("file", ("a.jpg", blob))], headers={"X-API-Key": key})
                    ref = r.json()["model"].get("registry_version") if r.status_code == 200 else None
                    results.append((sent, time.monotonic(), r.status_code, ref))
                except httpx.HTTPError as exc:
                    results.append((sent, time.monotonic(), -1, type(exc).__name__))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield results
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)


def _wait_until(condition, timeout_s: float, what: str, every: float = 0.05) -> None:
    """Until `condition()`; checked `every` seconds (10 ms for a read of the test's own lists, 50 ms where a check
    is a request to the service under load)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s"
        time.sleep(every)


def _switch_under_load(base: str, key: str, app, move, target: str) -> list:
    """The stream runs before the move, through the swap and the old model's retirement, and on after the switch
    until the old model is retired and a dozen answers to requests sent 0.2 s after the switch are in: it waits on
    answers and the retirement, not on the clock (it streamed a second after the switch, 6 clients busy: ~1 s of
    CPU a switch)."""
    watcher = app.state.sightline.watcher
    retired = watcher.retired
    with _stream(base, key) as results:
        _wait_until(lambda: len(results) >= 12, 30, "no answers before the move")
        move()
        t_move = time.monotonic()
        _wait_until(lambda: httpx.get(f"{base}/v1/model", verify=tls()).json()["registry"]["version"] == target, 15,
                    f"the service did not switch to {target}")
        t_switch = time.monotonic()
        assert t_switch - t_move < 10
        # the switch is one assignment, made before /v1/model named the target: a request sent after that is the
        # target's; the 0.2 s are a margin only
        t_late = t_switch + 0.2
        _wait_until(lambda: watcher.retired > retired, 30, "the old model was not retired", every=0.01)
        _wait_until(lambda: sum(sent > t_late for sent, *_ in list(results)) >= 12, 30, "no answers after the switch",
                    every=0.01)
    assert results and all(status == 200 for _, _, status, _ in results), \
        {(s, v) for _, _, s, v in results if s != 200}
    assert all(v in ("v1", "v2") for *_, v in results)  # every answer names the version that produced it
    late = [v for sent, _, _, v in results if sent > t_late]  # the switch is one assignment: all on target
    assert late and set(late) == {target}
    assert any(v != target for sent, _, _, v in results if sent < t_move)
    return results


def test_promote_and_rollback_under_load_fail_no_request(registry_server) -> None:
    base, key, registry, url, app = registry_server
    ready = httpx.get(f"{base}/readyz", verify=tls()).json()
    assert ready["model"]["registry_version"] == "v1" and ready["model"]["version"] == "1"
    _switch_under_load(base, key, app, lambda: registry.promote("v2", reason="test"), "v2")
    info = httpx.get(f"{base}/v1/model", verify=tls()).json()
    assert info["version"] == "2" and info["registry"]["bundle_hash"] == registry.resolve("v2").bundle_hash
    assert httpx.get(f"{base}/readyz", verify=tls()).json()["model"]["registry_version"] == "v2"
    _switch_under_load(base, key, app, lambda: registry.rollback(reason="test"), "v1")
    # the stored rows name the version too
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        stored = {r[0] for r in conn.execute(sa.text("SELECT DISTINCT model_version FROM predictions"))}
    engine.dispose()
    h1, h2 = registry.resolve("v1").bundle_hash[:12], registry.resolve("v2").bundle_hash[:12]
    assert stored == {f"1+v1.{h1}", f"2+v2.{h2}"}


def test_version_without_onnx_keeps_the_old_model_with_one_log_line(registry_server, caplog, monkeypatch) -> None:
    base, key, registry, _, app = registry_server
    before = httpx.get(f"{base}/v1/model", verify=tls()).json()["registry"]["version"]
    # the watcher polls every 10 ms in this test (its own copy of the settings); the test waits for its polls, not
    # for the clock (it slept 2 x 0.5 s, five 0.1 s polls each)
    watcher = app.state.sightline.watcher
    monkeypatch.setattr(watcher, "settings", watcher.settings.model_copy(update={"registry_poll_s": 0.01}))
    with caplog.at_level(logging.INFO, logger="sightline.serve"):
        registry.promote("v3", reason="no onnx")
        _wait_until(lambda: any("cannot be served" in rec.getMessage() for rec in caplog.records), 15,
                    "no log line about v3", every=0.01)
        more_polls(watcher, 5)  # several more polls: the line is not repeated
        r = httpx.post(f"{base}/v1/predict", files=[("file", ("a.jpg", encode(photo(1))))],
                       headers={"X-API-Key": key}, verify=tls())
    assert r.status_code == 200 and r.json()["model"]["registry_version"] == before
    assert httpx.get(f"{base}/v1/model", verify=tls()).json()["registry"]["version"] == before
    lines = [rec.getMessage() for rec in caplog.records if "cannot be served" in rec.getMessage()]
    assert len(lines) == 1 and "v3" in lines[0] and "model.onnx" in lines[0], lines
    swaps = watcher.swaps
    registry.rollback(reason="back")  # the alias returns to what is served: no swap, no new line
    more_polls(watcher, 5)
    assert httpx.get(f"{base}/v1/model", verify=tls()).json()["registry"]["version"] == before
    assert watcher.swaps == swaps


def test_monitoring_follows_the_new_versions_reference_profile(tmp_path) -> None:
    from test_serve_monitor import build_profiled_bundle

    from sightline.loop.registry import Registry
    from sightline.serve.monitoring import profile_fingerprint
    from sightline.storage.store import Store

    url = f"sqlite:///{tmp_path / 'sightline.db'}"
    build_profiled_bundle(tmp_path / "profiled")
    with Registry(url, root=tmp_path / "registry") as registry:
        registry.add(_bundle(tmp_path, 0, "1"), alias="champion")  # no reference profile: monitoring off
        v2 = registry.add(tmp_path / "profiled").version
        store = Store(url)
        key = store.create_key("ops", ["predict", "review"])
        store.close()
        with _registry_serving(tmp_path / "registry", url, monitor=True) as (base, _):
            headers = {"X-API-Key": key}
            assert httpx.get(f"{base}/v1/monitor", headers=headers, verify=tls()).json()["enabled"] is False
            registry.promote(v2.ref)
            deadline = time.time() + 15
            while httpx.get(f"{base}/v1/model", verify=tls()).json()["registry"]["version"] != v2.ref:
                assert time.time() < deadline, "no switch within 15 s"
                time.sleep(0.02)
            status = httpx.get(f"{base}/v1/monitor", headers=headers, verify=tls()).json()
            assert status["enabled"] is True
            assert status["profile"]["fingerprint"] == profile_fingerprint(Path(v2.path))
            r = httpx.post(f"{base}/v1/predict", files=[("file", ("a.jpg", encode(photo(5))))], headers=headers,
                           verify=tls())
            assert r.status_code == 200 and r.json()["model"]["registry_version"] == v2.ref
            assert r.json()["predictions"][0]["ood_score"] is not None  # the new profile scores the answers


def test_the_web_app_serving_a_registry_on_postgresql_keeps_its_session_secret_beside_the_registry(tmp_path,
                                                                                                 monkeypatch):
    """No bundle folder and no SQLite file to keep the session secret beside: every /ui page was a 500 (TypeError
    on the bundle folder None). The secret is kept beside the registry's copies, as the kept images are."""
    from serve_tiny import fresh_database

    from sightline.loop.registry import Registry
    from sightline.serve.web.session import load_secret
    from sightline.storage.store import Store

    monkeypatch.delenv("SIGHTLINE_SESSION_SECRET", raising=False)
    with fresh_database("postgresql", tmp_path) as url:
        with Registry(url, root=tmp_path / "registry") as registry:
            registry.add(_bundle(tmp_path, 0, "1"), alias="champion")
        store = Store(url)
        key = store.create_key("ann", ["review"])
        store.close()
        with _registry_serving(tmp_path / "registry", url) as (base, _), httpx.Client(base_url=base, timeout=30,
                                                                                         verify=tls()) as c:
            page = c.get("/ui/signin")
            assert page.status_code == 200, page.text
            csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
            assert c.post("/ui/signin", data={"key": key, "csrf": csrf}).status_code == 303
            assert c.get("/ui/review").status_code == 200
    assert (tmp_path / "session_secret").is_file()
    assert len(load_secret(None)) == 32  # no folder at all (a registry at a URL): this process's own secret


def test_the_watcher_does_not_swap_to_a_copy_changed_after_the_move(tmp_path, caplog) -> None:
    """`serve --registry` checks the champion's copy at start; the watcher did not when the alias moved: a copy
    changed between the promote and the poll would have answered under the new version's name and hash."""
    import asyncio
    import os
    import types

    from sightline.loop.registry import Registry
    from sightline.serve.swap import RegistryWatcher

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", root=tmp_path / "copies")
    v1 = registry.add(_bundle(tmp_path, 0, "1"), alias="champion").version
    v2 = registry.add(_bundle(tmp_path / "b", 1, "2")).version
    registry.promote(v2.ref)
    changed = Path(v2.path) / "model.json"
    os.chmod(changed, 0o644)
    changed.write_text(changed.read_text().replace('"2"', '"2x"', 1))
    settings = types.SimpleNamespace(alias="champion", int8=False, registry_poll_s=1.0)
    served = types.SimpleNamespace(bundle_hash=v1.bundle_hash, stored_version=f"1+{v1.ref}")
    watcher = RegistryWatcher(types.SimpleNamespace(settings=settings, served=served), registry)
    with caplog.at_level(logging.ERROR, logger="sightline.serve"):
        assert asyncio.run(watcher.check()) is False
    assert watcher.swaps == 0 and served.bundle_hash == v1.bundle_hash
    assert any("changed since it was added" in r.getMessage() and v2.ref in r.getMessage() for r in caplog.records)
    registry.close()
