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
    """One row per image: {path, predicted, confidence, decision, explained, method, overlay}, or {path, error} for
    a file that cannot be read; a folder in `images` is searched for its images (as `predict` does), and one
    with none raises UserInputError. Decoding, the forward pass and the decision (bundle temperature and thresholds)
    are the inference core's, as the server's; the heatmaps are pytorch-grad-cam's on the bundle's PyTorch model
    (`device`: default CUDA when available)."""
    from PIL import Image

    from sightline.bundle import load_bundle
    from sightline.data.inputs import expand_inputs, shown_name
    from sightline.data.datasets import refuse_out_inside_splits
    from sightline.explain.cam import crop_cams, method_class, overlay
    from sightline.inference import TorchBackend, load_crops, open_engine

    method_class(method)  # unknown method -> one-line error before any work
    bundle = load_bundle(run_or_bundle)
    if target is not None and target not in bundle.classes:
        raise UserInputError(f"--class {target!r} is not one of the model's classes {bundle.classes}.")
    trained_on = bundle.extra.get("train", {}).get("data_dir")
    if trained_on:  # overlays there would become images of a class of the model's own data
        refuse_out_inside_splits(out, trained_on)
    paths = expand_inputs(images)
    if not paths:
        given = ", ".join(f"'{p}'" for p in images) or "(nothing given)"
        raise UserInputError(f"no image in {given}; give image files or a folder that holds some.")
    inputs = load_crops(paths, bundle.preprocessing)
    # names as text a terminal and JSON can hold (a non-UTF-8 file name raised UnicodeEncodeError)
    rows: list[dict[str, Any]] = [{"path": shown_name(f["path"]), "error": shown_name(f["reason"])}
                                  for f in inputs.failed]
    if not len(inputs.crops):
        return rows
    with open_engine(bundle, backend="torch", device=device) as engine:
        predictions = engine.decide(engine.run_crops(inputs.crops), [str(p) for p in inputs.paths])
        explained = [target or p.label for p in predictions]
        backend = engine.backend
        assert isinstance(backend, TorchBackend)  # pytorch-grad-cam needs the nn.Module
        cams = crop_cams(backend.model, inputs.crops, [bundle.classes.index(c) for c in explained],
                         pre=bundle.preprocessing, method=method)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tag = method.lower().replace("+", "p")
    for k, path in enumerate(inputs.paths):
        crop = inputs.crops[k]
        side_by_side = np.concatenate([crop, np.full((crop.shape[0], 4, 3), 255, np.uint8),
                                       overlay(crop, cams[k])], axis=1)
        # a name near the 255-byte limit of most file systems leaves room for '-N.<method>.png'
        stem = shown_name(path.stem).encode()[:200].decode(errors="ignore")
        dest = out / f"{stem}.{tag}.png"
        n = 1
        while dest.exists() and any(r.get("overlay") == str(dest) for r in rows):
            dest = out / f"{stem}-{n}.{tag}.png"
            n += 1
        Image.fromarray(side_by_side).save(dest)
        rows.append({
            "path": shown_name(path),
            "predicted": predictions[k].label,
            "confidence": predictions[k].confidence,
            "decision": predictions[k].decision,
            "explained": explained[k],
            "method": method,
            "overlay": str(dest),
        })
    return rows
