"""A tiny exported bundle served by uvicorn on a free loopback port, for the role and image tests
(`from serve_tiny import ...`)."""
from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import io
import os
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from sightline.bundle import Bundle, Preprocessing
from sightline.models.factory import create_model

CLASSES = ["cat", "dog", "fox"]
POSTGRES = os.environ.get("SIGHTLINE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def open_store(kind: str, tmp_path: Path) -> Iterator:
    """A Store on a SQLite file in tmp_path, or on PostgreSQL in a schema of its own (dropped afterwards;
    pytest.skip with the reason when the server is unreachable)."""
    import pytest
    import sqlalchemy as sa

    from sightline.storage.store import Store

    if kind == "sqlite":
        store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
        try:
            yield store
        finally:
            store.close()
        return
    schema = f"sl_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = sa.create_engine(POSTGRES, connect_args={"connect_timeout": 3})
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server is a reason to skip
        pytest.skip(f"PostgreSQL at {POSTGRES} is unreachable ({type(exc).__name__}); set SIGHTLINE_TEST_POSTGRES_URL")
    store = Store(pg_options(POSTGRES, schema))
    try:
        yield store
    finally:
        store.close()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a fresh database: a SQLite file in tmp_path, or a schema of its own in SIGHTLINE_TEST_DATABASE_URL's
    database (dropped afterwards), so tests running at the same time on one server never see each other's tables;
    pytest.skip with the reason when PostgreSQL is unreachable."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'sightline.db'}"
        return
    import sqlalchemy as sa

    base = postgres_url()
    schema = f"sl_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield pg_options(base, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def pg_options(url: str, schema: str | None = None) -> str:
    """`url` with the libpq options the tests connect with: `schema` as the search path, and synchronous_commit
    off, so a commit does not wait for its WAL record to reach the disk (0.4 instead of 5 ms a commit here, and
    the tests commit one label or key at a time). Only a server crash could lose a commit; no test makes one."""
    options = "-csynchronous_commit%3Doff" + (f"%20-csearch_path%3D{schema}" if schema else "")
    return f"{url}{'&' if '?' in url else '?'}options={options}"


def postgres_url() -> str:
    """SIGHTLINE_TEST_DATABASE_URL once a connection to it works; pytest.skip with the reason otherwise."""
    import pytest

    url = os.environ.get("SIGHTLINE_TEST_DATABASE_URL")
    if not url:
        pytest.skip("PostgreSQL: set SIGHTLINE_TEST_DATABASE_URL=postgresql+psycopg://... (see DEVELOPERS.md)")
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "not available here"
        pytest.skip(f"PostgreSQL at SIGHTLINE_TEST_DATABASE_URL is unreachable ({type(exc).__name__})")
    return url


@functools.cache
def tls() -> ssl.SSLContext:
    """One default SSL context for the tests' httpx clients (`httpx.Client(..., verify=tls())`): without it each
    client, and each httpx.get(), builds its own from the CA bundle, ~50 ms of CPU, although the tests only speak
    plain HTTP to loopback (~50 clients a run)."""
    return ssl.create_default_context()


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo(seed: int = 0, w: int = 40, h: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def calm(seed: int) -> bytes:
    """A smooth image (a colour, a gentle gradient, a little noise) as JPEG: the in-distribution kind."""
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    base = rng.uniform(60, 200, 3)
    ramp = np.linspace(-1, 1, w)[None, :, None] * rng.uniform(-30, 30, 3)
    pixels = np.clip(base + ramp + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def noise(seed: int) -> bytes:
    """Uniform RGB noise as JPEG: nothing like the calm images."""
    rng = np.random.default_rng(10_000 + seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


_MADE: dict[tuple, Path] = {}  # what cached() found or built in this process, by key
CACHE_ENV = "SIGHTLINE_TEST_BUNDLE_CACHE"  # set by tests/conftest.py: a folder all pytest workers of a run share


def cached(key: tuple, build: Callable[[Path], object], target: Path) -> Path:
    """`build(folder)` once per `key` for the whole test run, into a folder of its own; `target` becomes a copy of
    it. An ONNX export takes seconds and most tests only need *a* tiny exported bundle, so each (seed, version) is
    exported once and copied after (the copy is the test's own: a server may write beside it). The pytest workers
    share the folder: a lock per key makes one build while the others wait for it."""
    if key not in _MADE:
        root = Path(os.environ.get(CACHE_ENV) or tempfile.mkdtemp(prefix="sightline-test-bundles-"))
        os.environ.setdefault(CACHE_ENV, str(root))
        root.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
        folder = root / name
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not folder.is_dir():
                partial = root / f"{name}.partial-{os.getpid()}"
                build(partial)
                partial.rename(folder)  # complete or absent
        _MADE[key] = folder
    shutil.copytree(_MADE[key], target)
    return target


def make_bundle(root: Path, *, seed: int = 0, version: str = "1", folder: str = "bundle", onnx: bool = True) -> Path:
    """root/folder: test_efficientnet with random weights, "pets" `version` (cat/dog/fox; never confident:
    review_confidence 0.99, so every answer is queued), exported to ONNX unless `onnx` is False.

    Seed 0 is the network timm draws under torch seed 0, exported. Another seed with ONNX is seed 0's backbone and
    graph with the head timm draws under torch seed `seed` (`_draw_head`: ~0.1 s instead of a second export's ~2.5 s
    of CPU): other weights, another top class on about half of the images (the shadow tests' photos), another bundle
    hash, its graph checked against PyTorch as export checks it. Without ONNX every seed is the whole network timm
    draws under that seed (so seed 1 with and without ONNX share the head, not the backbone). Built once per
    (seed, onnx) for the whole run (`cached`), copied after, the copy's model.json given `version`."""
    def build(target: Path) -> None:
        if onnx and seed != 0:
            cached(("make_bundle", 0, True), build_seed_0, target)
            _draw_head(target, CLASSES, seed)
            return
        build_seed_0(target, seed)

    def build_seed_0(target: Path, seed: int = 0) -> None:
        from sightline.optimize.export import export

        torch.manual_seed(seed)
        model = create_model("test_efficientnet", len(CLASSES), weights="none")
        bundle = Bundle("test_efficientnet", CLASSES, Preprocessing(32), name="pets", version="1",
                        thresholds={"review_confidence": 0.99, "class_thresholds": {}})
        bundle.save(target, model.state_dict())
        if onnx:
            export(target)

    made = cached(("make_bundle", seed, onnx), build, root / folder)
    if version != "1":
        from sightline.bundle import load_bundle

        bundle = load_bundle(made)
        bundle.version = version
        bundle.write_json()
    return made


def make_bundle_with_classes(root: Path, classes: list[str], *, seed: int = 0, folder: str = "bundle") -> Path:
    """make_bundle(root) with `classes` (any number) in place of CLASSES: seed 0's backbone and graph with a new head
    drawn by timm under torch seed `seed` (`_draw_head`). For a test that needs another class list, not another
    network: a second ONNX export costs ~2.5 s of CPU, this ~0.1 s."""
    return _draw_head(make_bundle(root, folder=folder), classes, seed)


def _draw_head(folder: Path, classes: list[str], seed: int) -> Path:
    """The exported bundle in `folder` given a new head for `classes`, the one timm initialises under torch seed
    `seed`, written into weights.safetensors and into model.onnx (the head's weight is an initializer there; its
    bias, zero, is folded away); the graph is then checked against PyTorch as export checks it (export.check_parity
    on random inputs, recorded in model.json). Raises AssertionError when the graph no longer matches."""
    import onnx
    from onnx import numpy_helper

    from sightline.bundle import load_bundle
    from sightline.optimize.export import check_parity

    bundle = load_bundle(folder)
    model = bundle.load_model("cpu")
    old = model.get_classifier().weight.detach().numpy()  # (K, D)
    torch.manual_seed(seed)
    head = create_model("test_efficientnet", len(classes), weights="none").get_classifier()
    model.reset_classifier(len(classes))
    model.get_classifier().load_state_dict(head.state_dict())
    graph = onnx.load(str(bundle.onnx_path))
    (init,) = [i for i in graph.graph.initializer if np.array_equal(numpy_helper.to_array(i), old)]
    init.CopyFrom(numpy_helper.from_array(head.weight.detach().numpy(), init.name))
    del graph.graph.value_info[:]  # the shapes the exporter noted (the old head's among them): ORT infers them again
    for output in graph.graph.output:
        if output.name == "logits":
            output.type.tensor_type.shape.dim[1].dim_value = len(classes)
    onnx.save(graph, str(bundle.onnx_path))
    bundle.classes = list(classes)
    bundle.save(bundle.path, model.state_dict())
    size = bundle.preprocessing.input_size
    x = np.random.default_rng(seed).standard_normal((8, 3, size, size)).astype(np.float32)
    parity = check_parity(model.eval(), bundle.onnx_path, x)
    assert parity["ok"], f"{bundle.onnx_path} with a new head is not the model: {parity}"
    bundle.extra["export"].update(size_bytes=bundle.onnx_path.stat().st_size,
                                  parity={**parity, "split": None, "source": "random inputs (the head drawn again)"})
    bundle.write_json()
    return bundle.path


class _TenMsSleeps:
    """What uvicorn.server sees as `asyncio`: the module itself, except that its sleeps last at most 10 ms. uvicorn's
    server sleeps in four places, each a fixed 0.1 s (uvicorn 0.54, none configurable): the main loop between reads
    of `should_exit`, once after asking the connections to close, and between checks that the connections and
    tasks are gone. A stop took ~0.17 s of waiting (0.05 for the tick on average, 0.1 for the pause), ~40 servers a
    run. What the shutdown does, and the order, are uvicorn's own: only the polling is finer."""

    def __getattr__(self, name: str):
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay: float, result=None):
        return await asyncio.sleep(min(delay, 0.01), result)


class DictImages:
    """The ImageStore protocol (sightline.storage.images) over a dict, for tests that keep thousands of images and
    read the rows, not the store: fsspec's memory:// store looks through every name it holds on each exists(), once
    per image put (quadratic: ~0.7 s for 2,800 images), and a folder fsyncs each file. Both real stores are tested
    in tests/storage/test_storage_images.py."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs.setdefault(sha, data)
        return sha

    def get(self, sha256: str) -> bytes | None:
        return self.blobs.get(sha256)

    def exists(self, sha256: str) -> bool:
        return sha256 in self.blobs

    def delete(self, sha256: str) -> bool:
        return self.blobs.pop(sha256, None) is not None

    def size(self, sha256: str) -> int | None:
        return len(self.blobs[sha256]) if sha256 in self.blobs else None


def quick_uvicorn_stops() -> None:
    """uvicorn servers started in this process from now on stop in ~0.02 s, not ~0.17 (see _TenMsSleeps)."""
    import uvicorn.server

    if not isinstance(uvicorn.server.asyncio, _TenMsSleeps):  # once per process; any uvicorn.Server after it
        uvicorn.server.asyncio = _TenMsSleeps()


def more_polls(watcher, n: int, *, timeout_s: float = 15.0) -> None:
    """Until the registry watcher has made `n` whole polls that began after this call (a poll under way now ends
    first and is not one of them), at most `timeout_s`: a test waits for polls, not for the clock."""
    target, deadline = watcher.polls + n + 1, time.monotonic() + timeout_s
    while watcher.polls < target:
        assert time.monotonic() < deadline, f"{n} more registry polls within {timeout_s:.0f} s"
        time.sleep(0.01)


def start_server(app):
    """uvicorn serving `app` on a free loopback port in a daemon thread, once it accepts connections; returns
    (server, thread, port). Stop it with `server.should_exit = True` and `thread.join(...)`."""
    import uvicorn

    quick_uvicorn_stops()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started:
        assert thread.is_alive() and time.time() < deadline, "server did not start"
        time.sleep(0.005)  # a flag read, nothing more: ~40 servers a run waited 25 ms each on average at 0.05 s
    return srv, thread, srv.servers[0].sockets[0].getsockname()[1]


@contextmanager
def started(app) -> Iterator[int]:
    """start_server(app) for the length of the block; yields the port, stops the server after."""
    srv, thread, port = start_server(app)
    try:
        yield port
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serving(bundle: Path, **overrides) -> Iterator[httpx.Client]:
    """An httpx client on uvicorn serving `bundle` with Settings(**overrides)."""
    from sightline.serve.app import create_app
    from sightline.serve.settings import Settings

    settings = Settings(bundle=bundle, **{"rate_limit_per_minute": 0, "key_cache_s": 0, "batch_max_wait_ms": 5,
                                          "threads": 1, "monitor": False, **overrides})
    with started(create_app(settings)) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                                                           verify=tls()) as client:
        yield client


@contextmanager
def keyed_service(root: Path, **overrides) -> Iterator[tuple[httpx.Client, dict[str, str], str]]:
    """make_bundle(root) served on a SQLite file in root, with a key 'predict' (role predict) and a key 'review'
    (predict and review); yields (client, {name: key}, database url). `overrides` are Settings fields."""
    from sightline.storage.store import Store

    bundle = make_bundle(root)
    url = f"sqlite:///{root / 'db.sqlite'}"
    store = Store(url)
    try:
        keys = {"predict": store.create_key("p", ["predict"]), "review": store.create_key("r", ["predict", "review"])}
    finally:
        store.close()
    with serving(bundle, database_url=url, **overrides) as client:
        yield client, keys, url


def one_line(response: httpx.Response, status: int, *words: str) -> str:
    """The answer has `status` and a `detail` of one line holding every one of `words`; returns the detail."""
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail, detail
    for word in words:
        assert word in detail, (word, detail)
    return detail


def predict(client: httpx.Client, key: str, blobs: list[bytes]) -> httpx.Response:
    return client.post("/v1/predict", files=[("file", (f"{i}.jpg", b)) for i, b in enumerate(blobs)],
                       headers={"X-API-Key": key})
