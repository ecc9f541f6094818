"""Heatmaps for an evaluated split: which images the gallery shows and which are scored against their ground-truth
regions, and the heatmaps for them (`evaluate`'s explanation step; `sightline explain` does single files).

The split's pixels come from a `CropSource` (positions in the split -> (n, S, S, 3) uint8 crops, the pixels the
metrics were computed on), so only the images shown or scored are decoded, never the whole split. Heatmaps are
computed on the bundle's PyTorch model (`TorchBackend.model`) with pytorch-grad-cam, CAM_CHUNK images at a time.

Example:
    >>> found = explain_split(engine.backend.model, crops=crops, samples=samples, y=y, decisions=dec,
    ...                       classes=bundle.classes, pre=bundle.preprocessing, method="gradcam")
    >>> found.gallery[0]["heatmap"], found.regions["overall"]          # base64 PNG; pointing-game hit rate
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.explain.cam import CAM_CHUNK, crop_cams

if TYPE_CHECKING:
    import torch

    from sightline.data.datasets import Sample
    from sightline.decision import Decisions
    from sightline.preprocessing import Preprocessing

__all__ = ["CropSource", "Explanation", "explain_split", "gallery_for", "regions_for"]

CropSource = Callable[[Sequence[int]], np.ndarray]  # positions in the split -> (n, S, S, 3) uint8 crops


@dataclass
class Explanation:
    """What the heatmaps of a split show: `gallery` rows (`gallery_entries`, base64 PNGs for the report) and the
    region scores (`region_scores` plus "method": the `pointing_game` block of metrics.json; None when no image
    has a usable ground-truth region)."""

    gallery: list[dict[str, Any]]
    regions: dict[str, Any] | None


def explain_split(
    model: torch.nn.Module,
    *,
    crops: CropSource,
    samples: Sequence[Sample],
    y: np.ndarray,
    decisions: Decisions,
    classes: Sequence[str],
    pre: Preprocessing,
    method: str = "gradcam",
    review_confidence: float | None = None,
    per_group: int = 3,
    max_region_images: int = 300,
    seed: int = 0,
) -> Explanation:
    """The gallery (heatmaps of the predicted class) and the region scores (heatmaps of the true class) of a split.

    `samples`, `y` (N,) true class indices and `decisions` (N rows) are in the split's order, and `crops` gives the
    pixels by the same positions. At most `max_region_images` regions are scored (a seeded sample)."""
    gallery = gallery_for(model, crops=crops, samples=samples, y=y, decisions=decisions, classes=classes, pre=pre,
                          method=method, review_confidence=review_confidence, per_group=per_group)
    regions = regions_for(model, crops=crops, samples=samples, y=y, classes=classes, pre=pre, method=method,
                          max_images=max_region_images, seed=seed)
    return Explanation(gallery=gallery, regions=regions)


def gallery_for(
    model: torch.nn.Module,
    *,
    crops: CropSource,
    samples: Sequence[Sample],
    y: np.ndarray,
    decisions: Decisions,
    classes: Sequence[str],
    pre: Preprocessing,
    method: str,
    review_confidence: float | None,
    per_group: int,
) -> list[dict[str, Any]]:
    """Gallery rows (see `select_gallery`): per true class the most confident correct predictions, the most
    confident mistakes and the least confident predictions (below `review_confidence` when there is one), each
    with the heatmap of its PREDICTED class: what made the model say what it said."""
    from sightline.explain.gallery import gallery_entries, select_gallery

    selection = select_gallery(y, decisions.labels, decisions.confidences, per_group=per_group,
                               low_confidence=review_confidence or None)  # no review threshold: the lowest ones
    idx = sorted({i for i, _, _ in selection})
    if not idx:
        return []
    shown = crops(idx)
    cams = crop_cams(model, shown, [int(decisions.labels[i]) for i in idx], pre=pre, method=method)
    pos = {i: k for k, i in enumerate(idx)}
    return gallery_entries(
        [(pos[i], group, c) for i, group, c in selection], crops=shown, cams=cams,
        paths=[samples[i].relpath for i in idx], classes=list(classes), y_pred=decisions.labels[idx],
        confidence=decisions.confidences[idx],
    )


def regions_for(
    model: torch.nn.Module,
    *,
    crops: CropSource,
    samples: Sequence[Sample],
    y: np.ndarray,
    classes: Sequence[str],
    pre: Preprocessing,
    method: str,
    max_images: int,
    seed: int = 0,
) -> dict[str, Any] | None:
    """Region scores (`region_scores` plus "method") of the heatmaps of the TRUE class for the images that have a
    ground-truth region inside the center crop: does the evidence for what is there sit where it is? A seeded
    sample of `max_images` when there are more; None when no image has a usable region."""
    from sightline.data.datasets import load_regions
    from sightline.explain.regions import mask_to_input, region_scores

    with_region = [i for i, s in enumerate(samples) if s.region is not None]
    if not with_region:
        return None
    if len(with_region) > max_images:
        rng = np.random.default_rng(seed)
        with_region = sorted(rng.choice(with_region, max_images, replace=False).tolist())
    masks, keep = [], []
    for i in with_region:
        s = samples[i]
        mask = load_regions(s, (s.width, s.height)) if s.width and s.height else None
        if mask is None:
            continue
        mask = mask_to_input(mask, pre)
        if not mask.any():  # the region lies wholly outside the center crop: the model never saw it
            continue
        masks.append(mask)
        keep.append(i)
    if not keep:
        return None
    # Decoded CAM_CHUNK images at a time: only their crops are held, next to the (N, S, S) heatmaps.
    cams = np.concatenate([
        crop_cams(model, crops(keep[k : k + CAM_CHUNK]), [int(y[i]) for i in keep[k : k + CAM_CHUNK]], pre=pre,
                  method=method)
        for k in range(0, len(keep), CAM_CHUNK)
    ])
    regions = region_scores(cams, np.stack(masks), [classes[int(y[i])] for i in keep])
    regions["method"] = method
    return regions
