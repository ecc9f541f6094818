"""Which input size to train at, from the data's native resolution and the model's range.

- Images at least about as large as the model's pretrained size (median shorter side, read from the headers): the
  pretrained size; there is nothing to gain from more pixels than the weights were trained on by default.
- Very small images (median shorter side below `SMALL_SIDE`, 96 px): `SMALL_INPUT` (128 px), or the pretrained size
  when that is smaller or close to it; no probe. This is BiT's HyperRule (Kolesnikov et al., "Big Transfer", 2020:
  images below 96 x 96 px are fine-tuned at 128 px): an ImageNet backbone needs objects at a few dozen pixels, and
  fine-tuning gains from resolution where a short pass cannot see it (scikit-learn's 8 px digits, plain timm loop,
  3 epochs: 0.69 / 0.86 / 0.94 val accuracy at 32 / 64 / 96 px, while one probe pass learned nothing at any
  size) and the probe cost more than it saved (64 px photos: 30 s of probing before the first epoch). 96 px for
  the 8 px digits was measured and not taken: the plain loop's 0.937 after 3 epochs as at 128 px, at 0.90x the
  plain loop's time against 0.83x at 128 px (each in its own run of benchmarks/time_to_accuracy.py), and a lower
  best (0.963 against 0.970).
- Other small images (96 px up to `NEAR_DEFAULT` of the pretrained size): a short probe measures the trade. The
  candidates are the native size, doubled while below the pretrained size, and the pretrained size (96 px images:
  96, 224). From the same pretrained weights, one pass over a sample of the training images (at most
  `PROBE_IMAGES`) at each size, smallest first, then accuracy on the validation images; the climb stops when a
  size is not more accurate than the one before by more than `tolerance`. The smallest size within `tolerance` of
  the best wins: its epochs cost (larger / smaller)^2 times less. A probe that learned nothing tells the sizes
  apart by noise: a size counts only when its accuracy beats always answering the largest val class (`chance`) by
  3 standard errors; below that the climb goes on, and when no size gets there the model's pretrained size is
  used. Every figure is printed and stored with the run.
The answer is an `InputSizeChoice` (size, why, the probe's figures); `--input-size` skips all of it. Upsampled
small images also train with a faster backbone (sightline.train.config.SMALL_IMAGE_RECIPE).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["MIN_SIZE", "PROBE_IMAGES", "SMALL_INPUT", "SMALL_SIDE", "InputSizeChoice", "candidate_sizes",
           "choose_input_size", "native_side", "small_images"]

MIN_SIZE = 32  # smaller leaves the last stage of a stride-32 network (EfficientNet, ResNet) under one pixel
PROBE_IMAGES = 256  # training images per probe pass (and at most this many validation images)
NEAR_DEFAULT = 0.8  # sizes above this share of the pretrained size are trained at the pretrained size
SMALL_SIDE = 96  # images with a shorter side below this are trained at SMALL_INPUT without a probe (BiT HyperRule)
SMALL_INPUT = 128  # BiT's fine-tuning size for them


@dataclass
class InputSizeChoice:
    size: int
    why: str
    native: int | None = None  # median shorter side of the training images, px
    probe: dict[int, dict[str, float]] = field(default_factory=dict)  # size -> val_acc, val_loss, seconds

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["probe"] = {str(k): v for k, v in self.probe.items()}
        return out


def native_side(samples: Sequence[Any]) -> int | None:
    """Median shorter side (px, after EXIF orientation, from the headers) of `samples`; None when unknown."""
    sides = [min(s.width, s.height) for s in samples if getattr(s, "width", 0) and getattr(s, "height", 0)]
    return int(statistics.median(sides)) if sides else None


def small_images(native: int | None, default: int) -> bool:
    """Whether `native` px images (median shorter side) count as small for a model pretrained at `default` px:
    below NEAR_DEFAULT of it, so training at the pretrained size would upsample them."""
    return native is not None and native < NEAR_DEFAULT * default


def candidate_sizes(native: int, default: int) -> list[int]:
    """The sizes a probe tries for images of `native` px: native (at least MIN_SIZE), doubled while clearly
    below `default`, then `default` (64, 224 -> [64, 128, 224]; 8, 224 -> [32, 64, 128, 224])."""
    sizes = [max(MIN_SIZE, native)]
    while sizes[-1] * 2 < NEAR_DEFAULT * default:
        sizes.append(sizes[-1] * 2)
    return [*sizes, default]


def choose_input_size(
    requested: int | str | None,
    default: int,
    samples: Sequence[Any],
    *,
    probe: Callable[[int], dict[str, float]] | None = None,
    tolerance: float | None = None,
    n_val: int = 0,
    chance: float | None = None,
) -> InputSizeChoice:
    """The input size for `requested` ("auto", None = the model's `default`, or a size) and the training
    `samples`. `probe(size)` -> {"val_acc", "val_loss"} runs the short fine-tune; without it (several processes,
    or a caller that cannot afford it) small images from SMALL_SIDE up train at their native size. `tolerance`:
    how much more accurate a larger size must be to be worth its cost (default: two images of `n_val`, at least
    0.01).
    `chance`: the val accuracy of always answering the largest class (None: every probe result counts)."""
    native = native_side(samples)  # recorded with every answer: the small-image recipe reads it
    if isinstance(requested, int):
        return InputSizeChoice(requested, f"{requested} px as requested (--input-size)", native)
    if requested is None:
        return InputSizeChoice(default, f"{default} px, the model's pretrained size (input_size: null)", native)
    if native is None:
        return InputSizeChoice(default, f"{default} px, the model's pretrained size (image sizes unknown)")
    if not small_images(native, default):
        relation = "at least" if native >= default else "close to"
        return InputSizeChoice(default, f"{default} px: the training images' median shorter side ({native} px) is "
                                        f"{relation} the model's pretrained size ({default} px)", native)
    if native < SMALL_SIDE:
        size = SMALL_INPUT if SMALL_INPUT < NEAR_DEFAULT * default else default
        return InputSizeChoice(size, f"{size} px for {native} px images: below {SMALL_SIDE} px, images are upsampled "
                                     f"to {SMALL_INPUT} px (or the model's pretrained size, {default} px, when that is "
                                     "close) without a probe (BiT's HyperRule; a short probe at such sizes learns "
                                     "too little to choose)", native)
    sizes = candidate_sizes(native, default)
    if probe is None:
        return InputSizeChoice(sizes[0], f"{sizes[0]} px: the training images' median shorter side is {native} px "
                                         f"(below the model's {default} px; no probe run)", native)
    tol = tolerance if tolerance is not None else max(0.01, 2.0 / max(1, n_val))
    floor = _informative_floor(chance, n_val)
    results: dict[int, dict[str, float]] = {}
    previous: float | None = None
    for size in sizes:
        started = time.perf_counter()
        results[size] = {**probe(size), "seconds": round(time.perf_counter() - started, 1)}
        if previous is not None and results[size]["val_acc"] <= previous + tol:
            break  # no longer paying off: larger sizes are not tried
        if results[size]["val_acc"] > floor:
            previous = results[size]["val_acc"]  # a result at chance level says nothing: the climb goes on
    figures = "; ".join(f"{s} px val acc {r['val_acc']:.3f} ({r['seconds']:.0f} s)" for s, r in results.items())
    informative = {s: r for s, r in results.items() if r["val_acc"] > floor}
    if not informative:
        return InputSizeChoice(default, f"{default} px, the model's pretrained size: one short pass learned nothing "
                                        f"measurable at any size for {native} px images (every val accuracy at or "
                                        f"below {floor:.3f}, 3 standard errors above always answering the largest "
                                        f"class, {chance:.3f}; probe: {figures})", native, results)
    best = max(r["val_acc"] for r in informative.values())
    size = min(s for s, r in informative.items() if r["val_acc"] >= best - tol)
    why = (f"{size} px for {native} px images: the smallest size within {tol:.3f} of the best validation accuracy "
           f"after one short pass from the pretrained weights (probe: {figures})")
    return InputSizeChoice(size, why, native, results)


def _informative_floor(chance: float | None, n_val: int) -> float:
    """The val accuracy a probe must beat to say anything: `chance` + 3 binomial standard errors on `n_val`
    images (-1 without a chance level: everything counts)."""
    if chance is None or n_val <= 0:
        return -1.0
    return chance + 3.0 * (chance * (1.0 - chance) / n_val) ** 0.5
