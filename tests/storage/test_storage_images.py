"""The image store behind an fsspec URL (sightline/storage/images.py): the same content-addressed contract as the
local folder (put/get/exists/delete/size, stored once, names checked) on `memory://`, the keeper's rule and
retention on it, a filesystem without atomic writes going through a temporary name, one-line errors for URLs fsspec
cannot open, and the service keeping review images in a `memory://` store (SIGHTLINE_IMAGE_STORE)."""
from __future__ import annotations

import hashlib
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sightline.errors import UserInputError
from sightline.storage.images import FsspecImageStore, ImageKeeper, LocalImageStore, check_url, open_image_store
from sightline.storage.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # serve_tiny


@pytest.fixture(params=["folder", "memory"])
def images(request, tmp_path, memory_url):
    return open_image_store(tmp_path / "img" if request.param == "folder" else memory_url)


def test_open_image_store_picks_by_location(tmp_path, memory_url):
    assert isinstance(open_image_store(tmp_path), LocalImageStore)
    assert isinstance(open_image_store(str(tmp_path)), LocalImageStore)
    local = open_image_store(f"file://{tmp_path}")
    assert isinstance(local, LocalImageStore) and local.root == tmp_path
    assert isinstance(open_image_store(memory_url), FsspecImageStore)


def test_contract_content_addressed_and_deduplicated(images):
    blob, other = b"\xff\xd8\xff" + bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n" + b"x" * 100
    sha = images.put(blob)
    assert sha == hashlib.sha256(blob).hexdigest()
    assert images.get(sha) == blob and images.exists(sha) and images.size(sha) == len(blob)
    assert images.put(blob) == sha  # the same bytes: the same name, stored once
    sha2 = images.put(other)
    assert images.get(sha2) == other and images.get(sha) == blob
    assert images.delete(sha) and not images.exists(sha) and images.get(sha) is None and images.size(sha) is None
    assert not images.delete(sha)
    assert images.exists(sha2)
    missing = "0" * 64
    assert images.get(missing) is None and images.size(missing) is None and not images.exists(missing)
    for bad in ("../../etc/passwd", "A" * 64, sha[:10]):
        with pytest.raises(ValueError, match="not a sha256"):
            images.get(bad)


def test_memory_layout_is_the_local_one(memory_url):
    import fsspec

    images = FsspecImageStore(memory_url)
    sha = images.put(b"image bytes")
    fs = fsspec.filesystem("memory")
    root = memory_url.removeprefix("memory://")
    assert fs.cat_file(f"/{root}/{sha[:2]}/{sha[2:4]}/{sha}") == b"image bytes"
    assert images.atomic_put  # an object is written whole: no temporary name
    assert fs.find(f"/{root}") == [f"/{root}/{sha[:2]}/{sha[2:4]}/{sha}"]


def test_non_atomic_filesystem_writes_through_a_temporary_name(tmp_path, monkeypatch):
    images = FsspecImageStore(f"local://{tmp_path / 'img'}")
    assert not images.atomic_put
    moved = []
    original = images.fs.mv
    monkeypatch.setattr(images.fs, "mv", lambda a, b, **kw: (moved.append((a, b)), original(a, b, **kw))[1])
    sha = images.put(b"bytes")
    assert len(moved) == 1 and "/.tmp-" in moved[0][0] and moved[0][1].endswith(sha)
    files = [p for p in (tmp_path / "img").rglob("*") if p.is_file()]
    assert files == [tmp_path / "img" / sha[:2] / sha[2:4] / sha] and files[0].read_bytes() == b"bytes"
    assert images.put(b"bytes") == sha and len(moved) == 1  # already there: not written again


def test_urls_fsspec_cannot_open_are_one_line_errors():
    with pytest.raises(UserInputError, match="fsspec knows no 'nosuch://' filesystem") as exc:
        check_url("nosuch://bucket/images")
    assert "\n" not in str(exc.value)
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(UserInputError, match="needs the package of its filesystem") as exc:
            open_image_store("s3://bucket/images")
        assert "\n" not in str(exc.value) and "s3fs" in str(exc.value)
    check_url("memory://fine")


def test_keeper_rule_and_retention_on_memory(tmp_path, memory_url):
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    images = open_image_store(memory_url)
    keeper = ImageKeeper(images, keep_accepted=1.0, retention_every_s=float("inf"), rng=random.Random(0))
    decisions = ["review", "accept", "accept"]
    ids = store.add_predictions([{
        "request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "m", "model_version": "1",
        "label": "cat", "confidence": 0.5, "top_k": [], "decision": d, "latency_ms": 1.0,
    } for i, d in enumerate(decisions)])
    blobs = [b"review image", b"labelled sample", b"old sample"]
    assert keeper.keep(store, ids, decisions, blobs) == 3
    assert [keeper.read(store, i) for i in ids] == [(b, "application/octet-stream") for b in blobs]
    store.record_label(ids[1], "dog", reviewer="ann")
    keeper.max_age_days = 30
    assert keeper.enforce_retention(store, now=datetime.now(timezone.utc) + timedelta(days=40)) == [ids[2]]
    assert not images.exists(hashlib.sha256(b"old sample").hexdigest()) and keeper.read(store, ids[2]) is None
    assert images.exists(hashlib.sha256(b"review image").hexdigest())
    assert images.exists(hashlib.sha256(b"labelled sample").hexdigest())
    store.close()


def test_settings_accept_urls_and_folders(tmp_path):
    from sightline.serve.settings import Settings, load_settings

    assert Settings(bundle=tmp_path, image_store="memory://kept").resolved_image_store() == "memory://kept"
    assert Settings(bundle=tmp_path, image_store=str(tmp_path / "k")).resolved_image_store() == tmp_path / "k"
    assert Settings(bundle=tmp_path, image_store=tmp_path / "k").resolved_image_store() == tmp_path / "k"
    assert Settings(bundle=tmp_path, image_store=f"file://{tmp_path}/k").resolved_image_store() == tmp_path / "k"
    with pytest.raises(UserInputError, match=r"image_store \(SIGHTLINE_IMAGE_STORE\).*nosuch") as exc:
        load_settings(bundle=tmp_path, image_store="nosuch://x")
    assert "\n" not in str(exc.value)


def test_service_keeps_review_images_in_a_memory_store(tmp_path, memory_url):
    from serve_tiny import encode, make_bundle, photo, predict, serving

    bundle = make_bundle(tmp_path)  # never confident: every answer goes to review, so every image is kept
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    key = store.create_key("ops", ["predict", "review"])
    blob = encode(photo(4))
    with serving(bundle, database_url=url, image_store=memory_url) as c:
        answer = predict(c, key, [blob]).json()["predictions"][0]
        assert answer["decision"] == "review"
        r = c.get(f"/v1/review/{answer['id']}/image", headers={"X-API-Key": key})
        assert r.status_code == 200 and r.content == blob and r.headers["content-type"] == "image/jpeg"
    assert FsspecImageStore(memory_url).get(hashlib.sha256(blob).hexdigest()) == blob
    assert not (bundle / "images").exists()  # nothing fell back to the folder
    store.close()
