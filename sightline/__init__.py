"""Sightline: from a folder of labeled images to a trustworthy image-recognition service.

Nothing heavy is imported here: `import sightline` and `sightline --help` stay instant. Entry points are
reached lazily through `__getattr__`.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"; imported on first use so torch is not loaded at start-up.
_ENTRY_POINTS = {
    "load_image": "sightline.data.images:load_image",
    "Bundle": "sightline.bundle:Bundle",
    "load_bundle": "sightline.bundle:load_bundle",
    "create_model": "sightline.models.factory:create_model",
}

__all__ = ["__version__", *_ENTRY_POINTS]


def __getattr__(name: str) -> Any:
    target = _ENTRY_POINTS.get(name)
    if target is None:
        raise AttributeError(f"module 'sightline' has no attribute {name!r}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
