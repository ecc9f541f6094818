"""The registry's copies at an fsspec URL (`memory://` here, `s3://` at scale; sightline/loop/registry.py): a bundle
is uploaded when added, another process (another cache) fetches the version the alias points to into its local
cache with the hash checked, a tampered remote copy is refused in one line, and `serve --registry URL` serves and
shadows from it."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import httpx
import pytest
import torch

from sightline.bundle import Bundle, load_bundle
from sightline.errors import UserInputError
from sightline.loop.content import bundle_hash
from sightline.loop.registry import Registry, cache_root
from sightline.models.factory import create_model
from sightline.preprocessing import Preprocessing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # serve_tiny


@pytest.fixture
def remote(monkeypatch, tmp_path):
    """A fresh memory:// root (removed afterwards) and a local cache under tmp_path."""
    import fsspec

    url = f"memory://registry-{uuid.uuid4().hex[:8]}/copies"
    monkeypatch.setenv("SIGHTLINE_REGISTRY_CACHE", str(tmp_path / "cache-a"))
    yield url
    fs = fsspec.filesystem("memory")
    root = "/" + url.removeprefix("memory://").split("/")[0]
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _bundle(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    Bundle("test_efficientnet", ["dark", "light"], Preprocessing(32), version=str(seed)).save(
        folder, create_model("test_efficientnet", 2, weights="none").state_dict())
    return folder


def test_add_uploads_and_another_cache_fetches_with_the_hash_checked(remote, tmp_path, monkeypatch):
    import fsspec

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with Registry(url, root=remote) as reg:
        assert reg.remote == remote and reg.root == cache_root(remote) and str(reg.root).startswith(str(tmp_path))
        v1 = reg.add(_bundle(tmp_path / "b1", 1), alias="champion").version
        v2 = reg.add(_bundle(tmp_path / "b2", 2)).version
        assert v1.artifact == f"{remote}/{v1.bundle_hash}" and v1.to_dict()["artifact"] == v1.artifact
    fs = fsspec.filesystem("memory")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(v1.artifact.removeprefix("memory:/"), detail=False))
    assert names == sorted(p.name for p in Path(v1.path).iterdir())  # every file of the copy, uploaded
    # another machine: the same database and URL, an empty cache
    monkeypatch.setenv("SIGHTLINE_REGISTRY_CACHE", str(tmp_path / "cache-b"))
    with Registry(url, root=remote) as other:
        listed = {v.ref: v for v in other.versions()}
        assert not Path(listed[v2.ref].path).exists()  # listing fetches nothing
        champion = other.aliases()["champion"]
        local = Path(champion.path)
        assert local.is_relative_to(tmp_path / "cache-b") and bundle_hash(local) == v1.bundle_hash
        assert load_bundle(local).version == "1" and other.intact(champion)
        assert not Path(listed[v2.ref].path).exists()  # only what was handed out
        assert Path(other.resolve("v2").path).is_dir() and other.intact(other.resolve("v2"))
    # a tampered remote copy is refused, nothing half-fetched is left
    monkeypatch.setenv("SIGHTLINE_REGISTRY_CACHE", str(tmp_path / "cache-c"))
    fs.pipe_file(f"{v2.artifact.removeprefix('memory:/')}/model.json", b'{"changed": true}')
    with Registry(url, root=remote) as third:
        with pytest.raises(UserInputError, match="does not match its hash") as exc:
            third.resolve("v2")
        assert "\n" not in str(exc.value)
        assert not third.intact(third.versions()[1])
        assert [p.name for p in (tmp_path / "cache-c").rglob("*") if p.name.startswith(".tmp-")] == []


def test_registry_url_fsspec_cannot_open_is_one_line(tmp_path):
    with pytest.raises(UserInputError, match="registry 'nosuch://x': fsspec knows no") as exc:
        Registry(f"sqlite:///{tmp_path / 'db.sqlite'}", root="nosuch://x")
    assert "\n" not in str(exc.value)


def test_serve_and_shadow_from_a_registry_url(remote, tmp_path):
    from serve_tiny import encode, make_bundle, photo, predict, started, tls

    from sightline.serve.app import create_app
    from sightline.serve.settings import Settings
    from sightline.storage.store import Store

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with Registry(url, root=remote) as reg:
        reg.add(make_bundle(tmp_path, seed=0, version="1", folder="one"), alias="champion")
        v2 = reg.add(make_bundle(tmp_path, seed=1, version="2", folder="two"), alias="challenger").version
    store = Store(url)
    key = store.create_key("ops", ["predict", "review"])
    store.close()
    settings = Settings(registry=remote, database_url=url, shadow="challenger", shadow_sample=1.0, monitor=False,
                        rate_limit_per_minute=0, key_cache_s=0, threads=1, image_store=tmp_path / "kept")
    assert settings.resolved_image_store() == tmp_path / "kept"
    with started(create_app(settings)) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                                                                verify=tls()) as c:
        r = predict(c, key, [encode(photo(1))])
        assert r.status_code == 200 and r.json()["model"]["registry_version"] == "v1"
        status = c.get("/v1/shadow", headers={"X-API-Key": key}).json()
        assert status["challenger"]["registry_version"] == v2.ref
    url_only = Settings(registry=remote, database_url=url)
    assert url_only.resolved_image_store() == remote.rsplit("/", 1)[0] + "/images"


