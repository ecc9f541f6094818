"""A small exception tree. The CLI turns every `SightlineError` into one line and exit code 2; the API turns
them into 4xx answers (see `status_code`). Raise where the bad value enters, name it, say what to do."""
from __future__ import annotations

__all__ = [
    "SightlineError",
    "UserInputError",
    "ImageError",
    "NotAnImageError",
    "ImageTooLargeError",
    "CorruptImageError",
    "DatasetError",
    "ModelError",
    "BundleError",
    "SpecError",
    "one_line",
]


class SightlineError(Exception):
    """Base of every error a user can cause and fix. `status_code` is the HTTP status the API answers with."""

    status_code: int = 400


class UserInputError(SightlineError):
    """A bad argument, option or path given by the user."""


class ImageError(SightlineError):
    """An input file that cannot be used as an image."""

    status_code = 422


class NotAnImageError(ImageError):
    """The content is not one of the supported formats (JPEG, PNG, BMP, TIFF, WebP)."""

    status_code = 415


class ImageTooLargeError(ImageError):
    """The image header announces more pixels than the configured cap (decompression-bomb guard)."""

    status_code = 413


class CorruptImageError(ImageError):
    """A supported format whose data is truncated or corrupt."""

    status_code = 422


class DatasetError(SightlineError):
    """A dataset folder that does not follow the layout in DESIGN.md (missing, empty, one class, ...)."""


class ModelError(SightlineError):
    """An unknown architecture, weights that do not fit, or weights that cannot be found."""


class BundleError(SightlineError):
    """A bundle folder that is missing files or whose model.json is invalid."""


class SpecError(SightlineError):
    """An invalid problem definition (sightline.yaml)."""


def one_line(exc: BaseException) -> str:
    """The cause of an error in one line. A DataLoader worker re-raises our errors with the worker's traceback
    in the message ("Caught X in DataLoader worker ... Original Traceback ..."); its last line is the cause."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(exc).__name__
    last = lines[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last
