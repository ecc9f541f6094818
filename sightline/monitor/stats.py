"""Cheap statistics of one image, kept per prediction and in the reference profile, for the image-statistics
drift test (`sightline.monitor.drift.image_stats_test`).

`image_stats(image, source)` measures the decoded image (what the model saw) and reads the file's header (what
arrived: format, stored colour mode, JPEG quantization tables) without decoding it again; when the decoded image
is the opened file itself (an RGB JPEG or PNG as `load_image` returns it) the header is read from it, not parsed
again. Cost: one greyscale conversion and a box downscale to `ANALYSIS_SIDE`: about 0.9 ms of the 1.4 ms per
hymenoptera val photo (500 x 375; one core of a machine at load 3-5; benchmarks/monitor_terms.py).

Statistics (the same keys for every image; `None` where a statistic does not apply):
  width, height     pixels of the decoded image
  aspect            width / height
  brightness        mean grey level in [0, 1]
  contrast          standard deviation of the grey level in [0, 1] (RMS contrast)
  sharpness         variance of the 4-neighbour Laplacian of the grey image at ANALYSIS_SIDE (higher = sharper;
                    same definition as the data audit's blur measure)
  flat_share        share of the grey image's 8 x 8 blocks (at ANALYSIS_SIDE) whose values span at most one grey
                    level: uniform areas, which camera photos seldom hold (none in 78-88 % of the hymenoptera
                    photos, by split) and faults put there: padding or letterboxing from a changed resize, the fill of a
                    rotation done in software, a covered lens or a uniform occluder, clipped highlights, a dead
                    region of the sensor
  bytes_per_pixel   file size / (width * height): compression and noise show here
  jpeg_quality      IJG quality 1..100 whose standard tables best match the file's (None unless JPEG)
  mode              stored colour mode ("RGB", "L", "CMYK", "P", ...)
  channels          number of channels of the stored mode
  format            "JPEG", "PNG", "BMP", "TIFF", "WEBP"
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from sightline.data.manifest import laplacian_variance
from sightline.errors import ImageError

__all__ = ["ANALYSIS_SIDE", "CONTINUOUS", "CATEGORICAL", "flat_share", "image_stats", "jpeg_quality",
           "laplacian_variance", "stats_columns"]

ANALYSIS_SIDE = 160  # grey statistics are measured with the shorter side brought down to this (as the data audit)
FLAT_BLOCK = 8  # flat_share: block side in pixels of the analysis image (a power of 2)
FLAT_SPAN = 1.0  # flat_share: a block whose grey values span at most this many levels is flat (JPEG rounding)
CONTINUOUS = ("width", "height", "aspect", "brightness", "contrast", "sharpness", "flat_share", "bytes_per_pixel",
              "jpeg_quality")
CATEGORICAL = ("mode", "format")  # `channels` follows from `mode`; testing both would count one change twice

Source = Union[str, Path, bytes, bytearray, memoryview]

# The IJG (libjpeg) example tables, Annex K of ITU-T T.81, natural order. Pillow, libjpeg-turbo, ImageMagick
# and most cameras' "quality" settings scale these.
_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.int64)
_CHROMA = np.array([17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5
                   + [47, 66] + [99] * 6 + [99] * 32, dtype=np.int64)


def _scaled_sums(table: np.ndarray) -> np.ndarray:
    """(100,) sum of `table` scaled to IJG quality 1..100 (jpeg_quality_scaling + baseline clamp to 1..255)."""
    q = np.arange(1, 101)
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)
    scaled = np.clip((table[None, :] * scale[:, None] + 50) // 100, 1, 255)
    return scaled.sum(axis=1)


_SUMS = (_scaled_sums(_LUMA), _scaled_sums(_CHROMA))


def jpeg_quality(quantization: dict[int, Any] | None) -> int | None:
    """Estimated IJG quality (1..100) from a JPEG's quantization tables (Pillow's `image.quantization`).

    Compares the sum of each table with the sums of the standard tables at every quality (order-free, so it does
    not matter whether the tables are in zigzag or natural order); the luminance table and, when present, the
    first chrominance table both count. Files written with non-IJG tables get the nearest IJG quality."""
    if not quantization:
        return None
    tables = [np.asarray(quantization[k], dtype=np.int64) for k in sorted(quantization)[:2]]
    if any(t.size != 64 for t in tables):
        return None
    cost = sum(np.abs(sums - t.sum()) for sums, t in zip(_SUMS, tables))
    return int(np.argmin(cost)) + 1  # ties go to the lower quality


def _header(source: Source) -> tuple[str, str, dict | None, int]:
    """(format, stored mode, quantization tables or None, size in bytes) of a file or bytes, decoding no pixels."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            with Image.open(path) as im:
                return _header_of(im, path.stat().st_size)
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"{path}: cannot read the image header for its statistics ({exc})") from None
    data = bytes(source)
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _header_of(im, len(data))
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"<uploaded bytes>: cannot read the image header for its statistics ({exc})") from None


