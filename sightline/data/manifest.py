"""One decoding pass over a dataset: the manifest (what each file is) plus the cheap statistics the audit needs.

`describe_images` reads every file once (bytes -> sha256; JPEG decoded at reduced scale, at least 256 px) in a
thread pool (Pillow and hashlib release the GIL), and returns one `ImageRecord` per sample. The manifest file
(`manifest.csv`) holds relpath, label, split, sha256, width, height, phash, format and mode. The hash of the mirror
image (`ImageRecord.phash_mirror`, for flipped copies) is used by the audit and the split in the same run and not
written: the manifest's columns are what `feedback export` and other readers expect.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image

from sightline.data.datasets import Dataset, Sample, unnamed
from sightline.data.hashing import phash_hex, phashes, sha256_bytes
from sightline.data.images import load_image
from sightline.errors import ImageError
from sightline.progress import ProgressFn, Steps

__all__ = ["ImageRecord", "MANIFEST_COLUMNS", "describe_images", "describe_one", "laplacian_variance",
           "write_manifest", "read_manifest"]

MANIFEST_COLUMNS = ("relpath", "label", "split", "sha256", "width", "height", "phash", "format", "mode")
ANALYSIS_SIDE = 160  # blur and hash are measured with the shorter side brought down to this many pixels (JPEG draft decodes at 1/2..1/8 when the photo is at least twice that)


@dataclass
class ImageRecord:
    relpath: str  # posix, relative to the dataset root
    label: str
    split: str | None
    sha256: str  # of the file's bytes ("" when unreadable)
    width: int  # header pixels after EXIF orientation
    height: int
    phash: str  # 16 hex digits, "" when the pixels cannot be decoded
    format: str
    mode: str  # stored colour mode ("RGB", "L", "CMYK", "P", ...)
    blur: float | None = None  # variance of the Laplacian of the grey image at ANALYSIS_SIDE (higher = sharper)
    error: str | None = None  # why the pixels could not be decoded (truncated, corrupt, unreadable); not naming the file
    frames: int = 1  # frames (animated PNG/WebP) or pages (TIFF) in the file; only the first is used
    phash_mirror: str = ""  # the perceptual hash of the horizontally flipped image (not in manifest.csv)

    @property
    def phash_int(self) -> int:
        return int(self.phash, 16) if self.phash else 0

    @property
    def phash_mirror_int(self) -> int:
        """The mirror image's hash; the image's own when unknown (a record read back from manifest.csv)."""
        return int(self.phash_mirror, 16) if self.phash_mirror else self.phash_int


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of an (H, W) grey image in [0, 255]; low means blurry."""
    a = grey.astype(np.float32)
    if a.shape[0] < 3 or a.shape[1] < 3:
        return 0.0
    lap = a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4.0 * a[1:-1, 1:-1]
    return float(lap.var())


def describe_one(sample: Sample) -> ImageRecord:
    """Hash, fingerprint and measure one sample; decoding errors are recorded in `error`, never raised."""
    record = ImageRecord(
        relpath=sample.relpath, label=sample.label, split=sample.split, sha256="", width=sample.width,
        height=sample.height, phash="", format=sample.format, mode=sample.mode, frames=sample.frames,
    )
    try:
        data = sample.path.read_bytes()
    except OSError as exc:
        record.error = f"unreadable ({exc.strerror or exc})"
        return record
    record.sha256 = sha256_bytes(data)
    try:
        image = load_image(data, draft=(ANALYSIS_SIDE, ANALYSIS_SIDE), name=sample.relpath)
    except ImageError as exc:
        record.error = unnamed(str(exc), sample.relpath)  # listed beside its relpath (audit finding, split's excluded)
        return record
    grey = image.convert("L")
    short = min(grey.size)
    if short > ANALYSIS_SIDE:
        scale = ANALYSIS_SIDE / short
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.Resampling.BOX)
    plain, mirrored = phashes(grey)
    record.phash, record.phash_mirror = phash_hex(plain), phash_hex(mirrored)
    record.blur = laplacian_variance(np.asarray(grey))
    return record


def describe_images(
    samples: Dataset | Sequence[Sample],
    *,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    task: str = "reading images",
) -> list[ImageRecord]:
    """One ImageRecord per sample, in the same order; `progress` hears `task` advance by one per image."""
    items = samples.samples if isinstance(samples, Dataset) else list(samples)
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with Steps(progress, task, len(items)) as steps:

        def run(sample: Sample) -> ImageRecord:
            rec = describe_one(sample)
            steps.advance()
            return rec

        if workers <= 1:
            return [run(s) for s in items]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(run, items))


def write_manifest(records: Sequence[ImageRecord], path: str | Path) -> Path:
    """Write `manifest.csv` (MANIFEST_COLUMNS, sorted by relpath) and return its path."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for rec in sorted(records, key=lambda r: r.relpath):
            row = asdict(rec)
            row["split"] = rec.split or ""
            writer.writerow(row)
    return path


def read_manifest(path: str | Path) -> list[ImageRecord]:
    """Read a manifest.csv written by `write_manifest`."""
    names = {f.name for f in fields(ImageRecord)}
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            kw = {k: v for k, v in row.items() if k in names}
            kw["split"] = kw.get("split") or None
            kw["width"] = int(kw.get("width") or 0)
            kw["height"] = int(kw.get("height") or 0)
            out.append(ImageRecord(**kw))
    return out
