from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

from sightline.bundle import Preprocessing
from sightline.data.transforms import eval_preprocess, stack


def _smooth_image(h: int, w: int) -> Image.Image:
    """A photo-like image (smooth gradients plus mild noise): what the preprocessing sees in practice."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 90 * np.sin(xx / 17 + k) * np.cos(yy / 23 - k) for k in range(3)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("interpolation", "mode", "size"),
    [
        ("bilinear", T.InterpolationMode.BILINEAR, (90, 120)),
        ("bicubic", T.InterpolationMode.BICUBIC, (375, 500)),
        ("bicubic", T.InterpolationMode.BICUBIC, (500, 333)),
        ("nearest", T.InterpolationMode.NEAREST, (90, 121)),
    ],
)
def test_eval_preprocess_matches_torchvision_pipeline(interpolation, mode, size):
    # An independent computation of the same recipe: torchvision's Resize + CenterCrop + Normalize on PIL.
    # We resample only the region the crop keeps, which agrees with resize-then-crop to rounding: at most a few
    # pixels differ, by one grey level (1 / 255 / std in normalised units). `nearest` must agree exactly.
    image = _smooth_image(*size)
    pre = Preprocessing(64, interpolation=interpolation, crop_pct=0.875)
    ours = eval_preprocess(image, pre)
    ref = T.Compose([
        T.Resize(pre.resize_size, interpolation=mode),
        T.CenterCrop(pre.input_size),
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(pre.mean, pre.std),
    ])(image).numpy()
    assert ours.shape == (3, 64, 64) and ours.dtype == np.float32
    grey = 1 / 255 / min(pre.std)
    diff = np.abs(ours - ref)
    if interpolation == "nearest":
        np.testing.assert_allclose(ours, ref, atol=1e-5)
    else:
        assert diff.max() <= grey + 1e-5
        assert (diff > 1e-5).mean() < 0.01


def test_non_rgb_and_tiny_images_are_handled():
    pre = Preprocessing(32)
    gray = Image.new("L", (10, 40), 128)  # smaller than the crop in one side: upscaled, never fails
    x = eval_preprocess(gray, pre)
    assert x.shape == (3, 32, 32)
    assert stack([x, x]).shape == (2, 3, 32, 32)
