"""Does the model look where it should? Scores heatmaps against ground-truth regions (VOC boxes or masks).

- Pointing game (Zhang et al. 2016): a hit when the heatmap's peak lies inside the region.
- Energy inside: the share of the heatmap's total mass that lies inside the region, next to the share of the
  image the region covers (what a heatmap spread evenly would score).
A class whose images mostly point outside their regions (hit rate below `SHORTCUT_HIT_RATE`) is flagged as a
likely shortcut: the model decides from something other than the thing it should see (background, a watermark).

Shapes: `cams` (N, S, S) float in [0, 1]; `masks` (N, S, S) bool, in the same network-input coordinates.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from sightline.bundle import Preprocessing

__all__ = ["SHORTCUT_HIT_RATE", "mask_to_input", "pointing_hits", "energy_inside", "region_scores"]

SHORTCUT_HIT_RATE = 0.5  # below this share of peaks inside the region, the class is flagged


def mask_to_input(mask: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """An (H, W) bool region mask in image pixels -> (S, S) bool in network-input pixels (same resize + center
    crop as the image, nearest neighbour)."""
    from PIL import Image

    from sightline.data.transforms import resize_center_crop

    image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L")
    return np.asarray(resize_center_crop(image, replace(pre, interpolation="nearest"))) > 127


def pointing_hits(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) bool: is each heatmap's maximum inside its region? Ties: any maximal pixel inside counts."""
    cams = np.asarray(cams, dtype=np.float32)
    peak = cams.reshape(len(cams), -1).max(axis=1)[:, None, None]
    at_peak = cams >= peak - 1e-6
    return (at_peak & masks).reshape(len(cams), -1).any(axis=1)


def energy_inside(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) share of each heatmap's mass inside its region, in [0, 1] (0 for an all-zero heatmap)."""
    cams = np.asarray(cams, dtype=np.float64)
    total = cams.reshape(len(cams), -1).sum(axis=1)
    inside = (cams * masks).reshape(len(cams), -1).sum(axis=1)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def region_scores(
    cams: np.ndarray, masks: np.ndarray, labels: list[str], *, hit_rate_flag: float = SHORTCUT_HIT_RATE
) -> dict[str, Any]:
    """Pointing game and energy inside, overall and per class (`labels` (N,) class name of each image).

    Returns {"overall", "energy_inside", "n_images", "per_class": {class: {"pointing_game", "energy_inside",
    "region_area", "n_images", "shortcut"}}, "shortcut_classes": [...]} - the `pointing_game` block of
    metrics.json (DESIGN.md) with the extra figures beside it."""
    hits = pointing_hits(cams, masks)
    energy = energy_inside(cams, masks)
    area = np.asarray(masks, dtype=np.float64).reshape(len(masks), -1).mean(axis=1)
    labels_arr = np.asarray(labels)
    per_class: dict[str, dict[str, Any]] = {}
    for c in sorted(set(labels)):
        m = labels_arr == c
        rate = float(hits[m].mean())
        per_class[c] = {
            "pointing_game": rate,
            "energy_inside": float(energy[m].mean()),
            "region_area": float(area[m].mean()),
            "n_images": int(m.sum()),
            "shortcut": bool(rate < hit_rate_flag),
        }
    return {
        "overall": float(hits.mean()) if len(hits) else None,
        "energy_inside": float(energy.mean()) if len(energy) else None,
        "n_images": int(len(hits)),
        "per_class": per_class,
        "shortcut_classes": [c for c, v in per_class.items() if v["shortcut"]],
        "rule": f"a class is flagged when fewer than {hit_rate_flag:.0%} of its heatmap peaks fall inside the region",
    }
