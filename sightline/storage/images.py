"""The images the service keeps: a content-addressed store and the rule for what goes into it.

The store is the small interface put/get/exists/delete/size over names `<root>/ab/cd/<sha256>`, with bytes kept
exactly as uploaded (no re-encoding); writing the same image twice stores it once. `open_image_store(location)`
picks the implementation: a folder -> `LocalImageStore` (every write goes to a temporary file in the same folder and
is renamed into place, so a reader never sees half a file); an fsspec URL (`s3://bucket/images` at scale,
`memory://...` in tests; SIGHTLINE_IMAGE_STORE) -> `FsspecImageStore`, the same layout on any filesystem fsspec can
open (its package installed: s3fs for s3://).

`ImageKeeper` decides per prediction: every "review" and "unknown" image is kept. Independently of the decision,
each answered prediction is drawn into the random slice with probability `keep_accepted` (kept_images.in_slice), so
the slice is a uniform sample of the whole stream and accuracy measured on its labelled items estimates the
accuracy of every answer, not only of the accepted ones; an accepted prediction drawn into it is kept for that alone
(reason "sample"), a queued one drawn into it is kept once, with both its reason and the flag. Retention
(`max_bytes`, `max_age_days`) evicts only unlabelled images kept for the slice alone (accepted, reason "sample"),
oldest first; review/unknown images and every labelled image stay. A file shared by several predictions (same bytes)
is deleted only when none of them still needs it.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from sightline.errors import UserInputError, one_line
from sightline.storage.store import QUEUED_DECISIONS, SAMPLE_REASON

log = logging.getLogger("sightline.serve")

__all__ = ["ImageStore", "LocalImageStore", "FsspecImageStore", "ImageKeeper", "content_type", "open_image_store",
           "check_url", "is_url"]

_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def content_type(data: bytes) -> str:
    """The image's media type from its first bytes (the decoder already accepted it); octet-stream otherwise."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return "application/octet-stream"


