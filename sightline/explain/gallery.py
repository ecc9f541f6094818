"""The explanation gallery: image, true label, prediction, confidence and heatmap side by side, grouped per class
into correct / wrong / low-confidence, so a domain expert can check what the model looks at.

`select_gallery` picks which images (pure, arrays in); `gallery_entries` renders them (PNG bytes, base64 for the
self-contained report).
"""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

__all__ = ["GROUPS", "select_gallery", "png_base64", "gallery_entries"]

GROUPS = ("correct", "wrong", "low-confidence")


def select_gallery(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    confidence: np.ndarray,
    *,
    per_group: int = 3,
    low_confidence: float | None = None,
) -> list[tuple[int, str, int]]:
    """(image index, group, true class index) for up to `per_group` images per class and group.

    correct: the most confident correct predictions; wrong: the most confident mistakes (the worrying ones);
    low-confidence: the least confident predictions (below `low_confidence` when given, else the lowest ones
    not already shown). Groups are by TRUE class."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    confidence = np.asarray(confidence, dtype=np.float64)
    chosen: list[tuple[int, str, int]] = []
    for c in np.unique(y_true):
        idx = np.flatnonzero(y_true == c)
        right = idx[y_pred[idx] == c]
        wrong = idx[y_pred[idx] != c]
        shown: set[int] = set()
        for group, pool, order in (
            ("correct", right, -confidence[right]),
            ("wrong", wrong, -confidence[wrong]),
        ):
            for i in pool[np.argsort(order, kind="stable")][:per_group]:
                chosen.append((int(i), group, int(c)))
                shown.add(int(i))
        rest = np.array([i for i in idx if int(i) not in shown], dtype=int)
        if low_confidence is not None:
            rest = rest[confidence[rest] < low_confidence]
        for i in rest[np.argsort(confidence[rest], kind="stable")][:per_group]:
            chosen.append((int(i), "low-confidence", int(c)))
    return chosen


def png_base64(array: np.ndarray, *, size: int | None = None) -> str:
    """(H, W, 3) uint8 -> base64 PNG text, upscaled (nearest) so the longer side is `size` when given."""
    from PIL import Image

    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if size is not None and max(image.size) != size:
        scale = size / max(image.size)
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS,
        )
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def gallery_entries(
    selection: list[tuple[int, str, int]],
    *,
    crops: np.ndarray,
    cams: np.ndarray,
    paths: list[str],
    classes: list[str],
    y_pred: np.ndarray,
    confidence: np.ndarray,
    size: int = 160,
) -> list[dict[str, Any]]:
    """One dict per selected image: class, group, path, true, predicted, confidence, image and heatmap overlay as
    base64 PNGs. `crops` (N, S, S, 3) uint8 and `cams` (N, S, S) are indexed like the selection."""
    from sightline.explain.cam import overlay

    out = []
    for i, group, c in selection:
        out.append(
            {
                "class": classes[c],
                "group": group,
                "path": paths[i],
                "true": classes[c],
                "predicted": classes[int(y_pred[i])],
                "confidence": float(confidence[i]),
                "image": png_base64(crops[i], size=size),
                "heatmap": png_base64(overlay(crops[i], cams[i]), size=size),
            }
        )
    return out
