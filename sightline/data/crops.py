"""Images at network resolution: decode, resize and center-crop whole lists of files, collecting the failures.

`load_crops` / `iter_crops` are the data side of the inference core (sightline.inference re-exports them): each
file goes through `sightline.data.transforms.load_crop`, the one decode path, so the pixels are those the server
sees. A file that cannot be read is reported in `Inputs.failed`, never silently dropped.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sightline.errors import ImageError
from sightline.preprocessing import Preprocessing

__all__ = ["Inputs", "load_crops", "iter_crops"]


@dataclass
class Inputs:
    """Which files of a list decoded. `crops` holds their pixels at network resolution (after resize + center
    crop, before normalisation) when asked for."""

    paths: list[Path]  # the files that decoded, in input order
    crops: np.ndarray  # (N, S, S, 3) uint8 RGB (empty unless kept)
    failed: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    index: list[int] = field(default_factory=list)  # position of each kept file in the input list


def load_crops(paths: Sequence[str | Path], pre: Preprocessing, *, max_pixels: int | None = None) -> Inputs:
    """Decode and resize/center-crop each file to (S, S, 3) uint8; failures are collected, not raised."""
    from sightline.data.transforms import load_crop

    kept: list[Path] = []
    crops: list[np.ndarray] = []
    failed: list[dict[str, str]] = []
    index: list[int] = []
    for i, p in enumerate(paths):
        try:
            crops.append(load_crop(p, pre, max_pixels=max_pixels))
        except ImageError as exc:
            failed.append({"path": str(p), "reason": str(exc)})
            continue
        kept.append(Path(p))
        index.append(i)
    s = pre.input_size
    array = np.stack(crops) if crops else np.zeros((0, s, s, 3), dtype=np.uint8)
    return Inputs(paths=kept, crops=array, failed=failed, index=index)


def iter_crops(paths: Sequence[str | Path], pre: Preprocessing, *, chunk_size: int = 256) -> Iterator[Inputs]:
    """`load_crops` over `paths`, `chunk_size` files at a time: each Inputs holds at most `chunk_size` crops and
    its `index` counts from the start of `paths`. The caller decides what to keep; nothing is held here."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be at least 1")
    for start in range(0, len(paths), chunk_size):
        part = load_crops(paths[start : start + chunk_size], pre)
        part.index = [start + i for i in part.index]
        yield part
        del part  # so the next chunk is not decoded while this one is still referenced from here