def _check_sha(sha256: str) -> None:
    """ValueError unless `sha256` is 64 lowercase hex characters (a name can never climb out of the store)."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")


class ImageStore(Protocol):
    def put(self, data: bytes) -> str: ...
    def get(self, sha256: str) -> bytes | None: ...
    def exists(self, sha256: str) -> bool: ...
    def delete(self, sha256: str) -> bool: ...
    def size(self, sha256: str) -> int | None: ...


class LocalImageStore:
    """Content-addressed files under `root`: `<root>/<sha[:2]>/<sha[2:4]>/<sha>`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():  # every image was then "not kept", one log line each
            raise UserInputError(f"image store '{self.root}' is a file, not a folder; set SIGHTLINE_IMAGE_STORE (or "
                                 "--images) to a folder.")

    def path(self, sha256: str) -> Path:
        _check_sha(sha256)
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if target.exists():  # same bytes, same name: stored once
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha

    def get(self, sha256: str) -> bytes | None:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def delete(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
            return True
        except FileNotFoundError:
            return False

    def size(self, sha256: str) -> int | None:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None


class FsspecImageStore:
    """Content-addressed objects under an fsspec URL (`s3://bucket/images`, `memory://kept`, ...):
    `<url>/<sha[:2]>/<sha[2:4]>/<sha>`, the same layout as `LocalImageStore`.

    Object stores write an object whole (one PUT: a reader never sees half of one), so bytes go straight to their
    name there; on any other filesystem they go to a temporary name beside it and are moved into place. Credentials
    and options come from the filesystem's own configuration (for s3fs: the AWS environment variables or profile;
    fsspec's FSSPEC_<PROTOCOL>_<OPTION> variables); `storage_options` passes more."""

    ATOMIC_PUT = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory"})

    def __init__(self, url: str, **storage_options: Any) -> None:
        check_url(url)
        from fsspec.core import url_to_fs

        self.url = url.rstrip("/")
        self.fs, root = url_to_fs(self.url, **storage_options)
        self.root = root.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self.atomic_put = bool(self.ATOMIC_PUT.intersection(protocols))

    def path(self, sha256: str) -> str:
        _check_sha(sha256)
        return f"{self.root}/{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if self.fs.exists(target):  # same bytes, same name: stored once
            return sha
        if self.atomic_put:
            self.fs.pipe_file(target, data)
            return sha
        folder = target.rsplit("/", 1)[0]
        self.fs.makedirs(folder, exist_ok=True)
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, target)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm_file(tmp)
            raise
        return sha

    def get(self, sha256: str) -> bytes | None:
        try:
            return self.fs.cat_file(self.path(sha256))
        except FileNotFoundError:
            return None

    def exists(self, sha256: str) -> bool:
        return bool(self.fs.exists(self.path(sha256)))

    def delete(self, sha256: str) -> bool:
        path = self.path(sha256)
        if not self.fs.exists(path):  # object stores delete a missing key without an error: ask first
            return False
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            return False
        return True

    def size(self, sha256: str) -> int | None:
        try:
            return int(self.fs.size(self.path(sha256)))
        except FileNotFoundError:
            return None


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether `location` is an fsspec URL ("scheme://...", file:// excluded) rather than a folder."""
    text = os.fspath(location)
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


def check_url(url: str, *, what: str = "image store") -> None:
    """UserInputError (one line, naming `what`) unless fsspec can open filesystems of `url`'s scheme here: fsspec
    itself and the scheme's package (s3fs for s3://, gcsfs for gs://, adlfs for az://) must be installed."""
    protocol = url.split("://", 1)[0]
    try:
        from fsspec.registry import get_filesystem_class
    except ImportError:
        raise UserInputError(f"{what} '{url}' is a URL, which needs fsspec (`pip install fsspec`); or use a "
                             "folder.") from None
    try:
        get_filesystem_class(protocol)
    except ValueError:
        raise UserInputError(f"{what} '{url}': fsspec knows no '{protocol}://' filesystem; use a folder or a URL "
                             "such as s3://bucket/folder.") from None
    except ImportError as exc:
        raise UserInputError(f"{what} '{url}' needs the package of its filesystem ({one_line(exc)}).") from None


def open_image_store(location: str | os.PathLike[str], **storage_options: Any) -> ImageStore:
    """The image store at `location`: an fsspec URL (`s3://bucket/images`) -> FsspecImageStore; a folder (or a
    file:// URL) -> LocalImageStore. One-line UserInputError for a URL fsspec cannot open here."""
    text = os.fspath(location)
    if is_url(text):
        return FsspecImageStore(text, **storage_options)
    return LocalImageStore(text.removeprefix("file://") if isinstance(text, str) else text)


class ImageKeeper:
    """What to keep of each answered prediction, and retention (see the module docstring). `keep_accepted` is the
    random slice's rate: the share of every decision's predictions drawn into it, so also the share of accepted
    images kept. Thread-safe; blocking (call from a worker)."""

    def __init__(self, images: ImageStore, *, keep_accepted: float = 0.03, max_bytes: int | None = None,
                 max_age_days: float | None = None, retention_every_s: float = 60.0,
                 rng: random.Random | None = None) -> None:
        self.images = images
        self.keep_accepted = keep_accepted
        self.max_bytes = max_bytes
        self.max_age_days = max_age_days
        self.retention_every_s = retention_every_s
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._last_retention = 0.0

    def keep(self, store: Any, ids: Sequence[int], decisions: Sequence[str], blobs: Sequence[bytes]) -> int:
        """Store the images that matter of these predictions and record them; returns how many were kept. Every
        prediction is drawn into the random slice or not before its decision is looked at (one draw each)."""
        return self.record(store, self.select(ids, decisions, blobs))

    def select(self, ids: Sequence[int], decisions: Sequence[str], blobs: Sequence[bytes]) -> list[dict[str, Any]]:
        """`keep` without the database: the draws, the files stored, and the kept-image rows to `record`."""
        return [{"prediction_id": ids[r.pop("row")], **r} for r in self.choose(decisions, blobs)]

    def choose(self, decisions: Sequence[str], blobs: Sequence[bytes]) -> list[dict[str, Any]]:
        """`select` before the predictions have ids: the draws and the files stored; each row names its prediction
        by `row`, the index in `decisions`. The server writes these rows in the transaction that stores the
        predictions (`Store.add_predictions(kept=...)`), so a prediction is never stored without them. A file
        stored for a transaction that then fails stays, unreferenced (content-addressed: a retry stores the same
        file again)."""
        rows = []
        for i, (decision, blob) in enumerate(zip(decisions, blobs)):
            with self._lock:
                in_slice = self._rng.random() < self.keep_accepted
            if decision in QUEUED_DECISIONS:
                reason = decision
            elif in_slice:
                reason = SAMPLE_REASON
            else:
                continue
            try:
                sha = self.images.put(blob)
            except OSError as exc:  # a full or unwritable disk must not fail the prediction: it is answered
                log.warning("an image to keep (%s, %d bytes) was not kept: %s", reason, len(blob), exc)
                continue
            rows.append({"row": i, "sha256": sha, "reason": reason, "content_type": content_type(blob),
                         "size": len(blob), "in_slice": in_slice})
        return rows

    def record(self, store: Any, rows: Sequence[dict[str, Any]]) -> int:
        """Write `select`'s rows (one transaction), then run retention when it is due; returns how many."""
        store.add_kept_images(rows)
        if rows:
            self.retain_if_due(store)
        return len(rows)

    def retain_if_due(self, store: Any) -> None:
        """`enforce_retention` when a cap is set and retention_every_s has passed since the last run."""
        if self.max_bytes is None and self.max_age_days is None:
            return
        now = time.monotonic()
        with self._lock:
            due = now - self._last_retention >= self.retention_every_s
            if due:
                self._last_retention = now
        if due:
            self.enforce_retention(store)

    def read(self, store: Any, prediction_id: int) -> tuple[bytes, str] | None:
        row = store.kept_image(prediction_id)
        if row is None or row["evicted"] is not None:
            return None
        data = self.images.get(row["sha256"])
        return (data, row["content_type"]) if data is not None else None

    def enforce_retention(self, store: Any, now: datetime | None = None) -> list[int]:
        """Evict the unlabelled images kept only for the random slice (accepted predictions, reason "sample")
        older than max_age_days, then the oldest of them until the store's bytes (each distinct file once) fit
        max_bytes; review/unknown images (slice members or not) and labelled ones are never evicted. Returns the
        evicted prediction ids."""
        now = now or datetime.now(timezone.utc)
        rows = [r for r in store.kept_images() if r["evicted"] is None]
        needed: dict[str, int] = {}  # sha -> live rows that need the file
        sizes: dict[str, int] = {}
        for r in rows:
            needed[r["sha256"]] = needed.get(r["sha256"], 0) + 1
            sizes[r["sha256"]] = r["size"]
        total = sum(sizes.values())
        evictable = [r for r in rows if r["reason"] == SAMPLE_REASON and r["decision"] == "accept"
                     and r["reviewed_label"] is None]
        evicted: list[int] = []
        done: set[int] = set()

        def evict(r: dict[str, Any]) -> None:
            nonlocal total
            evicted.append(r["prediction_id"])
            done.add(r["prediction_id"])
            needed[r["sha256"]] -= 1
            if needed[r["sha256"]] == 0:
                total -= sizes[r["sha256"]]

        if self.max_age_days is not None:
            cutoff = now - timedelta(days=self.max_age_days)
            for r in evictable:
                created = r["created"] if r["created"].tzinfo else r["created"].replace(tzinfo=timezone.utc)
                if created < cutoff:
                    evict(r)
        if self.max_bytes is not None:
            for r in evictable:
                if total <= self.max_bytes:
                    break
                if r["prediction_id"] not in done:
                    evict(r)
        if evicted:
            # first the rows (a reader then stops asking for the file), then the files; a prediction labelled since
            # the rows were read is not marked, and its row, still live, keeps the file below
            marked = set(store.mark_evicted(evicted))
            evicted = [i for i in evicted if i in marked]
            gone = {r["sha256"] for r in rows if r["prediction_id"] in marked}
            # a request may have kept the same bytes again since the rows were read: those files stay
            for sha in gone - store.live_image_shas(gone):
                self.images.delete(sha)
        return evicted
