"""What the monitor records of one image, from the ONE decode the inference core does.

The image statistics (`monitor.stats.image_stats`) describe the image as `Engine.decode` returns it (JPEGs in
draft mode, so width, height and bytes per pixel of a large JPEG are those of its reduced decode), and the
reference profile's statistics must be measured the same way, or size alone reads as drift. Use this function
for both: the server's decode threads and the validation images of a profile.

Example:
    >>> crop, stats = load_observed(engine, blob, name="upload.jpg")
    >>> x = engine.normalize(crop)                  # (3, S, S) network input, as `engine.prepare(blob)`
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.monitor.stats import image_stats

if TYPE_CHECKING:
    from sightline.inference import Engine

__all__ = ["load_observed"]


def load_observed(engine: Engine, source: str | Path | bytes, *, name: str | None = None
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode `source` once: ((S, S, 3) uint8 crop, equal to `engine.load(source)`, and its image statistics).
    Raises the ImageError subclasses of `Engine.decode` (415 / 413 / 422 in the server)."""
    image = engine.decode(source, name=name)
    return engine.crop(image), image_stats(image, source)
