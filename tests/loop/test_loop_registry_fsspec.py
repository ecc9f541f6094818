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
    from serve_tiny import encode, make_bundle, photo, predict, started

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
    with started(create_app(settings)) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        r = predict(c, key, [encode(photo(1))])
        assert r.status_code == 200 and r.json()["model"]["registry_version"] == "v1"
        status = c.get("/v1/shadow", headers={"X-API-Key": key}).json()
        assert status["challenger"]["registry_version"] == v2.ref
    url_only = Settings(registry=remote, database_url=url)
    assert url_only.resolved_image_store() == remote.rsplit("/", 1)[0] + "/images"
