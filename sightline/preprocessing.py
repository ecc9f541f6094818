"""How an image becomes the network's input (`Preprocessing`): settings that travel with the weights, like timm's
`pretrained_cfg`. The lowest layer of the package: data, models, the bundle and the inference core all read it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sightline.errors import BundleError

__all__ = ["Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input; travels with the weights (like timm's pretrained_cfg).

    Eval path: resize the shorter side to `round(input_size / crop_pct)`, center-crop `input_size` square,
    scale to [0, 1], subtract `mean`, divide by `std` (per RGB channel)."""

    input_size: int  # side of the square network input, pixels
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"  # PIL resampling name: nearest, bilinear, bicubic, lanczos
    crop_pct: float = 0.875  # share of the resized image kept by the center crop

    def __post_init__(self) -> None:
        if self.input_size < 8:
            raise BundleError(f"preprocessing.input_size={self.input_size} is too small; use at least 8 pixels.")
        if not 0.1 <= self.crop_pct <= 1.0:
            raise BundleError(f"preprocessing.crop_pct={self.crop_pct} must be in [0.1, 1.0].")
        if self.interpolation not in ("nearest", "bilinear", "bicubic", "lanczos"):
            raise BundleError(
                f"preprocessing.interpolation={self.interpolation!r} is unknown; "
                "use nearest, bilinear, bicubic or lanczos."
            )

    @property
    def resize_size(self) -> int:
        """Shorter side after the resize, before the center crop."""
        return int(round(self.input_size / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        try:
            pre = cls(
                input_size=int(data["input_size"]),
                mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
                interpolation=str(data.get("interpolation", "bicubic")),
                crop_pct=float(data.get("crop_pct", 0.875)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"model.json 'preprocessing' is invalid ({exc}); re-export the bundle.") from exc
        finite = all(math.isfinite(v) for v in (*pre.mean, *pre.std))
        if len(pre.mean) != 3 or len(pre.std) != 3 or not finite or min(pre.std) <= 0:
            # a std of 0 gave NaN confidences for every image; one mean value was broadcast over the 3 channels
            raise BundleError(f"model.json 'preprocessing': mean={list(pre.mean)} and std={list(pre.std)} must be 3 "
                              "finite numbers each (R, G, B), std above 0; re-export the bundle.")
        return pre
