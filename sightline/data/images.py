"""Safe image decoding: the one place where a file or an upload becomes an RGB `PIL.Image`.

Every stage (dataset scan, training, evaluation, the HTTP service) goes through `load_image`, so they all see
the same pixels for the same bytes:

- the format is decided by content (JPEG, PNG, BMP, TIFF, WebP); anything else is `NotAnImageError`;
- the header's width x height is checked against our own pixel cap *before* any pixel is decoded
  (Pillow's `Image.MAX_IMAGE_PIXELS` is a second line of defence, not the first);
- EXIF orientation is applied;
- every mode becomes 3-channel RGB: CMYK JPEGs with or without the Adobe (inverted) convention, palette images
  with transparency and LA/RGBA are composited on a fixed background (`BACKGROUND`), 16-bit grayscale is scaled
  to 8 bits (not clipped), 1-bit becomes black and white;
- truncated or corrupt data raises `CorruptImageError` naming the file.
"""
from __future__ import annotations

import io
import os
import stat
import struct
import warnings
import zlib
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from sightline.data.inputs import signature
from sightline.errors import CorruptImageError, ImageError, ImageTooLargeError, NotAnImageError

__all__ = [
    "ALLOWED_FORMATS",
    "BACKGROUND",
    "DEFAULT_MAX_PIXELS",
    "ImageInfo",
    "ImageSource",
    "image_info",
    "load_image",
    "to_rgb",
]

ImageSource = Union[str, Path, bytes, bytearray, memoryview]

# Pillow format names we accept. "MPO" is how Pillow names multi-picture JPEGs (most phone cameras).
ALLOWED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP"})
# The plugins Image.open may try: nothing else is even parsed.
_OPEN_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
DEFAULT_MAX_PIXELS = 50_000_000
# Transparent pixels are composited on white: fixed, so the same upload always gives the same input.
BACKGROUND = (255, 255, 255)
# Our pixel cap (`max_pixels`) decides, on the header, before any decode. Pillow's own check runs earlier, inside
# Image.open: between MAX_IMAGE_PIXELS and twice that it only warns ("DecompressionBombWarning: ... could be
# decompression bomb DOS attack", naming no file), which printed that alarm in the middle of `sightline data audit`
# for a 100-megapixel scan that the cap then refused with its own one-line reason. The warning is silenced (for
# Pillow's module only); its hard error at twice the limit stays as the second line of defence. Under pytest's
# "error" filter the warning is still an exception, which `_open` turns into ImageTooLargeError.
# The same for a TIFF whose directory is missing (a compressed TIFF cut short: Pillow writes it after the pixels):
# Pillow warned "UserWarning: Corrupt EXIF data. Expecting to read 2 bytes but only got 0.", naming no file, before
# the one-line CorruptImageError that names it; where warnings are errors, the warning itself escaped load_image.
def _quiet_pillow_bomb_warning() -> None:
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, module=r"PIL\.Image")
    warnings.filterwarnings("ignore", message=r"(Possibly )?[Cc]orrupt EXIF data", category=UserWarning,
                            module=r"PIL\.TiffImagePlugin")


_quiet_pillow_bomb_warning()
# What Pillow's decoders raise on truncated or corrupt data (zlib for PNG, struct for TIFF/BMP headers).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
_EXIF_ORIENTATION = 0x0112


_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")
_OTHER_ADVICE = {
    "an HTML page": "a download that failed saved its error page under an image's name; download the image again "
                    "or remove the file",
    "a ZIP archive": "extract the images into the class folder, then remove the archive",
    "a HEIC/HEIF image (an iPhone's default format)": "convert it to JPEG (e.g. `heif-convert`), or have the iPhone "
                                                      "save JPEG (Settings > Camera > Formats > Most Compatible)",
}


