"""One split of a dataset as the network sees it: crops at network resolution with class indices.

Export's parity check, int8 calibration and accuracy, and distillation's teacher figures read a split through
`load_split`; the pixels come from `sightline.data.crops.load_crops`, the inference core's decode path.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from sightline.data.datasets import Dataset, is_region_file
from sightline.errors import DatasetError
from sightline.preprocessing import Preprocessing

__all__ = ["SplitCrops", "load_split"]


class SplitCrops(NamedTuple):
    """One split's readable images."""

    crops: np.ndarray  # (N, S, S, 3) uint8 RGB after resize + center crop
    y: np.ndarray  # (N,) int64 indices into the given classes
    names: list[str]  # relpaths, aligned with crops
    skipped: list[dict[str, str]]  # {"path", "reason"} of files that could not be decoded


def load_split(
    data: str | Path | Dataset,
    split: str,
    *,
    classes: Sequence[str],
    preprocessing: Preprocessing,
    max_images: int | None = None,
    seed: int = 0,
) -> SplitCrops:
    """The images of `split` whose label is one of `classes`. `data` is a dataset folder or an already scanned
    Dataset (no rescan).

    Uses at most `max_images` (a class-mixed, seeded subset). Unreadable images are returned in `skipped`, so the
    caller can say how many figures they are missing; none readable raises DatasetError."""
    from sightline.data.crops import load_crops
    from sightline.data.datasets import scan_dataset

    classes = list(classes)
    dataset = data if isinstance(data, Dataset) else scan_dataset(data, require_splits=(split,))
    samples = [s for s in dataset.split(split) if s.label in classes]
    if not samples:
        raise DatasetError(f"{dataset.root}/{split} has no images of the bundle's classes {classes}.")
    if max_images is not None and len(samples) > max_images:
        rng = np.random.default_rng(seed)
        samples = [samples[i] for i in sorted(rng.choice(len(samples), size=max_images, replace=False))]
    inputs = load_crops([s.path for s in samples], preprocessing)
    if not inputs.index:
        raise DatasetError(f"no readable image in {dataset.root}/{split}; run `sightline data audit {dataset.root}`.")
    kept = [samples[i] for i in inputs.index]
    # files whose header already failed in the scan (paths relative to the dataset root)
    unreadable = [d for d in dataset.skipped if Path(d["path"]).parts[:1] == (split,) and not is_region_file(d["path"])]
    return SplitCrops(
        inputs.crops,
        np.asarray([classes.index(s.label) for s in kept], dtype=np.int64),
        [s.relpath for s in kept],
        unreadable + inputs.failed,
    )
