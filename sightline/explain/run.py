"""`explain_files`: heatmap overlays for a few image files with a bundle (`sightline explain RUN IMAGE...`).

Each image becomes `<out>/<stem>.<method>.png`: the input as the network sees it (resized and center-cropped with
the bundle's preprocessing) next to the heatmap overlay for the predicted class (or `target`).

Example:
    >>> rows = explain_files("runs/demo", ["part_17.jpg"], method="gradcam++", out="explain")
    >>> rows[0]["predicted"], rows[0]["overlay"]
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sightline.errors import UserInputError

__all__ = ["explain_files"]


def explain_files(
    run_or_bundle: str | Path,
    images: Sequence[str | Path],
    *,
    method: str = "gradcam",
    target: str | None = None,
    out: str | Path = "explain",
    device: str | None = None,
) -> list[dict[str, Any]]:
    """One row per input: {path, predicted, confidence, explained, overlay} or {path, error} for a file that cannot
    be read. Confidence is calibrated (bundle temperature and thresholds, as the server decides)."""
    from PIL import Image

    from sightline.bundle import load_bundle
    from sightline.decision import decide
    from sightline.evaluate.predict import crops_to_batch, default_device, fast_inference, load_crops, logits_for_crops
    from sightline.explain.cam import compute_cams, method_class, overlay

    method_class(method)  # unknown method -> one-line error before any work
    bundle = load_bundle(run_or_bundle)
    if target is not None and target not in bundle.classes:
        raise UserInputError(f"--class {target!r} is not one of the model's classes {bundle.classes}.")
    device = device or default_device()
    model = fast_inference(bundle.load_model(device))
    inputs = load_crops(list(images), bundle.preprocessing)
    rows: list[dict[str, Any]] = [{"path": f["path"], "error": f["reason"]} for f in inputs.failed]
    if not len(inputs.crops):
        return rows
    logits = logits_for_crops(model, inputs.crops, bundle.preprocessing, device=device)
    dec = decide(logits, bundle.classes, temperature=bundle.temperature, thresholds=bundle.thresholds)
    targets = [bundle.classes.index(target)] * len(dec.labels) if target else dec.labels.tolist()
    cams = compute_cams(model, crops_to_batch(inputs.crops, bundle.preprocessing), method=method, targets=targets)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tag = method.lower().replace("+", "p")
    for k, path in enumerate(inputs.paths):
        crop = inputs.crops[k]
        side_by_side = np.concatenate([crop, np.full((crop.shape[0], 4, 3), 255, np.uint8),
                                       overlay(crop, cams[k])], axis=1)
        dest = out / f"{path.stem}.{tag}.png"
        n = 1
        while dest.exists() and any(r.get("overlay") == str(dest) for r in rows):
            dest = out / f"{path.stem}-{n}.{tag}.png"
            n += 1
        Image.fromarray(side_by_side).save(dest)
        rows.append({
            "path": str(path),
            "predicted": bundle.classes[int(dec.labels[k])],
            "confidence": float(dec.confidences[k]),
            "decision": "review" if dec.review[k] else "accept",
            "explained": bundle.classes[int(targets[k])],
            "method": method,
            "overlay": str(dest),
        })
    return rows