def _other_format(head: bytes) -> str | None:
    """What a file that is no image we read is, when its first bytes say so: the formats a real folder holds
    (an iPhone's HEIC, a web page saved as .jpg by a failed download, a GIF, a PDF, an archive), or None."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "an AVIF image"
        if brand in _HEIF_BRANDS:
            return "a HEIC/HEIF image (an iPhone's default format)"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return "a JPEG 2000 image"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
        return "a JPEG XL image"
    if head.startswith(b"8BPS"):
        return "a Photoshop document"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page"
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in head.lower()):
        return "an SVG drawing"
    return None


def _describe(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return "<uploaded bytes>"


def _refuse_special(path: str | Path, label: str) -> None:
    """NotAnImageError for a named pipe, socket or device (or a link to one): opening a FIFO to read its header
    waited for a writer forever, so a capture tool's pipe named like an image hung `sightline data audit` (its
    report's thumbnails) and `predict` without a word. Other stat errors are left to `open` to report."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISDIR(mode):  # open() said 'Is a directory; check the path and its permissions'
        if not os.access(path, os.R_OK | os.X_OK):
            raise ImageError(f"{label}: a folder that cannot be read (permission denied), so its images are not "
                             "used; check its permissions")
        raise NotAnImageError(f"{label}: a folder, not an image file; pass the images in it, or the folder itself "
                              "where a command searches folders")
    if not stat.S_ISREG(mode):
        raise NotAnImageError(f"{label}: not a regular file (a named pipe, socket or device), never an image; "
                              "remove it")


