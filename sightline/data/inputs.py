"""What the user pointed at -> the image files to predict: files as given, folders searched, globs expanded.

Whether a file in a folder is an image is decided by its content (the first bytes: JPEG, PNG, BMP, TIFF, WebP),
not only by its extension (DESIGN.md), so `photo.JPG.bak` from a camera and `scan.tif` both count. A file named
like an image (`.jpg`, `.png`, `.gif`, `.heic`, ...) is kept whatever it holds: `photo.jpg` that is really an HTML
page from a failed download, or a GIF, gets a prediction row saying why it could not be read instead of vanishing
from the output. `notes.txt` is left out. A file named explicitly is always kept.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from sightline.errors import UserInputError

__all__ = ["looks_like_image", "expand_inputs", "shown_name", "signature"]

# Names a user means as images: a folder's file named so is always listed (an error row if it is not one we read).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif",
                            ".heic", ".heif", ".avif"})
MASK_SUFFIX = ".mask.png"  # binary mask beside an image (<stem>.mask.png): a region file, never an input itself
# Leading bytes of the formats sightline decodes (sightline.data.images.ALLOWED_FORMATS).
# Leading bytes of the formats we read (and BigTIFF, which we do not; BMP's "BM" is too weak to tell a damaged image
# from a text file, so `signature` leaves it to `looks_like_image`).
_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
               (b"II+\x00", "BigTIFF"), (b"MM\x00+", "BigTIFF"))


def signature(head: bytes) -> str | None:
    """The format whose signature `head` (a file's first 12 or more bytes) starts with: JPEG, PNG, TIFF, BigTIFF or
    WebP; None otherwise (BMP included)."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)


def shown_name(name: str | Path) -> str:
    """A path as text that any file, terminal or JSON can hold. The bytes of a name that are not UTF-8 (a Latin-1
    `caf\\xe9.jpg` from an old camera or a zip made on Windows), which Python carries as lone surrogates, become
    `\\xNN` escapes; other names are returned as they are. Writing the raw name into manifest.csv, audit.html or
    the predictions raised UnicodeEncodeError after the whole run."""
    text = os.fspath(name)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name produced
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def looks_like_image(path: Path) -> bool:
    """True when the file starts like a JPEG, PNG, BMP, TIFF or WebP (reads 12 bytes; unreadable -> False)."""
    try:
        with open(path, "rb") as fp:
            head = fp.read(12)
    except OSError:
        return False
    return signature(head) in ("JPEG", "PNG", "TIFF", "WebP") or head.startswith(b"BM")


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for images (by content or an image's file name, masks beside
    images left out), glob patterns expanded; in order, each file once. A pattern that matches nothing raises
    UserInputError."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        text = str(item)
        if path.is_dir():
            unlisted: list[Path] = []
            found += sorted(p for p in _files_under(path, unlisted) if not p.name.endswith(MASK_SUFFIX)
                            and (p.suffix.lower() in IMAGE_SUFFIXES or looks_like_image(p)))
            found += unlisted  # each gets its row: the folder cannot be read
        elif path.exists() or not any(ch in text for ch in "*?["):
            found.append(path)  # a missing plain path becomes an error row, like any unreadable file
        else:
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            if not matches:
                raise UserInputError(f"the pattern '{text}' matches no file; check it (quote it so the shell leaves it).")
            found += [p for p in matches if p.is_file()]
    seen: set[Path] = set()
    return [p for p in found if not (p in seen or seen.add(p))]


def _files_under(folder: Path, unlisted: list[Path] | None = None) -> list[Path]:
    """The non-hidden files under `folder`, symlinked folders followed (as the dataset scan does; rglob did not,
    and their images were left out without a word), each real folder walked once, so a link loop ends. A link to a
    folder that holds the one it sits in (DATA/ants/loop -> ..) is a loop and not followed, as in the dataset scan:
    it led out of `folder`, and `predict DATA/ants` predicted every other class's images too. A folder that cannot
    be listed (no permission) goes into `unlisted`, so that it is reported rather than left out unsaid."""
    seen: set[str] = set()
    files: list[Path] = []

    def cannot_list(exc: OSError) -> None:  # os.walk skipped such a folder, and its images, without a word
        if unlisted is not None:
            unlisted.append(Path(exc.filename) if exc.filename else folder)

    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=cannot_list):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not _loops_back(os.path.join(dirpath, d), real)]
        for name in filenames:  # a broken link named like an image is kept: its row says it cannot be read
            full = os.path.join(dirpath, name)
            if not name.startswith(".") and (os.path.isfile(full) or os.path.islink(full)):
                files.append(Path(full))
    return files


def _loops_back(sub: str, here: str) -> bool:
    """True when `sub` is a symlink to `here` (a real path) or to a folder above it."""
    if not os.path.islink(sub):
        return False
    target = os.path.realpath(sub)
    return here == target or here.startswith(target.rstrip(os.sep) + os.sep)
