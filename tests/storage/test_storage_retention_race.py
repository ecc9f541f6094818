"""Retention against a reviewer: a label that arrives while retention is choosing what to evict keeps its image."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_tiny import open_store

from sightline.storage.images import ImageKeeper, LocalImageStore


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_image_labelled_while_retention_runs_is_not_evicted(tmp_path, kind):
    """Retention read the kept images, chose the unlabelled samples, and marked them evicted and deleted their files;
    a label given between its read and its mark lost its image, although labelled images are never evicted (the
    label stayed, and `feedback export` could no longer train on it)."""
    with open_store(kind, tmp_path) as store:
        images = LocalImageStore(tmp_path / "img")
        keeper = ImageKeeper(images, keep_accepted=1.0, max_bytes=0, retention_every_s=float("inf"))
        ids = store.add_predictions([{
            "request_id": "r", "filename": f"{i}.jpg", "input_sha256": "0" * 64, "model_name": "m",
            "model_version": "1", "label": "cat", "confidence": 0.9, "top_k": [], "decision": "accept",
            "latency_ms": 1.0} for i in range(2)])
        keeper.keep(store, ids, ["accept", "accept"], [b"labelled meanwhile", b"still unlabelled"])

        class Racing:  # the reviewer labels ids[0] right after retention read the rows
            def __getattr__(self, name):
                return getattr(store, name)

            def kept_images(self):
                rows = store.kept_images()
                store.record_label(ids[0], "dog", reviewer="ann")
                return rows

        assert keeper.enforce_retention(Racing()) == [ids[1]]
        assert store.kept_image(ids[0])["evicted"] is None and store.kept_image(ids[1])["evicted"] is not None
        assert keeper.read(store, ids[0]) == (b"labelled meanwhile", "application/octet-stream")
        assert not images.exists(hashlib.sha256(b"still unlabelled").hexdigest())
        assert store.labelled_without_kept_image() == []
