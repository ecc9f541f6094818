"""Shared fixtures. Tests make their own tiny data; nothing here reads ../shared."""
from __future__ import annotations

import gc
import os
import uuid

import pytest

# Two CPU cores on CI, two pytest workers: one intra-op thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SIGHTLINE_TEST", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding a test marked `slow` first, the order otherwise kept. A file is one unit of work under
    `--dist loadfile`; with `--no-loadscope-reorder` (xdist otherwise queues the files with the most tests first,
    which puts the few-but-slow ones last) the longest units start first, so no worker is left finishing one
    while the other waits."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Collection imported torch, Lightning, timm and the rest: about a million objects that live as long as the
    worker. Frozen, the collector stops walking them at each full collection (14 a worker, 0.25 s each); full
    collections then come at most every 100 young ones, not 10 (the tests' own objects: 3.5 -> 1.4 s a worker).
    Frozen objects are still freed when nothing refers to them; only cycles among them wait for the exit."""
    gc.freeze()
    gc.set_threshold(700, 10, 100)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Frozen again at the end: the interpreter's collections at exit then skip what the tests left (2-4 s a
    worker, the whole run waiting on them)."""
    gc.freeze()


@pytest.fixture(scope="session", autouse=True)
def _bundle_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Where serve/serve_tiny.cached keeps the bundles it builds once per run, and where train's hardware probe
    keeps its answers: beside the workers' own temporary folders under pytest-xdist (all workers of this run share
    it), in this session's one otherwise; pytest removes it with the rest of its old temporary folders."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    os.environ["SIGHTLINE_TEST_BUNDLE_CACHE"] = str(root / "bundle-cache")
    # train's hardware probe caches its answer per machine; the suite's answers (tiny models, timed while the other
    # worker runs) stay with the run instead of landing in the user's ~/.cache/sightline
    os.environ["SIGHTLINE_CACHE_DIR"] = str(root / "sightline-cache")


@pytest.fixture
def run_cli(capsys):
    """`run_cli(args)`: sightline's main(args) as the command line runs it; (exit code, captured out/err)."""
    from sightline.cli import main

    def run(args: list[str]):
        try:
            main(args)
        except SystemExit as exc:
            return exc.code, capsys.readouterr()
        raise AssertionError("main() must exit")

    return run


@pytest.fixture
def memory_url():
    """A fresh root in fsspec's process-wide memory filesystem (`memory://...`), removed afterwards."""
    import fsspec

    root = f"memory://sightline-test-{uuid.uuid4().hex[:8]}"
    yield root
    # fs.rm(root, recursive=True) takes ~2 s for a few thousand objects; the memory filesystem's own test fixture
    # clears its class-level `store` and `pseudo_dirs` directly, and so does this (only this root's entries).
    fs = fsspec.filesystem("memory")
    path = fs._strip_protocol(root)
    for name in [k for k in fs.store if k == path or k.startswith(path + "/")]:
        del fs.store[name]
    fs.pseudo_dirs[:] = [d for d in fs.pseudo_dirs if not (d == path or d.startswith(path + "/"))]
    assert not fs.exists(root)
