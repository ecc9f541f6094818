"""Class imbalance: what `sightline train` does about it, decided from the class counts alone.

Torch-free, so `sightline data audit` states what training will do by calling the same function, without importing
the training stack (`sightline.train.datamodule` re-exports `choose_balance`).
"""
from __future__ import annotations

from collections.abc import Mapping

__all__ = ["BALANCE_NONE_BELOW", "BALANCE_WEIGHTS_UP_TO", "class_ratio", "choose_balance"]

# Thresholds on the max/min class-count ratio (training images per class).
BALANCE_NONE_BELOW = 1.5  # below: balanced enough, nothing is done
BALANCE_WEIGHTS_UP_TO = 10.0  # up to here: class-weighted loss; beyond: balanced sampling, so that every class is
#                               seen often enough to learn (a weighted loss alone leaves a rare class few steps)


def class_ratio(counts: Mapping[str, int]) -> float:
    """max / min of {class: images} over the classes that have images; 1.0 when none has."""
    present = [n for n in counts.values() if n > 0]
    return max(present) / min(present) if present else 1.0


def choose_balance(counts: Mapping[str, int], requested: str = "auto") -> str:
    """How training handles class imbalance: "none" when `class_ratio(counts)` is below BALANCE_NONE_BELOW,
    "weights" (class-weighted loss) up to BALANCE_WEIGHTS_UP_TO, "sampler" (balanced sampling) beyond.
    `requested` other than "auto" overrides the choice.

    Example:
        >>> choose_balance({"ok": 700, "crack": 40})
        'sampler'
    """
    if requested != "auto":
        return requested
    ratio = class_ratio(counts)
    if ratio < BALANCE_NONE_BELOW:
        return "none"
    return "weights" if ratio <= BALANCE_WEIGHTS_UP_TO else "sampler"