def test_a_bad_remote_copy_is_reported_once_per_content_while_the_service_polls(remote, tmp_path, monkeypatch, caplog):
    """The service's registry watcher polls `aliases()`: a tampered copy (here the challenger's) is reported once, not
    on every poll; other bad content at the same copy is reported again; the good content back is fetched; the
    champion is followed meanwhile (its alias is still answered)."""
    import asyncio
    import logging
    import time
    from types import SimpleNamespace

    import fsspec

    from sightline.serve.swap import RegistryWatcher

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with Registry(url, root=remote) as reg:
        v1 = reg.add(_bundle(tmp_path / "b1", 1), alias="champion").version
        v2 = reg.add(_bundle(tmp_path / "b2", 2), alias="challenger").version
    fs = fsspec.filesystem("memory")
    model_json = f"{v2.artifact.removeprefix('memory:/')}/model.json"
    good = fs.cat_file(model_json)
    fs.pipe_file(model_json, b'{"changed": true}')
    monkeypatch.setenv("SIGHTLINE_REGISTRY_CACHE", str(tmp_path / "cache-service"))  # a fresh service machine
    reg = Registry(url, root=remote)
    reg.fetch(reg.resolve("v1"))  # the served champion's copy is there
    state = SimpleNamespace(settings=SimpleNamespace(alias="champion", registry_poll_s=0.001, int8=False),
                            served=SimpleNamespace(bundle_hash=v1.bundle_hash, stored_version="1"),
                            store=None, metrics=None)
    downloads = []
    original_get = type(fs).get_file
    monkeypatch.setattr(type(fs), "get_file", lambda self, *a, **kw: (downloads.append(a[0]), original_get(
        self, *a, **kw))[1])

    def reports() -> list[str]:
        return [r.getMessage() for r in caplog.records if "does not match its hash" in r.getMessage()]

    async def poll(n: int) -> None:
        """Let a watcher poll `n` times (every 1 ms: a poll is ~1 ms of CPU, the test waits for polls, not for the
        clock; at most 60 s on a loaded machine)."""
        watcher = RegistryWatcher(state, reg)
        deadline = time.monotonic() + 60
        await watcher.start()
        while watcher.polls < n and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        await watcher.close()
        assert watcher.polls >= n

    with caplog.at_level(logging.WARNING):
        asyncio.run(poll(20))
        assert len(reports()) == 1 and v2.ref in reports()[0]
        assert len(downloads) == len(fs.ls(v2.artifact.removeprefix("memory:/")))  # the bad files fetched once
        assert set(reg.aliases()) == {"champion"}  # reported already: left out, the champion still answered
        fs.pipe_file(model_json, b'{"changed": true}')  # the same bad bytes written again: nothing new to say
        asyncio.run(poll(5))
        assert len(reports()) == 1
        fs.pipe_file(model_json, b'{"changed": "again"}')  # other bad content: reported once more
        asyncio.run(poll(10))
        assert len(reports()) == 2 and reports()[0] != reports()[1]
        fs.pipe_file(model_json, good)  # repaired: fetched, hash checked, answered again
        asyncio.run(poll(5))
        assert len(reports()) == 2
    assert set(reg.aliases()) == {"champion", "challenger"} and reg.intact(reg.aliases()["challenger"])
    reg.close()
    fs.pipe_file(model_json, b"{}")
    monkeypatch.setenv("SIGHTLINE_REGISTRY_CACHE", str(tmp_path / "cache-other"))
    with Registry(url, root=remote) as other:
        for _ in range(2):  # resolve() refuses a bad copy every time it is asked (it hands out that version)
            with pytest.raises(UserInputError, match="does not match its hash"):
                other.resolve("v2")


def test_a_bad_challenger_copy_does_not_stop_the_service_from_starting(remote, tmp_path, monkeypatch):
    """`serve --registry URL --alias champion` resolves the champion only: a tampered challenger copy is the
    challenger's problem (reported when it is asked for), not a reason to refuse to serve."""
    import fsspec

    from sightline.serve.swap import registry_version

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with Registry(url, root=remote) as reg:
        v1 = reg.add(_bundle(tmp_path / "b1", 1), alias="champion").version
        v2 = reg.add(_bundle(tmp_path / "b2", 2), alias="challenger").version
    fs = fsspec.filesystem("memory")
    fs.pipe_file(f"{v2.artifact.removeprefix('memory:/')}/model.json", b'{"changed": true}')
    monkeypatch.setenv("SIGHTLINE_REGISTRY_CACHE", str(tmp_path / "cache-service"))  # a fresh service machine
    with Registry(url, root=remote) as reg:
        assert registry_version(reg, "champion").bundle_hash == v1.bundle_hash
        with pytest.raises(UserInputError, match="does not match its hash"):
            registry_version(reg, "challenger")
