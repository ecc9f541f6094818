"""Preprocessing shared by every stage: the eval path is PIL + NumPy so PyTorch, ONNX Runtime and the server
produce bit-identical inputs from the same bundle (`Preprocessing`). Training augmentations live in
sightline.train (they wrap this same normalisation)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from sightline.bundle import Preprocessing

__all__ = ["RESAMPLE", "resize_center_crop", "normalize", "eval_preprocess", "stack"]

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resize_center_crop(image: Image.Image, pre: Preprocessing) -> Image.Image:
    """Resize the shorter side to `pre.resize_size`, then center-crop `pre.input_size` square (RGB in, RGB out)."""
    w, h = image.size
    short = pre.resize_size
    if w <= h:
        new_w, new_h = short, max(short, int(round(h * short / w)))
    else:
        new_w, new_h = max(short, int(round(w * short / h))), short
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), RESAMPLE[pre.interpolation])
    s = pre.input_size
    left = (new_w - s) // 2
    top = (new_h - s) // 2
    return image.crop((left, top, left + s, top + s))


def normalize(array_hwc_uint8: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32, scaled to [0, 1] then standardised with mean/std."""
    scale = np.float32(1.0 / 255.0)
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    x = array_hwc_uint8.astype(np.float32) * scale
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def eval_preprocess(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """An RGB PIL image -> (3, S, S) float32 network input, S = pre.input_size."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return normalize(np.asarray(resize_center_crop(image, pre)), pre)


def stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack (3, S, S) inputs into an (N, 3, S, S) float32 batch."""
    return np.ascontiguousarray(np.stack(arrays, axis=0), dtype=np.float32)
