"""Does the model look where it should? Scores heatmaps against ground-truth regions (VOC boxes or masks).

- Pointing game (Zhang et al. 2016): a hit when the heatmap's peak lies inside the region, with their tolerance of
  15 px at 224 px (scaled to the input size), since a heatmap from a stride-8..32 feature map cannot land on a
  one-pixel-wide crack exactly.
- Energy inside: the share of the heatmap's total mass that lies inside the region, and its lift: that share
  divided by the share of the image the region covers (1.0 = no better than a heatmap spread evenly).
A class is flagged as a likely shortcut when the model mostly looks outside its regions: fewer than
`SHORTCUT_HIT_RATE` of its heatmap peaks on the region AND less than `SHORTCUT_LIFT` times the heat an even spread
would put there. The model then decides from something other than the thing it should see (a marker, the
background, a watermark). Both are needed because thin regions (a crack covers 0.3 % of a 224 px image) are hard to
hit with the peak of a 7x7 map even when the heat is clearly on them. Measured: synth `--shortcut crack`, Lite0
probe at 64 px: hit rate 0.17, lift 1.5 (flagged); without the marker 0.61, lift 2.1; at 224 px a weak probe hit
cracks 0.46 of the time with lift 5.2 (not a shortcut), spots 0.33 with lift 1.2 (flagged: it barely sees spots).

Shapes: `cams` (N, S, S) float in [0, 1]; `masks` (N, S, S) bool, in the same network-input coordinates.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from sightline.preprocessing import Preprocessing

__all__ = [
    "SHORTCUT_HIT_RATE",
    "SHORTCUT_LIFT",
    "mask_to_input",
    "pointing_hits",
    "energy_inside",
    "default_tolerance",
    "region_scores",
]

SHORTCUT_HIT_RATE = 0.5  # below this share of peaks inside the region ...
SHORTCUT_LIFT = 2.0  # ... and less than this multiple of an even spread's heat inside, the class is flagged
TOLERANCE_AT_224 = 15  # pointing-game tolerance in pixels at a 224 px input (Zhang et al. 2016)


def mask_to_input(mask: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """An (H, W) bool region mask in image pixels -> (S, S) bool in network-input pixels (same resize + center
    crop as the image, nearest neighbour)."""
    from PIL import Image

    from sightline.data.transforms import resize_center_crop

    image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L")
    return np.asarray(resize_center_crop(image, replace(pre, interpolation="nearest"))) > 127


def pointing_hits(cams: np.ndarray, masks: np.ndarray, *, tolerance: int = 0) -> np.ndarray:
    """(N,) bool: is each heatmap's maximum inside its region grown by `tolerance` pixels? Ties: any maximal pixel
    inside counts."""
    cams = np.asarray(cams, dtype=np.float32)
    masks = np.asarray(masks, dtype=bool)
    if tolerance > 0:
        from scipy.ndimage import binary_dilation

        disk = np.hypot(*np.mgrid[-tolerance : tolerance + 1, -tolerance : tolerance + 1]) <= tolerance
        masks = np.stack([binary_dilation(m, structure=disk) for m in masks]) if len(masks) else masks
    peak = cams.reshape(len(cams), -1).max(axis=1)[:, None, None]
    at_peak = cams >= peak - 1e-6
    return (at_peak & masks).reshape(len(cams), -1).any(axis=1)


def energy_inside(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) share of each heatmap's mass inside its region, in [0, 1] (0 for an all-zero heatmap)."""
    cams = np.asarray(cams, dtype=np.float64)
    total = cams.reshape(len(cams), -1).sum(axis=1)
    inside = (cams * masks).reshape(len(cams), -1).sum(axis=1)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def default_tolerance(input_size: int) -> int:
    """Pointing-game tolerance in pixels for a square input of `input_size` pixels."""
    return max(1, int(round(TOLERANCE_AT_224 * input_size / 224)))


def region_scores(
    cams: np.ndarray,
    masks: np.ndarray,
    labels: list[str],
    *,
    hit_rate_flag: float = SHORTCUT_HIT_RATE,
    tolerance: int | None = None,
) -> dict[str, Any]:
    """Pointing game and energy inside, overall and per class (`labels` (N,) class name of each image).

    `tolerance` defaults to 15 px at 224 px, scaled to the heatmaps' size. Returns {"overall", "energy_inside",
    "n_images", "tolerance_px", "per_class": {class: {"pointing_game", "energy_inside", "region_area",
    "energy_lift", "n_images", "shortcut"}}, "shortcut_classes": [...]} - the `pointing_game` block of
    metrics.json (DESIGN.md) with the extra figures beside it."""
    if tolerance is None:
        tolerance = default_tolerance(int(np.asarray(cams).shape[-1])) if len(cams) else 0
    hits = pointing_hits(cams, masks, tolerance=tolerance)
    energy = energy_inside(cams, masks)
    area = np.asarray(masks, dtype=np.float64).reshape(len(masks), -1).mean(axis=1)
    labels_arr = np.asarray(labels)
    per_class: dict[str, dict[str, Any]] = {}
    for c in sorted(set(labels)):
        m = labels_arr == c
        rate = float(hits[m].mean())
        inside, share = float(energy[m].mean()), float(area[m].mean())
        lift = inside / share if share > 0 else float("nan")
        per_class[c] = {
            "pointing_game": rate,
            "energy_inside": inside,
            "region_area": share,
            "energy_lift": lift,
            "n_images": int(m.sum()),
            # a NaN lift (no region area) is "not scored", never evidence of a shortcut
            "shortcut": bool(rate < hit_rate_flag and np.isfinite(lift) and lift < SHORTCUT_LIFT),
        }
    return {
        "overall": float(hits.mean()) if len(hits) else None,
        "energy_inside": float(energy.mean()) if len(energy) else None,
        "n_images": int(len(hits)),
        "tolerance_px": int(tolerance),
        "per_class": per_class,
        "shortcut_classes": [c for c, v in per_class.items() if v["shortcut"]],
        "rule": f"a class is flagged when fewer than {hit_rate_flag:.0%} of its heatmap peaks fall within "
        f"{tolerance} px of the region and the region gets less than {SHORTCUT_LIFT:g}x the heat of an even spread",
    }
