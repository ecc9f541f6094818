"""Robustness: how accuracy and predictions change under common corruptions (in the spirit of ImageNet-C,
Hendrycks & Dietterich 2019), applied to the network-resolution crops so every corruption is comparable.

Each corruption is a pure function (S, S, 3) uint8 -> (S, S, 3) uint8 at severity 1..5. Per corruption and
severity we report accuracy and the flip rate (share of images whose prediction changes from the clean one), and
`failure_modes` turns them into plain sentences for the model card.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["CORRUPTIONS", "corrupt", "robustness_suite", "failure_modes"]


def _gaussian_noise(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    sigma = (0.04, 0.08, 0.12, 0.18, 0.26)[s - 1] * 255
    return np.clip(x + rng.normal(0, sigma, x.shape), 0, 255).astype(np.uint8)


def _blur(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    radius = (0.5, 1.0, 1.5, 2.0, 3.0)[s - 1] * x.shape[0] / 112  # scales with the input size (2-6 px at 224)
    return np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(radius)))


def _brightness(sign: int) -> Callable[[np.ndarray, int, np.random.Generator], np.ndarray]:
    def f(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
        delta = (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1] * 255 * sign
        return np.clip(x.astype(np.float32) + delta, 0, 255).astype(np.uint8)

    return f


def _contrast(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    factor = (0.75, 0.5, 0.4, 0.3, 0.15)[s - 1]
    mean = x.reshape(-1, 3).mean(axis=0)
    return np.clip((x - mean) * factor + mean, 0, 255).astype(np.uint8)


def _rotation(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    angle = (5, 10, 15, 25, 35)[s - 1] * rng.choice((-1, 1))
    fill = tuple(int(v) for v in x.reshape(-1, 3).mean(axis=0))
    return np.asarray(Image.fromarray(x).rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=fill))


def _jpeg(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    quality = (60, 35, 20, 12, 7)[s - 1]
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def _occlusion(x: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    side = max(1, int(round((0.1, 0.2, 0.3, 0.4, 0.5)[s - 1] * min(h, w))))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    out = x.copy()
    out[top : top + side, left : left + side] = 127
    return out


CORRUPTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "blur": _blur,
    "brightness_up": _brightness(+1),
    "brightness_down": _brightness(-1),
    "contrast": _contrast,
    "rotation": _rotation,
    "jpeg": _jpeg,
    "occlusion": _occlusion,
}


def corrupt(crops: np.ndarray, name: str, severity: int, *, seed: int = 0) -> np.ndarray:
    """Apply corruption `name` at `severity` (1..5) to (N, S, S, 3) uint8 crops; seeded, so reproducible."""
    if not 1 <= severity <= 5:
        raise ValueError(f"severity={severity} must be 1..5")
    fn = CORRUPTIONS[name]
    rng = np.random.default_rng(seed)
    return np.stack([fn(c, severity, rng) for c in crops]) if len(crops) else crops


def robustness_suite(
    predict: Callable[[np.ndarray], np.ndarray],
    crops: np.ndarray,
    y_true: np.ndarray,
    *,
    corruptions: Sequence[str] = tuple(CORRUPTIONS),
    severities: Sequence[int] = (1, 3, 5),
    seed: int = 0,
    on_step: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Accuracy and flip rate per corruption and severity.

    `predict` maps (N, S, S, 3) uint8 crops to (N,) predicted class indices (the full decision rule);
    `y_true` (N,). Returns {"clean_accuracy", "n_images", "severities", "results": {corruption: [{severity,
    accuracy, flip_rate}]}}."""
    y_true = np.asarray(y_true)
    clean = predict(crops)
    out: dict[str, Any] = {
        "clean_accuracy": float((clean == y_true).mean()) if len(y_true) else None,
        "n_images": int(len(y_true)),
        "severities": list(severities),
        "results": {},
    }
    for name in corruptions:
        rows = []
        for s in severities:
            pred = predict(corrupt(crops, name, s, seed=seed))
            rows.append(
                {
                    "severity": int(s),
                    "accuracy": float((pred == y_true).mean()),
                    "flip_rate": float((pred != clean).mean()),
                }
            )
            if on_step is not None:
                on_step()
        out["results"][name] = rows
    return out


def failure_modes(result: dict[str, Any], *, floor: float = 0.9, drop: float = 0.05) -> list[str]:
    """Plain sentences: for each corruption, the lowest severity at which accuracy falls more than `drop` below
    the clean accuracy, said as falling below `floor` when it crosses it (and the clean accuracy was above).

    Crossing `floor` alone is not enough: with a clean accuracy just above it, a dip of one or two images (on the
    60 to 100 images the suite runs on) would be reported as a failure mode."""
    clean = result.get("clean_accuracy")
    if clean is None:
        return []
    sentences = []
    for name, rows in result["results"].items():
        words = name.replace("_", " ")
        for row in rows:
            acc = row["accuracy"]
            if clean - acc <= drop + 1e-9:  # within `drop` of clean (the epsilon: 0.93 - 0.05 is not 0.88)
                continue
            if clean >= floor > acc:
                sentences.append(
                    f"Accuracy falls below {floor:.0%} ({acc:.1%}) under {words} of severity {row['severity']}."
                )
                break
            sentences.append(
                f"Accuracy drops from {clean:.1%} to {acc:.1%} under {words} of severity {row['severity']}"
                f" ({row['flip_rate']:.0%} of predictions change)."
            )
            break
    if not sentences:
        worst = max(rows[-1]["flip_rate"] for rows in result["results"].values()) if result["results"] else 0.0
        sentences.append(
            f"No corruption tested lowered accuracy by more than {drop:.0%} (at most {worst:.0%} of predictions change)."
        )
    return sentences