def _header_of(im: Image.Image, size: int) -> tuple[str, str, dict | None, int]:
    fmt = "JPEG" if im.format == "MPO" else (im.format or "unknown")
    quant = getattr(im, "quantization", None) if fmt == "JPEG" else None
    return fmt, im.mode, quant, size


def _is_decoded_file(image: Image.Image) -> bool:
    """Whether `image` is a file as Pillow opened it (an ImageFile that still has its format), not a conversion, a
    rotation or a copy of one: then its mode is the stored mode and it carries the file's quantization tables."""
    return isinstance(image, ImageFile.ImageFile) and bool(image.format)


def _size_of(source: Source) -> int:
    """Bytes of a file or of an upload."""
    if isinstance(source, (str, Path)):
        try:
            return Path(source).stat().st_size
        except OSError as exc:
            raise ImageError(f"{source}: cannot read the file for its statistics ({exc})") from None
    return len(source) if isinstance(source, (bytes, bytearray)) else memoryview(source).nbytes


def _channels(mode: str | None) -> int | None:
    try:
        return int(Image.getmodebands(mode)) if mode else None
    except (KeyError, ValueError):  # a mode Pillow reads but does not describe
        return None


def flat_share(grey: np.ndarray, *, block: int = FLAT_BLOCK, span: float = FLAT_SPAN) -> float:
    """Share of the (H, W) grey image's `block` x `block` tiles (the ragged right and bottom edges left out) whose
    values span at most `span` grey levels; 0.0 for an image smaller than one tile. `block` must be a power of 2:
    the tiles' maxima and minima are taken by halving rows, then columns (about 5x faster than a reduction over
    a 4-d view; 0.1-0.2 ms at 160 x 213 on uint8)."""
    h, w = (grey.shape[0] // block) * block, (grey.shape[1] // block) * block
    if h == 0 or w == 0:
        return 0.0
    hi = lo = grey[:h, :w]
    while hi.shape[0] > h // block:
        hi, lo = np.maximum(hi[0::2], hi[1::2]), np.minimum(lo[0::2], lo[1::2])
    while hi.shape[1] > w // block:
        hi, lo = np.maximum(hi[:, 0::2], hi[:, 1::2]), np.minimum(lo[:, 0::2], lo[:, 1::2])
    return float(((hi - lo) <= span).mean())  # hi >= lo: no wrap-around in unsigned types


def image_stats(image: Image.Image, source: Source | None = None) -> dict[str, Any]:
    """The statistics of one image (see the module docstring), as a JSON-able dict.

    `image` is the decoded image the model saw (any mode; `sightline.data.images.load_image` gives RGB).
    `source` is the file's bytes or path: format, stored mode, JPEG quality and bytes per pixel come from its
    header. Without it they come from `image` itself when it still carries them (an `Image.open` result), else
    they are None. Raises ImageError when `source` is not a readable image.

    When `image` is the opened file itself (`load_image` returns an RGB JPEG or PNG without a copy: not converted,
    not rotated), its header fields are those of `source`, so the header is not parsed again (22-39 us of 1.4 ms on a
    hymenoptera val photo); only the size in bytes is taken from `source`."""
    if source is not None and _is_decoded_file(image):
        fmt, mode, quant, size = (*_header_of(image, 0)[:3], _size_of(source))
    elif source is not None:
        fmt, mode, quant, size = _header(source)
    else:
        fmt = "JPEG" if image.format == "MPO" else image.format
        mode, size = image.mode, None
        quant = getattr(image, "quantization", None) if fmt == "JPEG" else None
    width, height = image.size
    grey = image.convert("L")
    short = min(grey.size)
    if short > ANALYSIS_SIDE:
        scale = ANALYSIS_SIDE / short
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))),
                           Image.Resampling.BOX)
    g8 = np.asarray(grey)  # uint8 ("L")
    g = g8.astype(np.float32)
    return {
        "width": int(width),
        "height": int(height),
        "aspect": float(width / height),
        "brightness": float(g.mean() / 255.0),
        "contrast": float(g.std() / 255.0),
        "sharpness": laplacian_variance(g),
        "flat_share": flat_share(g8),
        "bytes_per_pixel": float(size / (width * height)) if size is not None else None,
        "jpeg_quality": jpeg_quality(quant) if fmt == "JPEG" else None,
        "mode": mode,
        "channels": _channels(mode),
        "format": fmt,
    }


def stats_columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-image dicts (from `image_stats`) -> columns: CONTINUOUS as float64 (None -> NaN), CATEGORICAL as str
    ("" for None). Keys missing from every row are left out."""
    if not rows:
        return {}
    cols: dict[str, np.ndarray] = {}
    for key in CONTINUOUS:
        if any(key in r for r in rows):
            cols[key] = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows], dtype=np.float64)
    for key in CATEGORICAL:
        if any(key in r for r in rows):
            cols[key] = np.array(["" if r.get(key) is None else str(r[key]) for r in rows])
    return cols
