"""`sightline evaluate RUN --data DATA --ood DIR`: how well each open-set score tells the user's own outliers (the
images in DIR) from the evaluated split, at the thresholds the bundle's reference profile holds.

For every score (MSP, energy, k-NN, relative Mahalanobis): AUROC (outliers positive), FPR at 95 % TPR (share of
the split's images flagged by the threshold that catches 95 % of the outliers) and the rejection rate at the
bundle's threshold (share of DIR flagged "unknown"), beside the share of the split flagged by that threshold;
the profile's chosen score is marked. Unlike the stand-in figures in model.json, nothing here was used to choose
the score or its threshold, so these are the figures to quote.

The block lands in metrics.json under "ood"; the report's open-set section shows it with a histogram and the
outliers the chosen score rejects most surely and those it misses (`section_context`).
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sightline.errors import UserInputError

if TYPE_CHECKING:
    from sightline.inference import Engine
    from sightline.monitor.reference import ReferenceProfile
    from sightline.progress import ProgressFn

__all__ = ["ood_folder_report", "section_context"]

EXAMPLES = 4  # outliers shown per group (rejected, missed) in the report


def ood_folder_report(
    engine: Engine,
    profile: ReferenceProfile,
    folder: str | Path,
    *,
    in_logits: np.ndarray,
    in_features: np.ndarray | None,
    split: str,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Score every image under `folder` through the inference core and compare with the (N, K) logits and
    (N, D) features of the evaluated `split`. Returns metrics.json's "ood" block: {folder, n_images, unreadable,
    in_distribution {split, n_images}, chosen, scores {name: {auroc, fpr_at_95_tpr, threshold, rejection_rate,
    in_flag_rate, chosen}}, histogram (of the chosen score), examples}.

    Raises UserInputError when `folder` is not a folder or holds no readable image."""
    from sightline.data.inputs import expand_inputs
    from sightline.decision import softmax
    from sightline.inference import score_files
    from sightline.monitor import ood

    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"--ood '{folder}' is not a folder; pass a folder of images unlike the classes.")
    paths = expand_inputs([folder])
    if not paths:
        raise UserInputError(f"--ood '{folder}' holds no image (JPEG, PNG, BMP, TIFF or WebP); add some.")
    (out,), inputs = score_files([engine], paths, batch_size=batch_size, progress=progress,
                                 task="open-set: --ood images")
    if len(out) < 2:
        raise UserInputError(f"--ood '{folder}': {len(out)} of {len(paths)} images could be read; it needs at least "
                             "2 (see the unreadable list with `sightline predict`).")
    inside = profile.ood_scores(in_logits, in_features)
    outside = profile.ood_scores(out.logits, out.features)
    table = profile.ood_choice.table if profile.ood_choice is not None else {}
    chosen = profile.ood_choice.score if profile.ood_choice is not None else None
    scores: dict[str, dict[str, Any]] = {}
    for name in (n for n in ood.SCORES if n in inside and n in outside):
        a, b = inside[name], outside[name]
        threshold = table.get(name, {}).get("threshold")
        scores[name] = {
            "auroc": ood.auroc(a, b),
            "fpr_at_95_tpr": ood.fpr_at_tpr(a, b, 0.95),
            "threshold": threshold,
            "rejection_rate": None if threshold is None else float(np.mean(b > threshold)),
            "in_flag_rate": None if threshold is None else float(np.mean(a > threshold)),
            "chosen": name == chosen,
        }
    probs = softmax(out.logits, profile.temperature)
    kept = [str(p) for p in inputs.paths]
    result: dict[str, Any] = {
        "folder": str(folder),
        "n_images": len(kept),
        "unreadable": inputs.failed,
        "in_distribution": {"split": split, "n_images": int(len(in_logits))},
        "chosen": chosen,
        "scores": scores,
        "histogram": None,
        "examples": [],
    }
    if chosen in scores:
        a, b = inside[chosen], outside[chosen]
        edges = np.histogram_bin_edges(np.concatenate([a, b]), bins=30)
        result["histogram"] = {"score": chosen, "edges": edges.tolist(), "in": np.histogram(a, edges)[0].tolist(),
                               "out": np.histogram(b, edges)[0].tolist(), "threshold": scores[chosen]["threshold"]}
        order = np.argsort(-b, kind="stable")
        threshold = scores[chosen]["threshold"]
        top = order[:EXAMPLES]
        bottom = [i for i in order[::-1][:EXAMPLES] if i not in set(top.tolist())]
        for group, rows in (("rejected", top), ("missed", bottom)):
            for i in rows:
                flagged = threshold is not None and bool(b[i] > threshold)
                if group == "missed" and flagged:
                    continue  # every outlier was rejected: nothing was missed
                result["examples"].append({
                    "group": group, "path": kept[i], "score": float(b[i]), "flagged": flagged,
                    "predicted": engine.classes[int(probs[i].argmax())], "confidence": float(probs[i].max())})
    return result


def _histogram_png(hist: dict[str, Any], split: str) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    edges = np.asarray(hist["edges"])
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    width = np.diff(edges)
    ax.bar(edges[:-1], hist["in"], width, align="edge", alpha=0.6, label=f"{split} split (in-distribution)")
    ax.bar(edges[:-1], hist["out"], width, align="edge", alpha=0.6, label="--ood images", color="tab:red")
    if hist.get("threshold") is not None:
        ax.axvline(hist["threshold"], color="black", ls="--", lw=1, label="threshold (unknown above)")
    ax.set_xlabel(f"{hist['score']} score (higher = more unlike the training data)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def section_context(ood_block: dict[str, Any] | None, *, size: int = 120) -> dict[str, Any]:
    """What templates/report/openset.html.j2 needs beyond the result: the histogram as a base64 PNG and each
    example's thumbnail (decoded again from its file; an example whose file is gone is shown without one)."""
    if not ood_block:
        return {"plot": None, "examples": []}
    from sightline.data.images import load_image
    from sightline.errors import ImageError
    from sightline.explain.gallery import png_base64

    examples = []
    for e in ood_block.get("examples", []):
        try:
            image = load_image(e["path"])
            image.thumbnail((size, size))
            thumb = png_base64(np.asarray(image))
        except (ImageError, OSError):
            thumb = None
        examples.append({**e, "image": thumb})
    hist = ood_block.get("histogram")
    split = ood_block["in_distribution"]["split"]
    return {"plot": _histogram_png(hist, split) if hist else None, "examples": examples}