@contextmanager
def _open(source: ImageSource, label: str) -> Iterator[Image.Image]:
    """Open lazily (header only); the file handle is ours, so a loaded image stays valid after the `with`.

    Raises NotAnImageError, ImageTooLargeError, CorruptImageError, ImageError (unreadable path)."""
    if not isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        raise TypeError(f"load_image takes a path or bytes, not {type(source).__name__}")
    with ExitStack() as stack:
        try:
            if isinstance(source, (str, Path)):
                _refuse_special(source, label)
                fp: BinaryIO = stack.enter_context(open(source, "rb"))
            else:
                fp = io.BytesIO(bytes(source))
            im = Image.open(fp, formats=_OPEN_FORMATS)
        except UnidentifiedImageError:
            if fp.seek(0, io.SEEK_END) == 0:
                raise NotAnImageError(f"{label}: the content is empty (0 bytes); re-save or re-send the image") from None
            fp.seek(0)
            head = fp.read(64)
            started = signature(head)  # a file that starts like an image we read is a damaged one
            if started is not None:
                raise CorruptImageError(
                    f"{label}: starts like a {started} file but cannot be decoded (a damaged header, or a variant "
                    "Pillow does not read, such as a floating-point RGB or packed 12-bit TIFF); re-save it as an "
                    "8-bit PNG or JPEG, or remove it") from None
            kind = _other_format(head)
            if kind is not None:  # what it is, and what to do: 'the content is not JPEG, ...' left both to guess
                raise NotAnImageError(
                    f"{label}: not a supported image: {kind}, while sightline reads JPEG, PNG, BMP, TIFF and WebP; "
                    f"{_OTHER_ADVICE.get(kind, 'convert it to PNG or JPEG, or remove it')}") from None
            raise NotAnImageError(
                f"{label}: not a supported image (the content is not JPEG, PNG, BMP, TIFF or WebP)"
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Only reached beyond Pillow's own limit (or when its warning is turned into an error): our cap is lower.
            raise ImageTooLargeError(
                f"{label}: refused, the header announces too many pixels ({exc}); downscale the image or remove it"
            ) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise ImageError(f"{label}: cannot read the file ({exc.strerror}); check the path and its permissions") from None
        except (*_DECODE_ERRORS, UserWarning) as exc:  # UserWarning: Pillow's header warnings, raised as errors
            raise CorruptImageError(f"{label}: corrupt image header ({exc}); re-export or remove the file") from None
        yield im


def _check_format(im: Image.Image, label: str) -> str:
    fmt = im.format or ""
    if fmt not in ALLOWED_FORMATS:
        raise NotAnImageError(f"{label}: format {fmt or 'unknown'} is not supported (use JPEG, PNG, BMP, TIFF or WebP)")
    return "JPEG" if fmt == "MPO" else fmt


def _orientation(im: Image.Image) -> int:
    """EXIF orientation tag (1..8), 1 when absent or unreadable. Decodes no pixels (see `_png_exif`)."""
    try:
        exif = _png_exif(im) if im.format == "PNG" else im.getexif()
        value = exif.get(_EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _png_exif(im: Image.Image) -> Image.Exif:
    """A PNG's EXIF without decoding it. Pillow's `PngImageFile.getexif` decodes the whole image when the header
    chunks hold no eXIf, to look for one after the image data; here the chunks after the first IDAT are skipped
    over instead (length + type, then a seek), and an eXIf found there goes into `im.info` as a decode would put
    it. (Decoding there also swallowed a decode error, after which `load()` returned the garbage pixels.)"""
    if "exif" not in im.info and im.fp is not None and im.tile:  # not decoded yet
        fp = im.fp
        fp.seek(im.tile[0][2] - 8)  # the first IDAT's length + type (as PngImageFile.verify)
        while len(head := fp.read(8)) == 8 and head[4:] != b"IEND":
            length = struct.unpack(">I", head[:4])[0]
            if head[4:] == b"eXIf":
                im.info["exif"] = b"Exif\x00\x00" + fp.read(length)  # as PngStream.chunk_eXIf
                break
            fp.seek(length + 4, io.SEEK_CUR)  # data + CRC
    return Image.Image.getexif(im)  # the base method: reads im.info, never decodes


def _check_pixels(im: Image.Image, label: str, max_pixels: int) -> None:
    w, h = im.size
    if w <= 0 or h <= 0:
        raise CorruptImageError(f"{label}: the header announces an empty image ({w}x{h})")
    if w * h > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {w}x{h} = {w * h / 1e6:.1f} megapixels is above the cap of {max_pixels / 1e6:.1f}; "
            "downscale the image or raise max_pixels"
        )


def _verified_png(im: Image.Image, label: str) -> tuple[Image.Image, bytes]:
    """PNG chunks carry CRCs that Pillow's decoder does not check: a flipped bit in smooth image data can decode
    to wrong pixels without any error. Checks the CRC of every chunk from the first IDAT on (as
    `PngImageFile.verify`; `Image.open` checked the chunks before it) on the PNG's bytes in memory, and returns
    the image to decode from those same bytes, and the bytes: a file is read once. `im` is `_open`'s header-only
    image."""
    fp = im.fp
    assert fp is not None, "a PNG not decoded yet"
    if not im.tile:  # IHDR then IEND: a header with no image data (an AssertionError that stopped predict and audit)
        raise CorruptImageError(f"{label}: corrupt PNG data (no image data chunk, IDAT); re-export or remove the file")
    in_memory = isinstance(fp, io.BytesIO)  # an upload
    if in_memory:
        data = fp.getvalue()  # no copy
    else:
        fp.seek(0)
        data = fp.read()
    chunks = PngImagePlugin.PngStream(io.BytesIO(data))
    try:
        chunks.fp.seek(im.tile[0][2] - 8)  # the first IDAT's length + type
        chunks.verify()
        return (im if in_memory else Image.open(io.BytesIO(data), formats=("PNG",))), data
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(f"{label}: corrupt PNG data ({exc}); re-export or remove the file") from None


# A PNG's rows by interlace pass: (first row, row step, first column, column step) of Adam7's seven passes
_ADAM7 = ((0, 8, 0, 8), (0, 8, 4, 8), (4, 8, 0, 4), (0, 4, 2, 4), (2, 4, 0, 2), (0, 2, 1, 2), (1, 2, 0, 1))
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type


def _png_rows(data: bytes, first_idat: int) -> tuple[int, int]:
    """(rows the image data holds, rows the header announces) of a PNG, summed over its interlace passes, counted by
    inflating its IDAT chunks from `first_idat` (the offset of the first one's length): about half the cost of a
    decode, so only done when `_load_png`'s cheap check cannot tell."""
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    bits = depth * _CHANNELS.get(colour, 4)
    passes = _ADAM7 if interlace else ((0, 1, 0, 1),)
    # (rows, bytes per row with its filter byte) of each pass that holds pixels
    sizes = [(len(range(r0, h, dr)), 1 + (len(range(c0, w, dc)) * bits + 7) // 8) for r0, dr, c0, dc in passes]
    sizes = [(rows, stride) for rows, stride in sizes if rows and stride > 1]
    inflate, got, view, pos = zlib.decompressobj(), 0, memoryview(data), first_idat
    try:
        while pos + 8 <= len(data) and data[pos + 4 : pos + 8] == b"IDAT":
            length = struct.unpack(">I", data[pos : pos + 4])[0]
            got += len(inflate.decompress(view[pos + 8 : pos + 8 + length]))
            pos += 12 + length
    except zlib.error:
        pass  # as many rows as came out before the damage
    rows = 0
    for count, stride in sizes:  # passes fill in order: a short stream ends inside one of them
        rows += min(count, got // stride)
        got -= count * stride
        if got < 0:
            break
    return rows, sum(count for count, _ in sizes)


def _load_png(im: Image.Image, data: bytes, label: str) -> None:
    """Decode a PNG (`_verified_png`'s image and bytes), refusing one whose image data ends before its last row.

    Pillow's decoder stops without an error when the compressed stream ends early (a partly written file whose
    chunks are whole: 10 of 100 rows, the rest left black), and LOAD_TRUNCATED_IMAGES plays no part. Rows are
    decoded top to bottom (the last interlace pass fills every odd row, top to bottom too), so the last row that
    the final pass writes is only filled when every row before it was: it is pre-set to a pattern, and the image
    is complete when the pattern is gone. Only when the decoded row equals the pattern (by chance) are the rows
    counted, by inflating the image data again (`_png_rows`)."""
    w, h = im.size
    first_idat = im.tile[0][2] - 8  # (load empties the tile list)
    interlaced = bool(im.info.get("interlace"))
    last = h - 1 if not interlaced or h % 2 == 0 else h - 2  # the last row (of the last pass: an odd one)
    row = None
    if h > 1 or not interlaced:
        size = len(Image.new(im.mode, (w, 1)).tobytes())
        pattern = ((np.arange(size, dtype=np.uint32) * 2654435761) >> 11).astype(np.uint8).tobytes()
        row = Image.frombytes(im.mode, (w, 1), pattern)
        canvas = Image.core.new(im.mode, im.size)
        canvas.paste(row.im, (0, last, w, last + 1))
        im.im = canvas  # ImageFile.load decodes into it (it makes a new one only when there is none)
    im.load()
    if row is not None and im.crop((0, last, w, last + 1)).tobytes() != row.tobytes():
        return
    rows, expected = _png_rows(data, first_idat)
    if rows < expected:
        raise CorruptImageError(
            f"{label}: truncated PNG data (its image data ends after {rows} of {expected} rows"
            f"{' of its interlace passes' if interlaced else ''}, the rest would be black: a partly written file); "
            "re-export or remove the file")


@dataclass(frozen=True)
class ImageInfo:
    """What the header says. width/height are in pixels after EXIF orientation; mode is Pillow's stored mode
    ("RGB", "L", "CMYK", "P", "I;16", ...) before `load_image` turns it into RGB. frames: the frames of an animated
    PNG or WebP, the pages of a TIFF (1 for a still image; a phone's multi-picture JPEG counts 1: its other pictures
    are previews or depth maps); `load_image` decodes the first only."""

    format: str
    width: int
    height: int
    mode: str
    frames: int = 1


def image_info(source: ImageSource, *, name: str | None = None) -> ImageInfo:
    """Header-only look at an image (no pixel decoding).

    Raises NotAnImageError, ImageTooLargeError (only beyond Pillow's own hard limit; the pixel cap is
    `load_image`'s job), CorruptImageError or ImageError (unreadable path)."""
    label = _describe(source, name)
    with _open(source, label) as im:
        fmt = _check_format(im, label)
        w, h = im.size
        if _orientation(im) in (5, 6, 7, 8):
            w, h = h, w
        try:  # a TIFF's pages are counted by walking its directories (headers only)
            frames = 1 if fmt == "JPEG" else int(getattr(im, "n_frames", 1))
        except _DECODE_ERRORS:
            frames = 1  # a damaged later directory: the first page is what is decoded, and judged on its own
        return ImageInfo(fmt, w, h, im.mode, frames)


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Integer/float single-channel pixels -> uint8, scaling the full range instead of clipping it."""
    if mode.startswith("I;16") or (mode == "I" and a.min(initial=0) >= 0 and a.max(initial=0) <= 65535):
        # 16-bit range 0..65535 -> 0..255 (65535 / 257 = 255 exactly).
        return np.round(a.astype(np.float32) / 257.0).astype(np.uint8)
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0  # float images in [0, 1] keep their absolute brightness
    scaled = (np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo) - lo) / max(hi - lo, 1e-12)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_rgb(im: Image.Image, *, fmt: str | None = None) -> Image.Image:
    """Any Pillow mode -> 3-channel RGB (see the module docstring for what each mode becomes).

    `fmt` is the source format; it matters for CMYK JPEGs: Pillow always reads them with the Adobe (inverted)
    convention, so a CMYK JPEG without an Adobe APP14 marker is inverted back.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "CMYK":
        if fmt == "JPEG" and "adobe" not in im.info:
            # Plain (non-Adobe) CMYK JPEG: stored values are not inverted, but Pillow assumed they were.
            im = Image.fromarray(255 - np.asarray(im), mode="CMYK")
        return im.convert("RGB")
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(im), mode), mode="L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode == "1":
        return im.convert("L").convert("RGB")
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = im.convert("RGBA")  # premultiplied modes are un-premultiplied by convert
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, YCbCr, LAB, HSV, ...


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode a file path or raw bytes into an RGB image, safely.

    Args:
        source: a path, or the bytes of an upload.
        max_pixels: width x height cap, checked on the header before decoding (default 50 megapixels).
        draft: (width, height) in pixels, as displayed (after EXIF orientation). JPEGs at least that big are
            decoded at a reduced scale (1/2, 1/4, 1/8) that stays >= this size: much faster when the caller
            resizes anyway. Other formats ignore it.
        name: how errors name the image (defaults to the path, or "<uploaded bytes>").

    Returns:
        A fully loaded `PIL.Image.Image` in mode "RGB", independent of the file (which is closed).

    Raises:
        NotAnImageError: the content is not JPEG/PNG/BMP/TIFF/WebP (whatever the extension says).
        ImageTooLargeError: the header announces more than `max_pixels` pixels.
        CorruptImageError: truncated or corrupt data.
        ImageError: the path cannot be read.

    Example:
        >>> image = load_image("DATA/train/ok/0001.jpg", draft=(256, 256))
        >>> image.mode
        'RGB'
    """
    label = _describe(source, name)
    with _open(source, label) as im:
        fmt = _check_format(im, label)
        _check_pixels(im, label, max_pixels)
        png = None
        if fmt == "PNG":
            im, png = _verified_png(im, label)
        orientation = _orientation(im)
        try:
            if draft is not None and fmt == "JPEG":
                dw, dh = draft
                if orientation in (5, 6, 7, 8):
                    dw, dh = dh, dw  # the request is in displayed pixels, the JPEG is stored rotated
                im.draft(None, (int(dw), int(dh)))
            if png is not None:
                _load_png(im, png, label)
            else:
                im.load()
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            return to_rgb(im, fmt=fmt)
        except _DECODE_ERRORS as exc:
            raise CorruptImageError(f"{label}: truncated or corrupt {fmt} data ({exc}); re-export or remove the file") from None
